"""Benchmark: the code-built YOLOX-like detector (tests/quant/yolox_like.py) in INT8, both target
styles, each calibration method, and with the head's or the backbone's convs left float (where the
loss is), side by side with ONNX Runtime's quantize_static
(QDQ, U8S8, per-channel and per-tensor), and the INT8/FP32 latency ratio.

Data: the 100 COCO images in ../shared/data/coco_val2017_100, the first 50 for the weights'
statistics and calibration, the last 50 for evaluation. Boxes decoded (YOLOX grid, strides
8/16/32), score > 0.3, class-aware NMS at IoU 0.45, 100 per image; INT8 boxes matched to FP32 boxes
of the same class at IoU >= 0.5 (edgepack/quant/detection.py): recall and precision.
Target styles: x86-cpu = the artifact as ONNX Runtime runs it (all graph optimizations);
TensorRT (jetson-orin-nano) = the exact QDQ math (ORT with optimizations off).
Latency: ORT CPU, batch 1, 1 thread, INT8 and FP32 sessions in one process, interleaved blocks
(ABAB), the median of the per-block ratios.

    python3 scripts/bench/bench_detector.py [--size 256] [--blocks 8] [--methods default,minmax] [--rebuild]
"""
from __future__ import annotations

import argparse
import logging
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))

from edgepack import runtime  # noqa: E402
from edgepack.cpu import cpu_flags  # noqa: E402
from edgepack.graph import copy_model  # noqa: E402
from edgepack.quant import detection, quantize  # noqa: E402
from edgepack.targets import load_target  # noqa: E402

SHARED = REPO.parent / "shared"
TARGETS = ("x86-cpu", "jetson-orin-nano")


def latency_ratio(int8, fp32, feed: dict, blocks: int, runs: int = 5) -> float:
    """Median over interleaved blocks of (INT8 block time / FP32 block time), 1 thread, batch 1."""
    a, b = runtime.session(int8, threads=1), runtime.session(fp32, threads=1)
    for s in (a, b):
        s.run(None, feed)
    ratios = []
    for _ in range(blocks):
        times = []
        for s in (a, b):
            start = time.perf_counter()
            for _ in range(runs):
                s.run(None, feed)
            times.append(time.perf_counter() - start)
        ratios.append(times[0] / times[1])
    return float(np.median(ratios))


def ort_quantize_static(model, calib: np.ndarray, per_channel: bool):
    """ORT's QDQ quantize_static, U8S8 (uint8 activations, int8 weights), MinMax."""
    import tempfile

    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    from edgepack import io
    from edgepack.quant.validate import upgrade_opset

    class Reader:
        def __init__(self):
            self.items = iter([{"images": calib[i:i + 1]} for i in range(len(calib))])

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        upgraded = copy_model(model)
        upgrade_opset(upgraded)  # per-channel DQ needs opset 13
        io.save(upgraded, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=per_channel,
                        activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                        calibrate_method=CalibrationMethod.MinMax)
        return io.load(dst, check=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size", type=int, default=256)
    parser.add_argument("--blocks", type=int, default=8, help="interleaved timing blocks (0: no latency)")
    parser.add_argument("--methods", default="default,minmax,percentile,entropy,mse")
    parser.add_argument("--no-ort", action="store_true", help="skip ORT quantize_static")
    parser.add_argument("--rebuild", action="store_true",
                        help="fit the weights on the 50 calibration images at --size instead of the stored ones")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    from tests.quant import yolox_like as yl

    folder = SHARED / "data" / "coco_val2017_100"
    if not folder.is_dir():
        print("detector: skipped (../shared/data/coco_val2017_100 not found)")
        return
    print(f"CPU flags: {' '.join(sorted(cpu_flags() & {'avx2', 'avx512f', 'avx512_vnni', 'avx_vnni'}))}")
    calib = yl.coco_images(folder, 50, size=args.size)
    evals = yl.coco_images(folder, 50, size=args.size, start=50)
    base = yl.representative(calib, size=args.size) if args.rebuild else yl.cached(args.size)
    reference = detection.detect(runtime.session(base), evals)
    feed = {"images": evals[:1]}
    print(f"YOLOX-like detector {args.size}x{args.size}, opset 11, batch 1, 80 classes; FP32 boxes on the 50 "
          f"evaluation images: {sum(len(r[0]) for r in reference)}\n")
    print(f"{'target style':<18} {'method':<11} {'variant':<26} {'recall':>7} {'precision':>10} {'INT8/FP32':>10}")

    def row(target, method, variant, model, optimize=None):
        optimize = (not load_target(target).is_tensorrt) if optimize is None else optimize
        got = detection.detect(runtime.session(model, optimize=optimize), evals)
        recall, precision, _, _ = detection.agreement(reference, got)
        ratio = f"{latency_ratio(model, base, feed, args.blocks):>10.2f}" if args.blocks and optimize else f"{'-':>10}"
        print(f"{target:<18} {method:<11} {variant:<26} {recall:>7.3f} {precision:>10.3f} {ratio}", flush=True)

    for target in TARGETS:
        for method in args.methods.split(","):
            model = copy_model(base)
            result = quantize(model, [{"images": calib}], target=target, method=None if method == "default" else method,
                              runtime_check=False)
            label = (result.method + ("*" if method == "default" else ""))[:11]
            row(target, label, "edgepack", model)
        for region, prefix in (("head float", "/head"), ("backbone+PAN float", "/")):
            convs = [n.name for n in base.graph if n.op_type == "Conv"
                     and (n.name.startswith(prefix) if region == "head float" else not n.name.startswith("/head"))]
            model = copy_model(base)
            result = quantize(model, [{"images": calib}], target=target, exclude=convs, runtime_check=False)
            row(target, result.method[:10] + "*", f"edgepack, {region}", model)
    if not args.no_ort:
        for per_channel in (False, True):
            model = ort_quantize_static(base, calib, per_channel)
            variant = f"ORT q_static U8S8 {'per-ch' if per_channel else 'per-t'}"
            row("x86-cpu", "minmax", variant, model)
            row("TensorRT-style**", "minmax", variant, model, optimize=False)
    print("\nmethod*: the target's default method")
    print("TensorRT-style**: ORT's uint8 model run as QDQ math (optimizations off): its arithmetic, not a TensorRT form")


if __name__ == "__main__":
    main()
