"""Benchmark: memory of `optimize` on a CNN with ~63 MiB of weights in external data.

The model is built in a child process; this process loads it (weights memory-mapped) and runs each
pass of the pipeline, printing after each: anonymous memory allocated since the load (what the
process really holds), file-backed pages (the mapped weights, page cache the OS can drop) and the
peak RSS. "Near one copy of the weights" = the anonymous column stays near the weights' size.

    python3 scripts/bench/bench_optimize_memory.py
"""
from __future__ import annotations

import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

BUILD = r"""
import sys; sys.path.insert(0, {root!r})
from tests.passes.nets import NetBuilder
from edgepack import io
b = NetBuilder(0); y, cin = "x", 3
for i in range(8):  # 8 conv+BN layers of 512 channels, every other one with half its filters pruned
    y = b.conv_bn(y, cin, 512, 3, pruned=range(0, 512, 2) if i % 2 == 0 else ()); cin = 512
y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
io.save(b.model(["N", 3, 8, 8], b.gemm(y, 512, 10), ["N", 10]), {path!r}, external_data=True)
"""


def status(key: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key):
            return int(line.split()[1]) / 1024
    return float("nan")


def main() -> None:
    folder = Path(tempfile.mkdtemp(prefix="edgepack-mem-"))
    path = folder / "cnn.onnx"
    subprocess.run([sys.executable, "-c", BUILD.format(root=str(ROOT), path=str(path))], check=True)
    from edgepack import io
    from edgepack.passes.pipeline import build_pipeline

    weights = (folder / "cnn.onnx.data").stat().st_size / 2**20
    base = status("RssAnon")
    model = io.load(path)
    print(f"weights: {weights:.1f} MiB in external data ({path})")
    print(f"{'after':<24} {'anon MiB':>9} {'x weights':>10} {'file MiB':>9} {'peak RSS MiB':>13} {'seconds':>8}")

    def row(label: str, seconds: float) -> None:
        anon = status("RssAnon") - base
        print(f"{label:<24} {anon:>9.1f} {anon / weights:>9.2f}x {status('RssFile'):>9.1f} "
              f"{status('VmHWM'):>13.1f} {seconds:>8.2f}")

    row("load", 0.0)
    for p in build_pipeline().passes:
        start = time.perf_counter()
        model = p(model).model
        row(type(p).__name__, time.perf_counter() - start)
    start = time.perf_counter()
    io.save(model, folder / "opt.onnx")
    row("save", time.perf_counter() - start)


if __name__ == "__main__":
    main()
