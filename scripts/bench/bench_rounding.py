"""Benchmark: weight rounding fitted to data (quantize --rounding) and refit after pruning.

Quantization: ResNet-20 (CIFAR-10), the MNIST CNN and ShuffleNetV2 (ImageNet, depthwise) from
../shared and the representative decoder (tests/quant/decoder.py), for rounding nearest / auto /
clip / adaround / bias / block / all, in both target styles: jetson-orin-nano = TensorRT's QDQ math
(ORT, optimizations off), x86-cpu (7-bit weights) and x86-cpu-vnni = as ORT runs the artifact
(fused integer kernels); side by side with ORT `quantize_static` (QDQ, per channel) and
onnxsim 0.8's `quantize_static` + `correct_bias` + `apply_adaquant` (x86 style: uint8 activations).
Each configuration runs in a fresh process: its time and peak RSS (ru_maxrss) are its own.
ResNet-20 / MNIST: top-1 on held-out labelled images; ShuffleNetV2: top-1 agreement with FP32 on
500 crops of the 50 held-out COCO images (no ImageNet labels here); decoder: perplexity / FP32.

Pruning: ResNet-20 with 30/50/70 % of channels removed (prune --granularity channel), top-1 before
and after `--refit` (least squares against the float model on 1024 images, evaluated on others).

Memory: peak RSS of `quantize` (calibration + rounding) on ShuffleNetV2 with 50 and 400 samples, and on
a MobileNetV2-shaped model (mobilenet_shape.py: 3.5 M parameters, random weights, 4x ShuffleNetV2's
largest tensor) with 200 and 400: the issue's 3.5 M-parameter 224x224 case, for memory and time only.

    python3 scripts/bench/bench_rounding.py [--only resnet20,mnist,shufflenet,prune,memory] [--calib N]
"""
from __future__ import annotations

import argparse
import gzip
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
SHARED = REPO.parent / "shared"
MEAN, STD = np.array([0.485, 0.456, 0.406], np.float32), np.array([0.229, 0.224, 0.225], np.float32)
VARIANTS = ("nearest", "auto", "clip", "adaround", "bias", "block", "all")
TARGETS = ("jetson-orin-nano", "x86-cpu", "x86-cpu-vnni")
PEERS = ("ort-quantize_static", "onnxsim-ptq")
MEMORY_ROWS = (("shufflenet", 50, "jetson-orin-nano", "nearest"), ("shufflenet", 50, "jetson-orin-nano", "auto"),
               ("shufflenet", 400, "jetson-orin-nano", "auto"), ("shufflenet", 400, "x86-cpu", "auto"),
               ("mobilenetv2-shape", 200, "jetson-orin-nano", "auto"), ("mobilenetv2-shape", 200, "x86-cpu", "auto"),
               ("mobilenetv2-shape", 400, "x86-cpu-vnni", "auto"))


def cpu_flags() -> str:
    from edgepack.cpu import cpu_flags as flags

    wanted = {"avx2", "avx512f", "avx512_vnni", "avx_vnni"}
    try:
        return " ".join(sorted(set(flags()) & wanted)) or "none of avx2/avx512f/avx512_vnni/avx_vnni"
    except Exception:  # noqa: BLE001 - a benchmark header, not a check
        return "unknown"


def load(name: str, calib: int):
    """(model path, input name, calibration array, evaluation array, labels or None)."""
    if name == "resnet20":
        with np.load(SHARED / "data/cifar10_test/cifar10_test_jpeg_decoded.npz") as d:
            x, y = d["images"], d["labels"]
        perm = np.random.default_rng(0).permutation(len(x))
        x = ((x[perm].astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2).copy()
        return SHARED / "models/resnet20_cifar10.onnx", "input", x[:calib], x[-2000:], y[perm][-2000:]
    if name == "mnist":
        with gzip.open(SHARED / "data/mnist/t10k-images-idx3-ubyte.gz") as f:
            x = np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32)
        with gzip.open(SHARED / "data/mnist/t10k-labels-idx1-ubyte.gz") as f:
            y = np.frombuffer(f.read(), np.uint8, offset=8).astype(np.int64)
        return SHARED / "models/mnist_cntk_fp32.onnx", "Input3", x[:calib], x[-2000:], y[-2000:]
    paths = sorted((SHARED / "data/coco_val2017_100").glob("*.jpg"))
    return (SHARED / "models/shufflenet-v2-12_from_int8_fp32.onnx", "input", _crops(paths[:min(calib, 50)], False),
            _crops(paths[50:], True), None)


