"""Benchmark: edgepack's INT8 post-training quantization against ONNX Runtime's `quantize_static`,
side by side in one run, on real trained models with real data, measured as the runtime runs them.

For each model, target style and calibration method, the INT8 model is evaluated twice:
  fused     ONNX Runtime with all graph optimizations: QDQ fused into its integer kernels, what a
            user deploying to this CPU gets (this depends on the CPU: see the flags printed)
  QDQ math  ONNX Runtime with optimizations off: every Q/DQ evaluated exactly; the proxy for
            TensorRT, which runs the same arithmetic (and cannot run here)
Metric: top-1 accuracy where the data has labels (digits, MNIST, CIFAR-10), otherwise top-1
agreement with the FP32 model (ShuffleNetV2 on the 100 unlabelled COCO images, calibrated on the
same 100: there is no other ImageNet-like data here).

Target styles: x86-cpu (uint8 activations, uint8 weights -> ORT's U8U8 kernels, exact on every
x86 CPU), x86-cpu-vnni (uint8 activations, int8 weights -> U8S8 kernels, exact only with VNNI),
TensorRT (int8 symmetric, zero point 0). ORT quantize_static: QDQ, uint8 activations, int8
per-channel weights (its x86 default; per-tensor where per-channel fails), same calibration data.
Then calibration time and peak RSS (calibration only, each in a fresh process) for both tools.

    python3 scripts/bench/bench_quantize.py [--models digits,mnist,resnet20,shufflenet]
        [--methods minmax,percentile,entropy,mse] [--calib 500] [--eval 2000] [--skip-memory]
"""
from __future__ import annotations

import argparse
import gzip
import json
import logging
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgepack import io, runtime  # noqa: E402
from edgepack.cpu import int8_summary  # noqa: E402
from edgepack.resources import data_dir, example_model  # noqa: E402

SHARED = REPO.parent / "shared"
ORT_METHOD = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy", "mse": None}
STYLES = {"x86-cpu": "x86-cpu", "x86-vnni": "x86-cpu-vnni", "TensorRT": "jetson-orin-nano"}
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)


# ------------------------------------------------------------------ data
def coco_images(size: int = 224) -> np.ndarray:
    """The 100 COCO images, ImageNet preprocessing: shorter side 256 (bilinear), centre crop 224."""
    from PIL import Image

    xs = []
    for file in sorted((SHARED / "data/coco_val2017_100").glob("*.jpg")):
        image = Image.open(file).convert("RGB")
        w, h = image.size
        r = 256 / min(w, h)
        image = image.resize((max(1, round(w * r)), max(1, round(h * r))), Image.BILINEAR)
        w, h = image.size
        left, top = (w - size) // 2, (h - size) // 2
        image = image.crop((left, top, left + size, top + size))
        xs.append(((np.asarray(image, np.float32) / 255 - MEAN) / STD).transpose(2, 0, 1))
    return np.stack(xs)


