"""Benchmark: edgepack quantize vs ONNX Runtime's quantize_static, side by side in one run.

Real models and data from ../shared (CIFAR-10 ResNet-20, MNIST CNN) and the bundled digits CNN.
Calibration and evaluation sets are disjoint splits. Prints one table per question:
accuracy (top-1, per method), time (calibrate + quantize), calibration peak RSS at 64 vs 1024
samples (each run in its own process), and INT8 vs FP32 latency in ONNX Runtime on this CPU.

    python3 scripts/bench/bench_quantize.py [--quick]
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[2]
SHARED = ROOT.parent / "shared"
sys.path.insert(0, str(ROOT))

from edgepack import io, runtime  # noqa: E402
from edgepack.quant import quantize  # noqa: E402
from edgepack.resources import data_dir, example_model  # noqa: E402

ORT_METHODS = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy", "mse": None}


def cifar(start: int, count: int):
    with np.load(SHARED / "data" / "cifar10_test" / "cifar10_test_jpeg_decoded.npz") as d:
        x = d["images"][start:start + count].astype(np.float32) / 255
        y = d["labels"][start:start + count].astype(np.int64)
    x = (x - np.array([0.485, 0.456, 0.406], np.float32)) / np.array([0.229, 0.224, 0.225], np.float32)
    return x.transpose(0, 3, 1, 2).astype(np.float32), y


def mnist(start: int, count: int):
    with gzip.open(SHARED / "data" / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28)[start:start + count]
    with gzip.open(SHARED / "data" / "mnist" / "t10k-labels-idx1-ubyte.gz") as f:
        y = np.frombuffer(f.read(), np.uint8, offset=8)[start:start + count]
    return x.astype(np.float32), y.astype(np.int64)


def digits(split: str):
    with np.load(data_dir("calibration") / "digits" / f"{split}.npz") as d:
        return d["input"], d["labels"] if "labels" in d else None


def cases(quick: bool):
    n_cal, n_eval = (256, 1000) if quick else (1000, 5000)
    out = []
    if (SHARED / "models").is_dir():
        out.append(("resnet20-cifar10", SHARED / "models" / "resnet20_cifar10.onnx", "input",
                    cifar(0, n_cal)[0], cifar(5000, n_eval)))
        out.append(("mnist-cnn", SHARED / "models" / "mnist_cntk_fp32.onnx", "Input3",
                    mnist(0, n_cal)[0], mnist(5000, n_eval)))
    out.append(("digits-cnn", example_model(), "input", digits("calib")[0], digits("eval")))
    return out


def batches(name, x, size=8):  # equal batches: ORT's entropy calibrator stacks them
    return [{name: x[i:i + size]} for i in range(0, len(x), size)]


def top1(path, name, x, y) -> float:
    return float((runtime.session(path).run(None, {name: x})[0].argmax(1) == y).mean())


def ort_quantize(src, dst, name, calib, method) -> None:
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)

    class Reader(CalibrationDataReader):
        def __init__(self):
            self.it = iter(batches(name, calib))

        def get_next(self):
            return next(self.it, None)

    kwargs = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                  calibrate_method=getattr(CalibrationMethod, ORT_METHODS[method]))
    try:
        quantize_static(str(src), str(dst), Reader(), per_channel=True, **kwargs)
        return "per-channel"
    except ValueError:  # e.g. the MNIST CNN: ORT's per-channel path raises
        quantize_static(str(src), str(dst), Reader(), per_channel=False, **kwargs)
        return "per-tensor (per-channel raised)"


def ours(src, dst, name, calib, method) -> None:
    model = io.load(src)
    quantize(model, batches(name, calib), target="x86-cpu", method=method)
    io.save(model, dst)


def latency(path, name, x, threads: int, rounds: int = 200) -> float:
    s = runtime.session(path, threads=threads)
    feeds = {name: x}
    for _ in range(20):
        s.run(None, feeds)
    times = []
    for _ in range(rounds):
        start = time.perf_counter()
        s.run(None, feeds)
        times.append(time.perf_counter() - start)
    return float(np.median(times)) * 1e3


MEMORY_SNIPPET = r"""
import resource, sys, numpy as np
sys.path.insert(0, {root!r})
tool, samples = sys.argv[1], int(sys.argv[2])
sys.path.insert(0, {bench!r})
import bench_quantize as b
x = b.cifar(0, samples)[0]
src = b.SHARED / "models" / "resnet20_cifar10.onnx"
(b.ours if tool == "edgepack" else b.ort_quantize)(src, {tmp!r} + f"/mem_{{tool}}_{{samples}}.onnx", "input", x, "entropy")
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
"""


def peak_rss_mb(tool: str, samples: int, tmp: str) -> float:
    code = MEMORY_SNIPPET.format(root=str(ROOT), bench=str(Path(__file__).parent), tmp=tmp)
    out = subprocess.run([sys.executable, "-c", code, tool, str(samples)], capture_output=True, text=True,
                         env={**os.environ, "PYTHONWARNINGS": "ignore"})
    if out.returncode:
        raise RuntimeError(out.stderr[-2000:])
    return float(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="smaller calibration and evaluation sets")
    args = parser.parse_args()
    tmp = tempfile.mkdtemp(prefix="edgepack-bench-")
    acc_rows, time_rows, lat_rows = [], [], []
    for label, src, name, calib, (xe, ye) in cases(args.quick):
        fp32 = top1(src, name, xe, ye)
        for method in ORT_METHODS:
            dst = f"{tmp}/{label}-{method}-edgepack.onnx"
            start = time.perf_counter()
            ours(src, dst, name, calib, method)
            t_ours = time.perf_counter() - start
            acc_ours = top1(dst, name, xe, ye)
            acc_ort = t_ort = note = None
            if ORT_METHODS[method]:
                ort_dst = f"{tmp}/{label}-{method}-ort.onnx"
                start = time.perf_counter()
                note = ort_quantize(src, ort_dst, name, calib, method)
                t_ort = time.perf_counter() - start
                acc_ort = top1(ort_dst, name, xe, ye)
            acc_rows.append((label, method, len(calib), len(xe), fp32, acc_ours, acc_ort, note))
            time_rows.append((label, method, t_ours, t_ort))
        best = f"{tmp}/{label}-entropy-edgepack.onnx"
        for threads in (1, 2):
            for batch in (1, 8):
                x = xe[:batch]
                lat_rows.append((label, threads, batch, latency(src, name, x, threads), latency(best, name, x, threads),
                                 latency(f"{tmp}/{label}-entropy-ort.onnx", name, x, threads)))

    print("\nAccuracy (top-1 %, x86-cpu target: uint8 activations, int8 per-channel weights)")
    print(f"{'model':<18} {'method':<11} {'calib':>6} {'eval':>6} {'fp32':>7} {'edgepack':>9} {'ORT':>7} "
          f"{'drop ours':>10} {'drop ORT':>9}  ORT note")
    for label, method, nc, ne, fp, a, o, note in acc_rows:
        ort_txt = "n/a" if o is None else f"{100 * o:.2f}"
        drop_ort = "n/a" if o is None else f"{100 * (fp - o):+.2f}"
        print(f"{label:<18} {method:<11} {nc:>6} {ne:>6} {100 * fp:>7.2f} {100 * a:>9.2f} {ort_txt:>7} "
              f"{100 * (fp - a):>+10.2f} {drop_ort:>9}  {note or 'no MSE method in ORT'}")
    print("\nTime: calibrate + quantize, seconds")
    print(f"{'model':<18} {'method':<11} {'edgepack':>9} {'ORT':>8} {'ratio':>7}")
    for label, method, t1, t2 in time_rows:
        print(f"{label:<18} {method:<11} {t1:>9.2f} {'n/a' if t2 is None else f'{t2:8.2f}':>8} "
              f"{'' if t2 is None else f'{t1 / t2:.2f}x':>7}")
    print("\nLatency in ONNX Runtime, p50 ms (entropy-calibrated INT8 models)")
    print(f"{'model':<18} {'threads':>7} {'batch':>5} {'fp32':>8} {'edgepack':>9} {'ORT':>8} {'fp32/ours':>10} {'fp32/ORT':>9}")
    for label, th, b, f, q, o in lat_rows:
        print(f"{label:<18} {th:>7} {b:>5} {f:>8.3f} {q:>9.3f} {o:>8.3f} {f / q:>9.2f}x {f / o:>8.2f}x")
    if (SHARED / "models").is_dir():
        print("\nCalibration peak RSS, MB (ResNet-20, entropy), each run in a fresh process")
        print(f"{'tool':<10} {'64 samples':>11} {'1024 samples':>13} {'ratio':>7}")
        for tool in ("edgepack", "ort"):
            small, large = peak_rss_mb(tool, 64, tmp), peak_rss_mb(tool, 1024, tmp)
            print(f"{tool:<10} {small:>11.1f} {large:>13.1f} {large / small:>6.2f}x")
    json.dump({"accuracy": acc_rows, "time": time_rows, "latency": lat_rows}, open(f"{tmp}/results.json", "w"))


if __name__ == "__main__":
    main()
