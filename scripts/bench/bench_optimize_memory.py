"""Benchmark: peak memory of `edgepack optimize` relative to the size of the model's weights.

Each case runs `edgepack optimize` in a fresh Python process (in-process `edgepack.cli.main`, so
the numbers are the command's own) and reads the kernel's high-water mark of resident memory
(VmHWM in /proc/self/status): what the machine must really have, file-backed pages of mapped
weights included. `base` is the RSS after importing edgepack, onnx, onnx-ir and ONNX Runtime,
before the model is opened; `peak - base` over the weights' size is the ratio the goal speaks of
(<= 1.5x).

The models are 1x1 Conv + BatchNormalization layers of `--width` channels on a 1x1 image: the
weights dominate, and optimize has real work to do (folding every BatchNorm writes new weights).

    python3 scripts/bench/bench_optimize_memory.py                 # 335 MB embedded, 600 MB external
    python3 scripts/bench/bench_optimize_memory.py --large         # + 2.4 GB external data
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]

BUILD = r"""
import sys, numpy as np, onnx
from onnx import helper, numpy_helper, TensorProto
sys.path.insert(0, {root!r})
path, layers, width, external = {path!r}, {layers}, {width}, {external}
rng = np.random.default_rng(0)
nodes, inits, x = [], [], "x"
def const(name, array):
    inits.append(numpy_helper.from_array(array.astype(np.float32), name))
for i in range(layers):
    const(f"w{{i}}", rng.standard_normal((width, width, 1, 1), dtype=np.float32) / np.sqrt(width))
    for k, v in (("g", rng.uniform(0.5, 1.5, width)), ("b", rng.standard_normal(width) * 0.1),
                 ("m", rng.standard_normal(width) * 0.1), ("v", rng.uniform(0.5, 2.0, width))):
        const(f"{{k}}{{i}}", v)
    nodes.append(helper.make_node("Conv", [x, f"w{{i}}"], [f"c{{i}}"], name=f"conv{{i}}"))
    nodes.append(helper.make_node("BatchNormalization", [f"c{{i}}", f"g{{i}}", f"b{{i}}", f"m{{i}}", f"v{{i}}"],
                                  [f"n{{i}}"], name=f"bn{{i}}"))
    nodes.append(helper.make_node("Relu", [f"n{{i}}"], [f"r{{i}}"], name=f"relu{{i}}"))
    x = f"r{{i}}"
graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", width, 1, 1])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, ["N", width, 1, 1])], inits)
model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
if external:
    onnx.save(model, path, save_as_external_data=True, location=path.split("/")[-1] + ".data",
              size_threshold=1024)
else:
    onnx.save(model, path)
"""

MEASURE = r"""
import sys, json, contextlib, io
sys.path.insert(0, {root!r})
import onnx, onnx_ir, onnxruntime, numpy
import edgepack.cli, edgepack.passes.pipeline, edgepack.inspection
def status(key):
    for line in open("/proc/self/status"):
        if line.startswith(key):
            return int(line.split()[1]) * 1024
base = status("VmRSS")
err = io.StringIO()
with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
    code = edgepack.cli.main(["optimize", {model!r}, "-o", {out!r}])
print(json.dumps({{"code": code, "base": base, "peak": status("VmHWM"), "stderr": err.getvalue()[-500:]}}))
"""


def cpu_flags() -> str:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return "?"
    flags = {f for line in text.splitlines() if line.startswith("flags") for f in line.split(":")[1].split()}
    return " ".join(sorted(flags & {"avx512_vnni", "avx_vnni", "avx512f", "avx2"})) or "none of avx2/avx512"


def weights_nbytes(model: Path) -> int:
    import onnx

    proto = onnx.load(model, load_external_data=False)
    data = model.with_name(model.name + ".data")
    if data.exists():
        return data.stat().st_size
    return sum(len(t.raw_data) for t in proto.graph.initializer)


def run_case(folder: Path, label: str, layers: int, width: int, external: bool) -> dict:
    model, out = folder / f"{label}.onnx", folder / f"{label}.opt.onnx"
    subprocess.run([sys.executable, "-c", BUILD.format(root=str(ROOT), path=str(model), layers=layers,
                                                       width=width, external=external)], check=True)
    weights = weights_nbytes(model)
    proc = subprocess.run([sys.executable, "-c", MEASURE.format(root=str(ROOT), model=str(model), out=str(out))],
                          capture_output=True, text=True, check=True, cwd=folder)  # cwd: older versions
                          # resolved external data against it
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    for path in folder.glob(f"{label}*"):
        path.unlink()
    return {"case": label, "weights": weights, **result}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--large", action="store_true", help="add a 2.4 GB external-data case")
    parser.add_argument("--width", type=int, default=2048)
    args = parser.parse_args()
    layer_mb = args.width * args.width * 4 / 1e6
    cases = [("embedded-335MB", round(335 / layer_mb), False), ("external-600MB", round(600 / layer_mb), True)]
    if args.large:
        cases.append(("external-2.4GB", round(2400 / layer_mb), True))
    mib = 2**20
    print(f"CPU flags: {cpu_flags()}")
    print(f"{'case':<16} {'weights MiB':>12} {'base MiB':>9} {'peak RSS MiB':>13} {'peak-base MiB':>14} "
          f"{'x weights':>10} {'exit':>5}")
    with tempfile.TemporaryDirectory(prefix="edgepack-mem-") as tmp:
        for label, layers, external in cases:
            r = run_case(Path(tmp), label, layers, args.width, external)
            extra = r["peak"] - r["base"]
            print(f"{label:<16} {r['weights'] / mib:>12.0f} {r['base'] / mib:>9.0f} {r['peak'] / mib:>13.0f} "
                  f"{extra / mib:>14.0f} {extra / r['weights']:>9.2f}x {r['code']:>5}")
            if r["code"]:
                print("   ", r["stderr"].strip().splitlines()[-1] if r["stderr"].strip() else "")


if __name__ == "__main__":
    main()
