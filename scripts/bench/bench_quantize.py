"""Benchmark: edgepack's INT8 post-training quantization against ONNX Runtime's `quantize_static`,
side by side in one run, on real trained models with real data (calibration and evaluation disjoint).

Per model and calibration method: top-1 accuracy of FP32, of edgepack's x86-cpu model (uint8
activations), of edgepack's TensorRT-form model (int8 symmetric, run here in ORT CPU) and of ORT's
quantize_static (QDQ, uint8 activations, int8 per-channel weights; per-tensor where per-channel
fails); wall time of calibration + quantization for both tools; then the calibration peak RSS at
64 and 1024 samples (each in a fresh subprocess) and the latency of INT8 vs FP32 in ORT.

    python3 scripts/bench/bench_quantize.py [--calib 1000] [--eval 5000] [--models digits,mnist,resnet20]
                                            [--methods minmax,percentile,entropy,mse] [--repeats 3]
                                            [--skip-memory] [--skip-latency]
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

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgepack import io, runtime  # noqa: E402
from edgepack.resources import data_dir, example_model  # noqa: E402

SHARED = REPO.parent / "shared"
ORT_METHOD = {"minmax": "MinMax", "percentile": "Percentile", "entropy": "Entropy", "mse": None}


# ------------------------------------------------------------------ data
def load_data(name: str, n_calib: int, n_eval: int) -> tuple[Path, str, np.ndarray, np.ndarray, np.ndarray]:
    """(model path, input name, calibration x, evaluation x, evaluation labels)."""
    if name == "digits":
        folder = data_dir("calibration") / "digits"
        with np.load(folder / "calib.npz") as c, np.load(folder / "eval.npz") as e:
            return example_model(), "input", c["input"][:n_calib], e["input"][:n_eval], e["labels"][:n_eval]
    if name == "mnist":
        with gzip.open(SHARED / "data/mnist/t10k-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32)
        with gzip.open(SHARED / "data/mnist/t10k-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
        path, input_name = SHARED / "models/mnist_cntk_fp32.onnx", "Input3"
    elif name == "resnet20":
        with np.load(SHARED / "data/cifar10_test/cifar10_test_jpeg_decoded.npz") as d:
            images, y = d["images"], d["labels"].astype(np.int64)
        mean = np.array([0.485, 0.456, 0.406], np.float32)
        std = np.array([0.229, 0.224, 0.225], np.float32)
        x = ((images.astype(np.float32) / 255 - mean) / std).transpose(0, 3, 1, 2).copy()
        path, input_name = SHARED / "models/resnet20_cifar10.onnx", "input"
    else:
        raise SystemExit(f"unknown model {name}")
    # calibration: the first part of the test set; evaluation: a disjoint part at the end
    return path, input_name, x[:n_calib], x[-n_eval:], y[-n_eval:]


def accuracy(model_path, input_name, x, y, batch=250) -> float:
    sess = runtime.session(str(model_path))
    correct = sum(int((sess.run(None, {input_name: x[i:i + batch]})[0].argmax(1) == y[i:i + batch]).sum())
                  for i in range(0, len(x), batch))
    return correct / len(x)


# ------------------------------------------------------------------ the two tools
def edgepack_quantize(model_path, calib_npz, out, target, method) -> float:
    from edgepack.quant import quantize

    start = time.perf_counter()
    model = io.load(model_path)
    quantize(model, calib_npz, target=target, method=method)
    io.save(model, out)
    return time.perf_counter() - start


class _Reader:
    """ORT's histogram calibrators need every batch the same size: the largest batch <= 50 dividing n."""

    def __init__(self, input_name, x):
        batch = next(b for b in range(min(50, len(x)), 0, -1) if len(x) % b == 0)
        self.items = iter([{input_name: x[i:i + batch]} for i in range(0, len(x), batch)])

    def get_next(self):
        return next(self.items, None)


