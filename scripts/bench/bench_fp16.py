"""Benchmark: `compress fp16` (the float16 model TensorRT 11 builds for --precision fp16) on the
real models of ../shared with their real data: output error against FP32, top-1 agreement and
accuracy, and which ops stayed float32 and why.

Per model, three conversions side by side: without data (only the op rules), with the data rule
at 65504 (values that overflow float16 on the calibration data keep their nodes in float32; the
default) and at 512 (Model Optimizer AutoCast's default data_max). Calibration and evaluation
samples are disjoint. Numbers are ONNX Runtime on this CPU: it stores float16 tensors between
kernels but runs many float16 ops through float32 kernels, so the error here is what float16
storage of weights and activations costs, a lower bound for TensorRT's float16 kernels.

    python3 scripts/bench/bench_fp16.py [--calib 500] [--eval 2000] [--models mnist,resnet20,shufflenet]
"""
from __future__ import annotations

import argparse
import collections
import gzip
import re
import subprocess
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgepack import cost, io  # noqa: E402
from edgepack.graph import copy_model  # noqa: E402
from edgepack.passes.fp16 import FP16_MAX, ConvertToFloat16Pass, observed_absmax  # noqa: E402

SHARED = REPO.parent / "shared"
MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def load(name: str, n_calib: int, n_eval: int):
    """(model path, input name, calibration x, evaluation x, evaluation labels or None)."""
    if name == "mnist":
        with gzip.open(SHARED / "data/mnist/t10k-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32)
        with gzip.open(SHARED / "data/mnist/t10k-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
        return SHARED / "models/mnist_cntk_fp32.onnx", "Input3", x[:n_calib], x[-n_eval:], y[-n_eval:]
    if name == "resnet20":
        with np.load(SHARED / "data/cifar10_test/cifar10_test_jpeg_decoded.npz") as d:
            images, y = d["images"], d["labels"].astype(np.int64)
        x = ((images.astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2).copy()
        return SHARED / "models/resnet20_cifar10.onnx", "input", x[:n_calib], x[-n_eval:], y[-n_eval:]
    if name == "shufflenet":
        from PIL import Image

        arrays = []
        for path in sorted((SHARED / "data/coco_val2017_100").glob("*.jpg")):
            image = Image.open(path).convert("RGB")
            scale = 256 / min(image.size)
            image = image.resize((round(image.width * scale), round(image.height * scale)), Image.BILINEAR)
            left, top = (image.width - 224) // 2, (image.height - 224) // 2
            crop = np.asarray(image.crop((left, top, left + 224, top + 224)), np.float32) / 255
            arrays.append(((crop - MEAN) / STD).transpose(2, 0, 1))
        x = np.stack(arrays)
        half = len(x) // 2  # 100 images: 50 to calibrate, 50 to evaluate, no labels
        return SHARED / "models/shufflenet-v2-12_from_int8_fp32.onnx", "input", x[:half], x[half:], None
    raise SystemExit(f"unknown model {name}")


def batches(name: str, x: np.ndarray, batch: int = 50) -> list[dict[str, np.ndarray]]:
    return [{name: x[i:i + batch]} for i in range(0, len(x), batch)]


def _general(reason: str) -> str:
    """A reason without its tensor name and value, to count alike reasons together."""
    return re.sub(r"\|x\| = [0-9.e+-]+ ", "|x| ", re.sub(r" '[^']*'", "", reason))


def cpu_flags() -> str:
    out = subprocess.run("grep -o -w -E 'avx512_vnni|avx_vnni|avx512f|avx2' /proc/cpuinfo | sort -u",
                         shell=True, capture_output=True, text=True).stdout.split()
    return ", ".join(out) or "none of avx2/avx512f/avx512_vnni/avx_vnni"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calib", type=int, default=500)
    parser.add_argument("--eval", type=int, default=2000)
    parser.add_argument("--models", default="mnist,resnet20,shufflenet")
    args = parser.parse_args()
    if not SHARED.is_dir():
        raise SystemExit(f"{SHARED} is missing: the real models and data live there")
    rows, kept_by_model = [], {}
    for name in args.models.split(","):
        path, input_name, xc, xe, ye = load(name, args.calib, args.eval)
        model = io.load(path)
        evaluation = batches(input_name, xe)
        reference = cost.run(model, evaluation)
        absmax = observed_absmax(model, batches(input_name, xc))
        for label, data_max in (("op rules only", None), ("data <= 65504", FP16_MAX), ("data <= 512", 512.0)):
            half = copy_model(model)
            p = ConvertToFloat16Pass(keep_io_float=True, absmax=absmax if data_max else None,
                                     data_max=data_max or FP16_MAX)
            p(half)
            error = cost.output_error(reference, cost.run(half, evaluation),
                                      [ye[i:i + 50] for i in range(0, len(xe), 50)] if ye is not None else None)
            before, after = cost.model_stats(model)["size_bytes"], cost.model_stats(half)["size_bytes"]
            rows.append((name, label, len(p.converted), len(p.kept), error, after / before))
            kept_by_model[(name, label)] = p.kept
    print(f"compress fp16 vs FP32, ONNX Runtime CPU ({cpu_flags()}); eval samples: mnist/resnet20 "
          f"{args.eval}, shufflenet 50 COCO images; calibration {args.calib} (shufflenet 50), disjoint\n")
    head = (f"{'model':<11} {'rule':<14} {'fp16':>5} {'fp32':>5} {'max|err|':>9} {'mean|err|':>10} "
            f"{'SQNR dB':>8} {'top-1 agree':>11} {'acc fp32->fp16':>15} {'size':>6}")
    print(head)
    print("-" * len(head))
    for name, label, n16, n32, e, size in rows:
        acc = f"{e['accuracy']['before']:.2%}->{e['accuracy']['after']:.2%}" if "accuracy" in e else "-"
        sqnr = f"{e['sqnr_db']:.1f}" if e["sqnr_db"] is not None else "inf"
        print(f"{name:<11} {label:<14} {n16:>5} {n32:>5} {e['max_abs_error']:>9.2e} {e['mean_abs_error']:>10.2e} "
              f"{sqnr:>8} {e.get('top1_agreement', float('nan')):>11.2%} {acc:>15} {size:>6.2f}")
    print("\nkept in float32, and why (count x op: reason):")
    for (name, label), kept in kept_by_model.items():
        grouped = collections.Counter((k["op_type"], _general(k["reason"])) for k in kept)
        print(f"  {name} / {label}: " + ("nothing" if not kept else ""))
        for (op, reason), count in sorted(grouped.items()):
            print(f"    {count} x {op}: {reason}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