def _crops(paths, ten: bool) -> np.ndarray:
    """ImageNet preprocessing (short side 256): the centre 224 crop, or (`ten`) the centre and four
    corner crops and their mirror images, so that 50 held-out images give 500 inputs."""
    from PIL import Image

    out = []
    for path in paths:
        im = Image.open(path).convert("RGB")
        w, h = im.size
        s = 256 / min(w, h)
        im = im.resize((max(256, round(w * s)), max(256, round(h * s))), Image.BILINEAR)
        a = (np.asarray(im, np.float32) / 255 - MEAN) / STD
        h, w = a.shape[:2]
        corners = [((h - 224) // 2, (w - 224) // 2), (0, 0), (0, w - 224), (h - 224, 0), (h - 224, w - 224)]
        for top, left in corners if ten else corners[:1]:
            crop = a[top:top + 224, left:left + 224]
            for c in (crop, crop[:, ::-1]) if ten else (crop,):
                out.append(c.transpose(2, 0, 1))
    return np.stack(out).astype(np.float32)


def top1(model, name, x, labels, reference, optimize: bool) -> float:
    from edgepack import runtime

    sess = runtime.session(model, optimize=optimize)
    pred = np.concatenate([sess.run(None, {name: x[i:i + 100]})[0].argmax(1) for i in range(0, len(x), 100)])
    return float((pred == (labels if labels is not None else reference)).mean())


def decoder_one(target: str, variant: str) -> dict:
    """The representative decoder (tests/quant/decoder.py, LLM-style outlier channels): perplexity
    on held-out text as a ratio to FP32, with SmoothQuant off ("plain": where weight fitting has
    work to do) or the default ("auto"), in this fresh process."""
    from edgepack import runtime
    from edgepack.graph import copy_model
    from edgepack.quant import quantize
    from tests.quant import decoder as dec

    rounding, _, smooth = variant.partition("/")
    base = dec.representative()
    calib = [{"input_ids": dec.windows(dec.corpus(), 64, 32, seed=5)[:, :-1]}]
    evaluation = dec.windows(dec.corpus(dec.EVAL_FILES), 64, 48, seed=None)
    ppl0, _ = dec.lm_stats(runtime.session(base), evaluation)
    model = copy_model(base)
    start = time.perf_counter()
    quantize(model, calib, target=target, rounding=rounding, smoothquant=None if smooth == "plain" else "auto",
             runtime_check=False)
    seconds = time.perf_counter() - start
    ppl, _ = dec.lm_stats(runtime.session(model, optimize=target != "jetson-orin-nano"), evaluation)
    return {"model": "decoder", "target": target, "variant": variant, "fp32": 1.0, "int8": ppl / ppl0,
            "seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "metric": "perplexity / FP32 perplexity"}


def one(model_name: str, target: str, variant: str, calib: int) -> dict:
    """One configuration, in this (fresh) process."""
    if model_name == "decoder":
        return decoder_one(target, variant)
    from edgepack import io, runtime
    from edgepack.graph import copy_model
    from edgepack.quant import quantize
    from edgepack.targets import load_target

    path, name, xc, xe, labels = load(model_name, calib)
    base = io.load(path)
    sess = runtime.session(base)
    reference = np.concatenate([sess.run(None, {name: xe[i:i + 100]})[0].argmax(1) for i in range(0, len(xe), 100)])
    fp32 = top1(base, name, xe, labels, reference, True)
    batches = [{name: xc[i:i + 32]} for i in range(0, len(xc), 32)]
    tensorrt = load_target(target).is_tensorrt
    start = time.perf_counter()
    if variant in VARIANTS or "+" in variant or variant == "auto":
        model = copy_model(base)
        quantize(model, batches, target=target, rounding=variant, runtime_check=False)
    elif variant == "ort-quantize_static":
        model = _ort(base, batches, symmetric=tensorrt)
    else:
        model = _onnxsim(base, batches)
    seconds = time.perf_counter() - start
    acc = top1(model, name, xe, labels, reference, not tensorrt)
    return {"model": model_name, "target": target, "variant": variant, "fp32": fp32, "int8": acc,
            "seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "metric": "top-1" if labels is not None else "top-1 agreement"}


def _ort(base, batches, symmetric: bool):
    from onnxruntime.quantization import QuantFormat, QuantType, quantize_static

    from edgepack import io

    class Reader:
        def __init__(self):
            self.items = iter(batches)

        def get_next(self):
            return next(self.items, None)

    with tempfile.TemporaryDirectory() as tmp:
        src, dst = Path(tmp) / "fp32.onnx", Path(tmp) / "int8.onnx"
        io.save(base, src)
        quantize_static(str(src), str(dst), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                        activation_type=QuantType.QInt8 if symmetric else QuantType.QUInt8,
                        weight_type=QuantType.QInt8, extra_options={"ActivationSymmetric": symmetric})
        return io.load(dst, check=False)


def _onnxsim(base, batches):
    """onnxsim 0.8's PTQ: quantize_static, then correct_bias and apply_adaquant (its MatMul/Gemm)."""
    import onnx
    import onnxsim

    from edgepack import io

    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "fp32.onnx"
        io.save(base, src)
        proto = onnx.load(str(src))
        data = [dict(b) for b in batches]
        q = onnxsim.quantize_static(proto, calibration_data=data)
        q = onnxsim.correct_bias(proto, q, calibration_data=data)
        q = onnxsim.apply_adaquant(proto, q, calibration_data=data)
        dst = Path(tmp) / "int8.onnx"
        onnx.save(q, str(dst))
        return io.load(dst, check=False)


def memory(model: str, samples: int, target: str, rounding: str) -> dict:
    """Peak RSS of `quantize` on ShuffleNetV2 or the MobileNetV2-shaped model (224x224) with `samples`
    calibration images (the 100 COCO images, mirrored and shifted to make more), in this fresh process."""
    from edgepack.quant import quantize

    if model == "shufflenet":
        path, name = SHARED / "models/shufflenet-v2-12_from_int8_fp32.onnx", "input"
    else:
        sys.path.insert(0, str(Path(__file__).parent))
        import mobilenet_shape

        path, name = mobilenet_shape.build(Path(tempfile.mkdtemp()) / "mobilenetv2_shape.onnx"), "input"
    pool = _crops(sorted((SHARED / "data/coco_val2017_100").glob("*.jpg")), False)  # 100 centre crops
    pool = np.concatenate([pool, pool[..., ::-1]])

    def batches():
        for i in range(0, samples, 16):
            idx = np.arange(i, min(i + 16, samples))
            yield {name: np.roll(pool[idx % len(pool)], (idx // len(pool))[0], axis=-1).copy()}

    start = time.perf_counter()
    quantize(str(path), list(batches()) if samples <= 64 else _Replay(batches), target=target,
             rounding=rounding, runtime_check=False)
    return {"model": model, "samples": samples, "target": target, "rounding": rounding,
            "seconds": time.perf_counter() - start,
            "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


class _Replay:
    """A re-iterable source that makes its batches on the fly (nothing held in memory)."""

    def __init__(self, make):
        self.make = make

    def __iter__(self):
        return iter(self.make())


def prune_rows(calib: int) -> list[dict]:
    from edgepack import io
    from edgepack.passes.prune import prune
    from edgepack.passes.refit import refit

    path, name, _, xe, labels = load("resnet20", 0)
    with np.load(SHARED / "data/cifar10_test/cifar10_test_jpeg_decoded.npz") as d:
        x = d["images"]
    perm = np.random.default_rng(0).permutation(len(x))
    xr = ((x[perm[:calib]].astype(np.float32) / 255 - MEAN) / STD).transpose(0, 3, 1, 2).copy()
    base = io.load(path)
    fp32 = top1(base, name, xe, labels, None, True)
    rows = []
    for sparsity in (0.3, 0.5, 0.7):
        pruned, _ = prune(base, sparsity=sparsity, granularity="channel")
        before = top1(pruned, name, xe, labels, None, True)
        start = time.perf_counter()
        refit(pruned, base, [{name: xr[i:i + 64]} for i in range(0, len(xr), 64)])
        after = top1(pruned, name, xe, labels, None, True)
        rows.append({"sparsity": sparsity, "fp32": fp32, "pruned": before, "refit": after,
                     "seconds": time.perf_counter() - start})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--only", default="resnet20,mnist,shufflenet,decoder,prune")
    parser.add_argument("--calib", type=int, default=256)
    parser.add_argument("--one", nargs=3, metavar=("MODEL", "TARGET", "VARIANT"))
    parser.add_argument("--memory-one", nargs=4, metavar=("MODEL", "SAMPLES", "TARGET", "ROUNDING"))
    args = parser.parse_args()
    if args.memory_one:
        model, samples, target, rounding = args.memory_one
        print(json.dumps(memory(model, int(samples), target, rounding)))
        return
    if args.one:
        print(json.dumps(one(*args.one, args.calib)))
        return
    print(f"CPU flags: {cpu_flags()}; calibration/fitting samples: {args.calib} (ShuffleNetV2: 50)")
    only = args.only.split(",")
    for model_name in [m for m in only if m not in ("prune", "memory")]:
        print(f"\n## {model_name}\n{'target':<18} {'variant':<22} {'fp32':>7} {'int8':>7} {'delta':>7} "
              f"{'time s':>7} {'peak MB':>8}")
        for target in TARGETS:
            variants = (*VARIANTS, *PEERS) if model_name != "decoder" else \
                [f"{v}/{s}" for s in ("plain", "auto") for v in ("nearest", "auto", "clip", "block", "all")]
            for variant in variants:
                if variant == "onnxsim-ptq" and target != "x86-cpu-vnni":
                    continue
                proc = subprocess.run([sys.executable, __file__, "--one", model_name, target, variant,
                                       "--calib", str(args.calib)], capture_output=True, text=True)
                if proc.returncode:
                    last = (proc.stderr.strip().splitlines() or ["?"])[-1]
                    print(f"{target:<18} {variant:<22} failed: {last[:90]}", flush=True)
                    continue
                r = json.loads(proc.stdout.strip().splitlines()[-1])
                k = 1 if model_name == "decoder" else 100
                print(f"{target:<18} {variant:<22} {k * r['fp32']:>7.2f} {k * r['int8']:>7.3f} "
                      f"{k * (r['int8'] - r['fp32']):>+7.3f} {r['seconds']:>7.1f} {r['peak_mb']:>8.0f}", flush=True)
        print(f"({r['metric']}{', %' if model_name != 'decoder' else ''})" if proc.returncode == 0 else "")
    if "memory" in only:
        print("\n## peak RSS of quantize, 224x224, fresh process each (ru_maxrss)")
        print(f"{'model':<18} {'samples':>8} {'target':<18} {'rounding':<10} {'time s':>7} {'peak MB':>8}")
        for model, samples, target, rounding in MEMORY_ROWS:
            proc = subprocess.run([sys.executable, __file__, "--memory-one", model, str(samples), target, rounding],
                                  capture_output=True, text=True)
            head = f"{model:<18} {samples:>8} {target:<18} {rounding:<10}"
            if proc.returncode:
                print(f"{head} failed: {proc.stderr.strip().splitlines()[-1][:80]}")
                continue
            r = json.loads(proc.stdout.strip().splitlines()[-1])
            print(f"{head} {r['seconds']:>7.1f} {r['peak_mb']:>8.0f}", flush=True)
    if "prune" in only:
        print(f"\n## ResNet-20, channels pruned, then --refit ({max(args.calib, 1024)} images; top-1 on 2000 others)")
        print(f"{'sparsity':>8} {'fp32':>7} {'pruned':>7} {'refit':>7} {'recovered':>10} {'refit s':>8}")
        for r in prune_rows(max(args.calib, 1024)):
            lost = r["fp32"] - r["pruned"]
            share = (r["refit"] - r["pruned"]) / lost if lost > 0 else float("nan")
            print(f"{r['sparsity']:>8.1f} {100 * r['fp32']:>7.2f} {100 * r['pruned']:>7.2f} {100 * r['refit']:>7.2f} "
                  f"{share:>10.2f} {r['seconds']:>8.1f}", flush=True)


if __name__ == "__main__":
    main()