def load_data(name: str, n_calib: int, n_eval: int):
    """(model path, input name, calibration x, evaluation x, evaluation labels or None)."""
    if name == "digits":
        folder = data_dir("calibration") / "digits"
        with np.load(folder / "calib.npz") as c, np.load(folder / "eval.npz") as e:
            return example_model(), "input", c["input"][:n_calib], e["input"][:n_eval], e["labels"][:n_eval]
    if name == "shufflenet":
        x = coco_images()
        return SHARED / "models/shufflenet-v2-12_from_int8_fp32.onnx", "input", x, x, None
    if name == "mnist":
        with gzip.open(SHARED / "data/mnist/t10k-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32)
        with gzip.open(SHARED / "data/mnist/t10k-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
        path, input_name = SHARED / "models/mnist_cntk_fp32.onnx", "Input3"
    elif name == "resnet20":
        with np.load(SHARED / "data/cifar10_test/cifar10_test_jpeg_decoded.npz") as d:
            images, y = d["images"], d["labels"].astype(np.int64)
        x = ((images.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2).copy()
        path, input_name = SHARED / "models/resnet20_cifar10.onnx", "input"
    else:
        raise SystemExit(f"unknown model {name}")
    return path, input_name, x[:n_calib], x[-n_eval:], y[-n_eval:]  # calibration and evaluation disjoint


def predictions(model_path, input_name, x, *, fused: bool = True, batch: int = 100) -> np.ndarray:
    sess = runtime.session(str(model_path), optimize=fused)
    return np.concatenate([sess.run(None, {input_name: x[i:i + batch]})[0].argmax(1)
                           for i in range(0, len(x), batch)])


# ------------------------------------------------------------------ the two tools
def edgepack_quantize(model_path, calib_npz, out, target, method) -> float:
    from edgepack.quant import quantize

    start = time.perf_counter()
    quantize(model_path, calib_npz, target=target, method=method, runtime_check=False, output=out)
    return time.perf_counter() - start


class _Reader:
    """ORT's histogram calibrators need every batch the same size: the largest batch <= 50 dividing n."""

    def __init__(self, input_name, x):
        batch = next(b for b in range(min(50, len(x)), 0, -1) if len(x) % b == 0)
        self.items = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.items, None)


def ort_quantize(model_path, input_name, x, out, method) -> tuple[float, str]:
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    kwargs = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                  calibrate_method=getattr(CalibrationMethod, ORT_METHOD[method]))
    start = time.perf_counter()
    try:
        quantize_static(str(model_path), str(out), _Reader(input_name, x), per_channel=True, **kwargs)
        return time.perf_counter() - start, ""
    except ValueError:  # the MNIST CNN: see ../shared/data/SOURCES.md
        start = time.perf_counter()
        quantize_static(str(model_path), str(out), _Reader(input_name, x), per_channel=False, **kwargs)
        return time.perf_counter() - start, "ORT per-tensor (per-channel raises ValueError)"


# ------------------------------------------------------------------ memory and time (child process)
def child_calibrate(tool: str, model_path: str, calib_npz: str, method: str) -> None:
    """Calibrate only, in this fresh process; prints the seconds and the peak RSS as JSON."""
    start = time.perf_counter()
    if tool == "edgepack":
        from edgepack.calib import calibrate

        calibrate(io.load(model_path), calib_npz, method=method, progress=False)
    else:
        from onnxruntime.quantization import CalibrationMethod, create_calibrator

        with np.load(calib_npz) as d:
            (input_name, data), = d.items()
        with tempfile.TemporaryDirectory() as tmp:
            calibrator = create_calibrator(model_path, [], augmented_model_path=str(Path(tmp) / "aug.onnx"),
                                           calibrate_method=getattr(CalibrationMethod, ORT_METHOD[method]))
            calibrator.collect_data(_Reader(input_name, data))
            calibrator.compute_data()
    seconds = time.perf_counter() - start
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the (large) parent
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": peak_kb / 1024, "seconds": seconds}))


def calibration_cost(tool, model_path, input_name, x, n, method, tmp: Path) -> dict:
    calib = tmp / f"mem_{n}.npz"
    np.savez(calib, **{input_name: np.resize(x, (n, *x.shape[1:]))})  # repeats x when n > len(x)
    out = subprocess.run([sys.executable, __file__, "--child", tool, str(model_path), str(calib), method],
                         capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"calibration child failed ({tool}, {model_path}, {n} samples):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


# ------------------------------------------------------------------ main
def score(pred, reference, labels) -> float:
    return float((pred == (labels if labels is not None else reference)).mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--models", default="digits,mnist,resnet20,shufflenet")
    parser.add_argument("--methods", default="minmax,percentile,entropy,mse")
    parser.add_argument("--calib", type=int, default=500)
    parser.add_argument("--eval", type=int, default=2000)
    parser.add_argument("--memory-samples", default="64,512")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_calibrate(*args.child)
        return
    logging.disable(logging.WARNING)
    models = [m for m in args.models.split(",") if m == "digits" or SHARED.is_dir()]
    methods = args.methods.split(",")
    rows, mem_rows = [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in models:
            path, input_name, xc, xe, ye = load_data(name, args.calib, args.eval)
            calib = tmp / f"{name}_calib.npz"
            np.savez(calib, **{input_name: xc})
            ref = predictions(path, input_name, xe)
            fp32 = score(ref, ref, ye)
            for method in methods:
                for style, target in STYLES.items():
                    out = tmp / f"{name}_{method}_{target}.onnx"
                    seconds = edgepack_quantize(path, calib, out, target, method)
                    rows.append({"model": name, "method": method, "tool": f"edgepack {style}", "fp32": fp32,
                                 "fused": score(predictions(out, input_name, xe), ref, ye),
                                 "math": score(predictions(out, input_name, xe, fused=False), ref, ye),
                                 "seconds": seconds, "note": ""})
                if ORT_METHOD[method]:
                    out = tmp / f"{name}_{method}_ort.onnx"
                    seconds, note = ort_quantize(path, input_name, xc, out, method)
                    rows.append({"model": name, "method": method, "tool": "ORT quantize_static", "fp32": fp32,
                                 "fused": score(predictions(out, input_name, xe), ref, ye),
                                 "math": score(predictions(out, input_name, xe, fused=False), ref, ye),
                                 "seconds": seconds, "note": note})
                print(f"  {name} {method}: done", file=sys.stderr)
        print_tables(rows, [], args)
        for name in models if not args.skip_memory else []:
            if name not in ("resnet20", "shufflenet"):
                continue
            path, input_name, xc, _, _ = load_data(name, args.calib, args.eval)
            for method in ("minmax", "entropy"):
                for n in map(int, args.memory_samples.split(",")):
                    for tool in ("edgepack", "ort"):
                        cost = calibration_cost(tool, path, input_name, xc, n, method, tmp)
                        mem_rows.append({"model": name, "method": method, "samples": n, "tool": tool, **cost})
        if mem_rows:
            print_memory(mem_rows)


def print_tables(rows, mem_rows, args) -> None:
    print(f"\nCPU int8 flags: {int8_summary()}  (x86 without avx512_vnni/avx_vnni: u8 x s8 kernels saturate)")
    print(f"INT8 top-1 (accuracy with labels; agreement with FP32 for shufflenet), {args.calib} calibration / "
          f"{args.eval} disjoint evaluation samples (digits 256 / 500; shufflenet: the 100 COCO images for both)")
    head = (f"{'model':<10} {'method':<10} {'tool':<22} {'FP32':>7} | {'fused':>7} {'drop':>6} | "
            f"{'QDQ math':>8} {'drop':>6} | {'quantize s':>10}  note")
    print(head)
    for r in rows:
        print(f"{r['model']:<10} {r['method']:<10} {r['tool']:<22} {r['fp32']:>7.2%} | {r['fused']:>7.2%} "
              f"{100 * (r['fp32'] - r['fused']):>+6.2f} | {r['math']:>8.2%} {100 * (r['fp32'] - r['math']):>+6.2f} | "
              f"{r['seconds']:>10.2f}  {r['note']}")
    print("(drop in points, positive = worse than FP32; the TensorRT row's 'QDQ math' is what TensorRT computes)",
          flush=True)


def print_memory(mem_rows) -> None:
    if mem_rows:
        print("\nCalibration only (fresh process each): peak RSS and seconds, edgepack vs ORT's calibrator")
        print(f"{'model':<10} {'method':<8} {'samples':>7} | {'ours MB':>8} {'ORT MB':>8} {'ratio':>6} | "
              f"{'ours s':>7} {'ORT s':>7} {'ratio':>6}")
        by_key = {}
        for r in mem_rows:
            by_key.setdefault((r["model"], r["method"], r["samples"]), {})[r["tool"]] = r
        for (model, method, n), tools in by_key.items():
            ours, ort = tools["edgepack"], tools["ort"]
            print(f"{model:<10} {method:<8} {n:>7} | {ours['peak_mb']:>8.0f} {ort['peak_mb']:>8.0f} "
                  f"{ours['peak_mb'] / ort['peak_mb']:>6.2f} | {ours['seconds']:>7.2f} {ort['seconds']:>7.2f} "
                  f"{ours['seconds'] / ort['seconds']:>6.2f}")


if __name__ == "__main__":
    main()