def ort_quantize(model_path, input_name, x, out, method) -> tuple[float, str]:
    """quantize_static, QDQ, uint8 activations / int8 weights as ORT recommends for x86."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    start = time.perf_counter()
    note = "per-channel"
    kwargs = dict(quant_format=QuantFormat.QDQ, activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                  calibrate_method=getattr(CalibrationMethod, ORT_METHOD[method]))
    try:
        quantize_static(str(model_path), str(out), _Reader(input_name, x), per_channel=True, **kwargs)
    except ValueError:  # the MNIST CNN: see ../shared/data/SOURCES.md
        start = time.perf_counter()
        quantize_static(str(model_path), str(out), _Reader(input_name, x), per_channel=False, **kwargs)
        note = "per-tensor (per-channel raises ValueError)"
    return time.perf_counter() - start, note


# ------------------------------------------------------------------ memory (child process)
def child_calibrate(tool: str, model_path: str, calib_npz: str, method: str) -> None:
    """Calibrate only, in this fresh process; prints the peak RSS as JSON."""
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
    # VmHWM, not ru_maxrss: Linux carries ru_maxrss over fork+exec from the (large) parent
    peak_kb = next(int(line.split()[1]) for line in Path("/proc/self/status").read_text().splitlines()
                   if line.startswith("VmHWM:"))
    print(json.dumps({"peak_mb": peak_kb / 1024}))


def peak_rss(tool, model_path, input_name, x, n, method, tmp: Path) -> float:
    calib = tmp / f"mem_{n}.npz"
    np.savez(calib, **{input_name: x[:n]})
    out = subprocess.run([sys.executable, __file__, "--child", tool, str(model_path), str(calib), method],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])["peak_mb"]


# ------------------------------------------------------------------ latency
def latency_ms(paths, input_name, x, threads, rounds=15, per_round=20) -> list[float]:
    """Median per-inference latency of each model, rounds interleaved so drift hits all alike."""
    sessions = [runtime.session(str(p), threads=threads) for p in paths]
    feeds = {input_name: x}
    for s in sessions:
        for _ in range(5):
            s.run(None, feeds)
    times = [[] for _ in sessions]
    for _ in range(rounds):
        for s, t in zip(sessions, times):
            start = time.perf_counter()
            for _ in range(per_round):
                s.run(None, feeds)
            t.append((time.perf_counter() - start) / per_round * 1000)
    return [float(np.median(t)) for t in times]


# ------------------------------------------------------------------ main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--calib", type=int, default=1000)
    parser.add_argument("--eval", type=int, default=5000)
    parser.add_argument("--models", default="digits,mnist,resnet20")
    parser.add_argument("--methods", default="minmax,percentile,entropy,mse")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per tool (median reported)")
    parser.add_argument("--skip-memory", action="store_true")
    parser.add_argument("--skip-latency", action="store_true")
    parser.add_argument("--child", nargs=4, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_calibrate(*args.child)
        return
    import logging

    logging.disable(logging.WARNING)
    models = [m for m in args.models.split(",") if m == "digits" or SHARED.is_dir()]
    methods = args.methods.split(",")
    acc_rows, lat_rows, mem_rows = [], [], []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        for name in models:
            path, input_name, xc, xe, ye = load_data(name, args.calib, args.eval)
            calib = tmp / f"{name}_calib.npz"
            np.savez(calib, **{input_name: xc})
            fp32 = accuracy(path, input_name, xe, ye)
            for method in methods:
                ours = tmp / f"{name}_{method}_x86.onnx"
                trt = tmp / f"{name}_{method}_trt.onnx"
                # wall times: the median of `repeats` runs, the two tools alternating (the CPU is shared)
                t_ours, t_ort = [], []
                for _ in range(args.repeats):
                    t_ours.append(edgepack_quantize(path, calib, ours, "x86-cpu", method))
                    if ORT_METHOD[method]:
                        theirs = tmp / f"{name}_{method}_ort.onnx"
                        seconds, note = ort_quantize(path, input_name, xc, theirs, method)
                        t_ort.append(seconds)
                edgepack_quantize(path, calib, trt, "jetson-orin-nano", method)
                row = {"model": name, "method": method, "fp32": fp32, "ours": accuracy(ours, input_name, xe, ye),
                       "trt": accuracy(trt, input_name, xe, ye), "t_ours": float(np.median(t_ours))}
                if ORT_METHOD[method]:
                    row.update(t_ort=float(np.median(t_ort)), note=note, ort=accuracy(theirs, input_name, xe, ye))
                else:
                    row.update(t_ort=None, ort=None, note="ORT has no MSE calibration")
                acc_rows.append(row)
                print(f"  {name} {method}: done", file=sys.stderr)
            if not args.skip_latency:
                ours = tmp / f"{name}_entropy_x86.onnx" if "entropy" in methods else tmp / f"{name}_{methods[0]}_x86.onnx"
                theirs = ours.with_name(ours.name.replace("_x86", "_ort"))
                paths = [path, ours] + ([theirs] if theirs.exists() else [])
                for batch in (1, 32):
                    for threads in (1, 2):
                        ms = latency_ms(paths, input_name, xe[:batch], threads)
                        lat_rows.append({"model": name, "batch": batch, "threads": threads, "ms": ms})
            if not args.skip_memory and name != "digits":
                x_mem = load_data(name, 1024, 1)[2]
                for tool in ("edgepack", "ort"):
                    small = peak_rss(tool, path, input_name, x_mem, 64, "entropy", tmp)
                    large = peak_rss(tool, path, input_name, x_mem, 1024, "entropy", tmp)
                    mem_rows.append({"model": name, "tool": tool, "small": small, "large": large})
    print_tables(acc_rows, lat_rows, mem_rows, args)


def _pts(a, b):
    return "-" if a is None else f"{100 * (a - b):+.2f}"


def print_tables(acc_rows, lat_rows, mem_rows, args) -> None:
    print(f"\nAccuracy (top-1 on up to {args.eval} held-out samples, 500 for digits; up to {args.calib} calibration "
          "samples, disjoint; digits: its 256-sample calibration set) and "
          "calibrate+quantize wall time")
    print(f"{'model':<9} {'method':<10} {'FP32':>7} | {'edgepack x86':>12} {'drop':>6} | {'edgepack TRT':>12} "
          f"{'drop':>6} | {'ORT qs':>7} {'drop':>6} | {'t ours s':>8} {'t ORT s':>8} {'ratio':>6}  note")
    for r in acc_rows:
        ort_acc = "-" if r["ort"] is None else f"{r['ort']:.2%}"
        t_ort = "-" if r["t_ort"] is None else f"{r['t_ort']:.2f}"
        ratio = "-" if r["t_ort"] is None else f"{r['t_ours'] / r['t_ort']:.2f}"
        print(f"{r['model']:<9} {r['method']:<10} {r['fp32']:>7.2%} | {r['ours']:>12.2%} {_pts(r['ours'], r['fp32']):>6} | "
              f"{r['trt']:>12.2%} {_pts(r['trt'], r['fp32']):>6} | {ort_acc:>7} {_pts(r['ort'], r['fp32']):>6} | "
              f"{r['t_ours']:>8.2f} {t_ort:>8} {ratio:>6}  {r['note']}")
    if lat_rows:
        print("\nLatency in ONNX Runtime CPU (median ms per run; x86-cpu INT8 from entropy ranges)")
        print(f"{'model':<9} {'batch':>5} {'thr':>3} | {'FP32':>8} {'edgepack':>9} {'ORT qs':>8} | "
              f"{'FP32/ours':>9} {'FP32/ORT':>9}")
        for r in lat_rows:
            ms = r["ms"]
            ort_ms = f"{ms[2]:.3f}" if len(ms) > 2 else "-"
            ort_ratio = f"{ms[0] / ms[2]:.2f}x" if len(ms) > 2 else "-"
            why = ""
            if ms[0] < ms[1]:
                why = (f"  slower: FP32 takes {1000 * ms[0] / r['batch']:.0f} us/sample; fixed per-op costs "
                       "(input Q, requantize, dispatch) outweigh the arithmetic INT8 saves")
            print(f"{r['model']:<9} {r['batch']:>5} {r['threads']:>3} | {ms[0]:>8.3f} {ms[1]:>9.3f} {ort_ms:>8} | "
                  f"{ms[0] / ms[1]:>8.2f}x {ort_ratio:>9}{why}")
        print("(ratio > 1: INT8 faster than FP32)")
    if mem_rows:
        print("\nCalibration peak RSS (MB, entropy, fresh process each)")
        print(f"{'model':<9} {'tool':<9} {'64 samples':>10} {'1024':>8} {'1024/64':>8}")
        for r in mem_rows:
            print(f"{r['model']:<9} {r['tool']:<9} {r['small']:>10.0f} {r['large']:>8.0f} {r['large'] / r['small']:>8.2f}")


if __name__ == "__main__":
    main()
