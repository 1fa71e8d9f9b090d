"""Benchmark: INT8 on a small Llama-style decoder and a small YOLOX-style detector, every
calibration method, both target styles, side by side with ONNX Runtime's `quantize_static`.

Decoder (tests/quant/decoder.py): trained here in NumPy on the Python standard library's source
(bytes), evaluated on held-out stdlib files: perplexity and next-token top-1 agreement with float.
Detector (tests/quant/detector.py): opset 11, fixed batch 1, weights normalized on COCO images;
boxes decoded, class-aware NMS (score > 0.3, IoU 0.45), INT8 boxes matched to FP32 boxes by class
and IoU >= 0.5 on the 100 COCO images in ../shared/data: recall and precision.

Target styles: x86-cpu = the artifact as ONNX Runtime runs it (all graph optimizations, its
integer kernels); TensorRT (jetson-orin-nano) = the exact QDQ math (ORT, optimizations off).

    python3 scripts/bench/bench_quantize_models.py [--only decoder|detector] [--steps 500]
                                                   [--images 100] [--calib 32] [--size 320] [--no-ort]
"""
from __future__ import annotations

import argparse
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
from edgepack.graph import copy_model  # noqa: E402
from edgepack.quant import quantize  # noqa: E402
from edgepack.targets import load_target  # noqa: E402

SHARED = REPO.parent / "shared"
METHODS = ("minmax", "percentile", "entropy", "mse")
TARGETS = ("x86-cpu", "jetson-orin-nano")
ORT_METHODS = ("MinMax", "Percentile", "Entropy")


def cpu_flags() -> str:
    try:
        out = subprocess.run(["grep", "-o", "-w", "-E", "avx512_vnni|avx_vnni|avx512f|avx2", "/proc/cpuinfo"],
                             capture_output=True, text=True).stdout.split()
        return " ".join(sorted(set(out))) or "none of avx2/avx512f/avx512_vnni/avx_vnni"
    except OSError:
        return "unknown"


def as_runtime(model, target: str):
    return runtime.session(model, optimize=not load_target(target).is_tensorrt)


def ort_quantize_static(model, reader_items, method: str, symmetric: bool):
    """ORT's QDQ quantize_static (uint8 or symmetric int8 activations, int8 per-channel weights)."""
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    class Reader:
        def __init__(self):
            self.items = iter(reader_items)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        io.save(model, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"ActivationSymmetric": symmetric})
        return io.load(dst, check=False)


# ------------------------------------------------------------------ decoder
def bench_decoder(args) -> None:
    from tests.quant import decoder as dec

    cfg = dec.Config()
    cache = Path(tempfile.gettempdir()) / f"edgepack_bench_decoder_{args.steps}.npz"
    start = time.time()
    if cache.is_file():
        params = dict(np.load(cache))
    else:
        params = dec.train(cfg, steps=args.steps)
        np.savez(cache, **params)
    base = dec.to_onnx(params, cfg)
    calib = [{"input_ids": dec.windows(dec.corpus(), 128, 32, seed=7)[:, :-1]}]
    evaluation = dec.windows(dec.corpus(dec.EVAL_FILES), 128, 48, seed=None)
    ppl0, top0 = dec.lm_stats(runtime.session(base), evaluation)
    print(f"\n## Llama-style decoder: {cfg.layers} layers, dim {cfg.dim}, {cfg.heads} heads, SwiGLU {cfg.ffn}, "
          f"RoPE, causal -inf mask; trained {args.steps} steps ({time.time() - start:.0f} s incl. cache)")
    print(f"calibration: 32 windows x 128 bytes of training text; evaluation: 48 x 128 held-out bytes "
          f"({', '.join(dec.EVAL_FILES)})")
    print(f"float perplexity {ppl0:.3f}\n")
    print(f"{'target style':<22} {'method':<11} {'variant':<22} {'ppl':>7} {'vs float':>9} {'top-1 agree':>12}")

    def row(target, method, variant, model, session=None):
        ppl, top = dec.lm_stats(session or as_runtime(model, target), evaluation)
        print(f"{target:<22} {method:<11} {variant:<22} {ppl:>7.3f} {100 * (ppl / ppl0 - 1):>+8.2f}% "
              f"{(top == top0).mean():>12.3f}", flush=True)

    for target in TARGETS:
        for method in METHODS:
            model = copy_model(base)
            quantize(model, calib, target=target, method=method)
            row(target, method, "edgepack", model)
            model = copy_model(base)
            quantize(model, calib, target=target, method=method, smoothquant=0.5)
            row(target, method, "edgepack smoothquant .5", model)
        model = copy_model(base)
        quantize(model, calib, target=target, method="minmax", float_defaults=False)
        row(target, "minmax", "no float rules", model)
    import edgepack.quant.float_rules as rules

    exact = rules.exact_ranges
    rules.exact_ranges = lambda model: {}  # probabilities calibrated like any tensor (clipped)
    model = copy_model(base)
    quantize(model, calib, target="jetson-orin-nano", method="entropy")
    row("jetson-orin-nano", "entropy", "Softmax range clipped", model)
    rules.exact_ranges = exact
    # activation x activation MatMul on ORT CPU: INT8 or float (the float_rules default)

    sessions = {}
    for flag in (False, True):
        rules.ACTIVATION_MATMUL_INT8["onnxruntime"] = flag
        model = copy_model(base)
        quantize(model, calib, target="x86-cpu", method="percentile")
        row("x86-cpu", "percentile", f"attn MatMul {'int8' if flag else 'float'}", model)
        sessions[f"attention MatMul {'INT8' if flag else 'float'}"] = runtime.session(model, threads=1)
    rules.ACTIVATION_MATMUL_INT8["onnxruntime"] = False
    sessions["fp32"] = runtime.session(base, threads=1)
    if not args.no_ort:
        for method in ORT_METHODS:
            for symmetric, target in ((False, "x86-cpu"), (True, "jetson-orin-nano")):
                try:
                    model = ort_quantize_static(base, [{"input_ids": calib[0]["input_ids"][i:i + 8]}
                                                        for i in range(0, 32, 8)], method, symmetric)
                    row(target, method.lower(), "ORT quantize_static", model)
                except Exception as exc:  # noqa: BLE001 - report, do not stop the benchmark
                    print(f"{target:<22} {method.lower():<11} {'ORT quantize_static':<22} failed: "
                          f"{type(exc).__name__}: {str(exc).splitlines()[0][:80]}")
    feeds = {"input_ids": dec.windows(dec.corpus(dec.EVAL_FILES), 128, 4, seed=1)[:, :-1]}
    times = {k: [] for k in sessions}
    for s in sessions.values():
        s.run(None, feeds)
    for _ in range(20):
        for k, s in sessions.items():
            t = time.perf_counter()
            s.run(None, feeds)
            times[k].append(time.perf_counter() - t)
    print("\nlatency, 4 x 128 tokens, 1 thread, median of 20 interleaved runs (x86-cpu percentile):")
    fp32 = np.median(times["fp32"])
    for k, t in times.items():
        print(f"  {k:<26} {1000 * np.median(t):7.2f} ms  ({np.median(t) / fp32:.2f}x fp32)")


# ------------------------------------------------------------------ detector
def bench_detector(args) -> None:
    from tests.quant import detector as det

    folder = SHARED / "data" / "coco_val2017_100"
    if not folder.is_dir():
        print("\n## detector: skipped (../shared/data/coco_val2017_100 not found)")
        return
    images = det.coco_images(folder, args.images, size=args.size)
    base = det.build(11, images=images[:8], obj_bias=-7.0, cls_bias=-4.0, size=args.size)
    reference = det.detect(runtime.session(base), images)
    calib = images[:args.calib]
    print(f"\n## YOLOX-style detector: opset 11, fixed batch 1, {args.size}x{args.size}, 3 levels, "
          f"{det.CLASSES} classes; boxes of FP32 per image: {np.mean([len(r[0]) for r in reference]):.1f}")
    print(f"calibration: the first {args.calib} of {len(images)} COCO images (one at a time); "
          f"agreement over all {len(images)}: same class, IoU >= 0.5\n")
    print(f"{'target style':<22} {'method':<11} {'variant':<22} {'recall':>7} {'precision':>10} {'boxes':>11}")

    def row(target, method, variant, model):
        got = det.detect(as_runtime(model, target), images)
        recall, precision, n_ref, n_got = det.agreement(reference, got)
        print(f"{target:<22} {method:<11} {variant:<22} {recall:>7.3f} {precision:>10.3f} {n_got:>5}/{n_ref:<5}",
              flush=True)

    for target in TARGETS:
        for method in METHODS:
            model = copy_model(base)
            quantize(model, [{"images": calib}], target=target, method=method)
            row(target, method, "edgepack", model)
        model = copy_model(base)
        quantize(model, [{"images": calib}], target=target, method="minmax", float_defaults=False)
        row(target, "minmax", "no float rules", model)
    if not args.no_ort:
        from edgepack.quant.validate import upgrade_opset

        upgraded = copy_model(base)
        upgrade_opset(upgraded)  # ORT writes per-channel DQ with `axis` into opset 11: upgrade by hand
        for method in ORT_METHODS:
            for symmetric, target in ((False, "x86-cpu"), (True, "jetson-orin-nano")):
                for source, variant in ((base, "ORT q_static opset 11"), (upgraded, "ORT q_static opset 13")):
                    try:
                        model = ort_quantize_static(source, [{"images": calib[i:i + 1]} for i in range(len(calib))],
                                                    method, symmetric)
                        row(target, method.lower(), variant, model)
                    except Exception as exc:  # noqa: BLE001
                        message = str(exc).splitlines()[0].split("INVALID_GRAPH : ")[-1]
                        print(f"{target:<22} {method.lower():<11} {variant:<22} failed: {message[:90]}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("decoder", "detector"))
    parser.add_argument("--steps", type=int, default=500, help="decoder training steps")
    parser.add_argument("--images", type=int, default=100)
    parser.add_argument("--calib", type=int, default=32)
    parser.add_argument("--size", type=int, default=320)
    parser.add_argument("--no-ort", action="store_true", help="skip ORT quantize_static")
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    print(f"CPU flags: {cpu_flags()}")
    if args.only in (None, "decoder"):
        bench_decoder(args)
    if args.only in (None, "detector"):
        bench_detector(args)


if __name__ == "__main__":
    main()
