"""Benchmark: INT4 weight-only (RTN / GPTQ / AWQ, blocks 32/64/128, both encodings), mixed
INT4/INT8, FP16, INT8 and FP8 on the representative Llama-style decoder, side by side with
ONNX Runtime's matmul_nbits_quantizer; latency and file size also on a larger code-built decoder.

Decoder: tests/quant/decoder.py's representative model (outlier channels planted into a model
trained on stdlib source, then fine-tuned; cached weights), evaluated on held-out stdlib files:
perplexity and next-token top-1 agreement with FP32. Encodings: "matmulnbits" (x86-cpu-vnni:
com.microsoft.MatMulNBits, run with ORT's optimizations), "dequantize" (jetson-agx-thor:
DequantizeLinear(block_size) int4 -> MatMul, TensorRT's form, run as QDQ math with
optimizations off; block 32 through a CPU target file that asks for blocked DQ, since 32 is not
TensorRT-legal). Latency: ORT CPU, one 64-token window, interleaved with FP32, median ratio.
File size: the whole model and the MatMul weights alone (INT4 codes + scales vs float32).

    python3 scripts/bench/bench_int4.py [--only int8|int4|nncf|large] [--large-dim 512] [--reps 30]

NNCF's ONNX weight compression is compared where `import nncf` works (pip install nncf).
"""
from __future__ import annotations

import argparse
import logging
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
from tests.quant import decoder as dec  # noqa: E402

CPU_DQ = """name = "x86-cpu-dq"
description = "x86 CPU, ONNX Runtime, INT4 as blocked DequantizeLinear (bench only)"
backend = "onnxruntime"
precisions = ["int8", "fp32", "int4"]
int4_encoding = "dequantize"
int4_symmetric = true
[qdq]
activations = "uint8-asymmetric-per-tensor"
weights = "int8-symmetric-per-channel"
"""


def cpu_flags() -> str:
    from edgepack.cpu import cpu_flags as flags

    keep = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "amx_int8", "asimd", "asimddp")
    return " ".join(f for f in sorted(flags()) if f in keep) or "?"


def file_sizes(model) -> tuple[int, int]:
    """(bytes of the saved model, bytes of the MatMul weights and their scales/zero points)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = io.save(copy_model(model), Path(tmp) / "m.onnx")
        total = sum(p.stat().st_size for p in Path(tmp).iterdir())
    weights = 0
    for node in model.graph:
        if node.op_type == "MatMulNBits":
            weights += sum(v.const_value.nbytes for v in node.inputs[1:] if v is not None and v.const_value is not None)
        elif node.op_type == "MatMul" and node.inputs[1] is not None:
            src = node.inputs[1]
            dq = src.producer()
            values = dq.inputs if dq is not None and dq.op_type == "DequantizeLinear" else [src]
            weights += sum(v.const_value.nbytes for v in values if v is not None and v.const_value is not None)
    del path
    return total, weights


def latency_ratio(model, base, feeds, reps: int) -> float:
    a, b = runtime.session(base), runtime.session(model)
    for s in (a, b):
        s.run(None, feeds)
    ratios = []
    for _ in range(reps):
        t0 = time.perf_counter()
        a.run(None, feeds)
        t1 = time.perf_counter()
        b.run(None, feeds)
        t2 = time.perf_counter()
        ratios.append((t2 - t1) / (t1 - t0))
    return float(np.median(ratios))


def ort_nbits(model, algorithm: str, block: int):
    """ONNX Runtime's own INT4 quantizer on the same model (None where it does not run here)."""
    from onnxruntime.quantization import matmul_nbits_quantizer as mnq

    configs = {"ort-rtn": lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=True),
               "ort-rtn-asym": lambda: mnq.DefaultWeightOnlyQuantConfig(block_size=block, is_symmetric=False),
               "ort-hqq": lambda: mnq.HQQWeightOnlyQuantConfig(block_size=block),
               "ort-gptq": lambda: mnq.GPTQWeightOnlyQuantConfig(calibration_data_reader=None, block_size=block)}
    try:
        import onnx_ir as ir

        proto = ir.serde.serialize_model(copy_model(model))
        quant = mnq.MatMulNBitsQuantizer(proto, algo_config=configs[algorithm]())
        quant.process()
        return ir.serde.deserialize_model(quant.model.model)
    except Exception as exc:  # HQQ needs torch, GPTQ neural-compressor
        return f"does not run here ({type(exc).__name__}: {str(exc).splitlines()[0][:60]})"


def row(name, model, base, evaluation, ppl_float, top_float, *, optimize=True, reps=0, feeds=None, sizes=None):
    ppl, top = dec.lm_stats(runtime.session(model, optimize=optimize), evaluation)
    total, weights = file_sizes(model)
    lat = latency_ratio(model, base, feeds, reps) if reps else float("nan")
    print(f"| {name:<44} | {ppl:7.3f} | x{ppl / ppl_float:5.3f} | {(top == top_float).mean():5.3f} | "
          f"{total / sizes[0]:5.3f} | {weights / sizes[1]:5.3f} | {lat:5.2f} |", flush=True)


def header(title):
    print(f"\n{title}\n")
    print(f"| {'model':<44} | perplexity | vs FP32 | top-1 agree | file / FP32 | MatMul weights / FP32 | latency / FP32 |")
    print("|---|---|---|---|---|---|---|")


def bench_int8(base, calib, evaluation, ppl_float, top_float, sizes, args):
    header("INT8 W8A8 (default options: SmoothQuant auto) vs SmoothQuant off")
    for target in ("x86-cpu-vnni", "jetson-orin-nano"):
        trt = load_target(target).is_tensorrt
        for sq in (None, "auto"):
            m = copy_model(base)
            quantize(m, calib, target=target, smoothquant=sq, runtime_check=False)
            row(f"int8 {target} smoothquant {sq or 'off'}", m, base, evaluation, ppl_float, top_float,
                optimize=not trt, sizes=sizes)
    m = copy_model(base)
    quantize(m, calib, target="jetson-agx-thor", weights="fp8", method="minmax")
    row("fp8 e4m3 jetson-agx-thor (QDQ math)", m, base, evaluation, ppl_float, top_float, optimize=False, sizes=sizes)


def bench_int4(base, calib, evaluation, ppl_float, top_float, sizes, args, feeds):
    from edgepack.passes.fp16 import to_fp16

    header("INT4 weight-only (activations float)")
    m, _ = to_fp16(base, data=calib)
    row("fp16 (weights and compute)", m, base, evaluation, ppl_float, top_float, sizes=sizes, reps=args.reps, feeds=feeds)
    with tempfile.TemporaryDirectory() as tmp:
        cpu_dq = Path(tmp) / "x86-cpu-dq.toml"
        cpu_dq.write_text(CPU_DQ)
        styles = [("matmulnbits", "x86-cpu-vnni", (32, 64, 128), True),
                  ("dequantize (TensorRT)", "jetson-agx-thor", (64, 128), False),
                  ("dequantize (CPU, ORT-optimized)", str(cpu_dq), (32, 64, 128), True)]
        for encoding, target, blocks, optimize in styles:
            for block in blocks:
                for algorithm in ("rtn", "gptq", "awq", "awq-gptq"):
                    m = copy_model(base)
                    t = time.perf_counter()
                    quantize(m, calib, target=target, weights="int4", algorithm=algorithm, block_size=block)
                    took = time.perf_counter() - t
                    row(f"int4 {algorithm} b{block} {encoding} ({took:.1f}s)", m, base, evaluation, ppl_float,
                        top_float, optimize=optimize, sizes=sizes, reps=args.reps if optimize else 0, feeds=feeds)
        for algorithm, target, block, budget in (("rtn", "x86-cpu-vnni", 32, 20.0), ("gptq", "jetson-agx-thor", 128, 20.0), ("rtn", "x86-cpu-vnni", 32, 30.0)):
            m = copy_model(base)
            r = quantize(m, calib, target=target, weights="int4", algorithm=algorithm, block_size=block, max_error=budget)
            eight = sum(x["bits"] == 8 for x in r.sensitivity)
            row(f"mixed {algorithm} b{block} {target} >= {budget:.0f} dB ({eight} INT8)", m, base, evaluation,
                ppl_float, top_float, optimize=not load_target(target).is_tensorrt, sizes=sizes, feeds=feeds,
                reps=0 if load_target(target).is_tensorrt else args.reps)
    for algorithm in ("ort-rtn", "ort-rtn-asym", "ort-hqq", "ort-gptq"):
        for block in (32, 128):
            m = ort_nbits(base, algorithm, block)
            if isinstance(m, str):
                print(f"| {algorithm} b{block}: {m} |")
                continue
            row(f"{algorithm} b{block} (matmul_nbits_quantizer)", m, base, evaluation, ppl_float, top_float,
                sizes=sizes, reps=args.reps, feeds=feeds)


def bench_nncf(base, calib, evaluation, ppl_float, top_float, sizes):
    """NNCF's ONNX weight compression (`pip install nncf`), where it installs and its output loads."""
    header("NNCF compress_weights (ONNX backend), same model and data")
    try:
        import nncf
        import onnx_ir as ir
        from nncf.quantization.advanced_parameters import AdvancedCompressionParameters, GroupSizeFallbackMode
    except ImportError as exc:
        print(f"| nncf: not installed ({exc}) |")
        return
    adv = AdvancedCompressionParameters(group_size_fallback_mode=GroupSizeFallbackMode.ADJUST)
    dataset = nncf.Dataset([{"input_ids": calib[0]["input_ids"][i:i + 8]} for i in range(0, 32, 8)])
    sym, asym = nncf.CompressWeightsMode.INT4_SYM, nncf.CompressWeightsMode.INT4_ASYM
    for name, options in (("int4_sym b128", dict(mode=sym, group_size=128)),
                          ("int4_sym b128 awq", dict(mode=sym, group_size=128, dataset=dataset, awq=True)),
                          ("int4_sym b128 awq+scale estimation", dict(mode=sym, group_size=128, dataset=dataset,
                                                                       awq=True, scale_estimation=True)),
                          ("int4_asym b32", dict(mode=asym, group_size=32)),
                          ("int4_asym b32 awq", dict(mode=asym, group_size=32, dataset=dataset, awq=True))):
        try:
            proto = nncf.compress_weights(ir.serde.serialize_model(copy_model(base)), ratio=1.0,
                                          advanced_parameters=adv, **options)
            model = ir.serde.deserialize_model(proto)
            row(f"nncf {nncf.__version__} {name}", model, base, evaluation, ppl_float, top_float, sizes=sizes)
        except Exception as exc:  # noqa: BLE001 - a peer tool's failure is a result here
            print(f"| nncf {name}: fails ({type(exc).__name__}: {str(exc).splitlines()[0][:110]}) |")


def bench_large(args):
    """A larger code-built decoder (random weights, outliers planted): latency and size, and
    agreement of INT4 logits with FP32 (perplexity of an untrained model means nothing)."""
    cfg = dec.Config(dim=args.large_dim, heads=8, ffn=int(args.large_dim * 2.75) // 32 * 32, layers=4, max_len=128)
    params = dec.plant_outliers(dec.init_params(cfg, seed=0), cfg)
    base = dec.to_onnx(params, cfg)
    n = sum(v.size for v in params.values())
    tokens = dec.corpus()
    calib = [{"input_ids": dec.windows(tokens, 64, 16, seed=5)[:, :-1]}]
    evaluation = dec.windows(dec.corpus(dec.EVAL_FILES), 64, 8, seed=None)
    feeds = {"input_ids": evaluation[:1, :-1]}
    _, top_float = dec.lm_stats(runtime.session(base), evaluation)
    sizes = file_sizes(base)
    print(f"\nLarger decoder: dim {cfg.dim}, ffn {cfg.ffn}, {cfg.layers} layers, {n / 1e6:.1f} M parameters "
          f"(random weights + planted outliers): latency and size; top-1 agreement with FP32 logits\n")
    print("| model | top-1 agree | file / FP32 | MatMul weights / FP32 | latency / FP32 |")
    print("|---|---|---|---|---|")
    for name, target, block, algorithm in (("matmulnbits", "x86-cpu-vnni", 32, "rtn"), ("matmulnbits", "x86-cpu-vnni", 128, "rtn"),
                                           ("matmulnbits", "x86-cpu-vnni", 32, "awq-gptq")):
        m = copy_model(base)
        quantize(m, calib, target=target, weights="int4", algorithm=algorithm, block_size=block)
        _, top = dec.lm_stats(runtime.session(m), evaluation)
        total, weights = file_sizes(m)
        print(f"| int4 {algorithm} b{block} {name} | {(top == top_float).mean():.3f} | {total / sizes[0]:.3f} | "
              f"{weights / sizes[1]:.3f} | {latency_ratio(m, base, feeds, args.reps):.2f} |", flush=True)
    for block in (32, 128):
        m = ort_nbits(base, "ort-rtn", block)
        if not isinstance(m, str):
            _, top = dec.lm_stats(runtime.session(m), evaluation)
            total, weights = file_sizes(m)
            print(f"| ort-rtn b{block} (matmul_nbits_quantizer) | {(top == top_float).mean():.3f} | "
                  f"{total / sizes[0]:.3f} | {weights / sizes[1]:.3f} | {latency_ratio(m, base, feeds, args.reps):.2f} |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", choices=("int8", "int4", "nncf", "large"))
    parser.add_argument("--large-dim", type=int, default=512)
    parser.add_argument("--reps", type=int, default=30)
    args = parser.parse_args()
    logging.basicConfig(level=logging.ERROR)
    runtime.quiet_onnxruntime()
    import onnxruntime

    print(f"CPU flags: {cpu_flags()}; ONNX Runtime {onnxruntime.__version__}")
    if args.only in (None, "int8", "int4", "nncf"):
        base = dec.representative()
        calib = [{"input_ids": dec.windows(dec.corpus(), 64, 32, seed=5)[:, :-1]}]
        evaluation = dec.windows(dec.corpus(dec.EVAL_FILES), 64, 32, seed=None)
        ppl_float, top_float = dec.lm_stats(runtime.session(base), evaluation)
        sizes = file_sizes(base)
        feeds = {"input_ids": evaluation[:1, :-1]}
        print(f"Representative decoder ({sum(1 for n in base.graph if n.op_type == 'MatMul')} MatMuls): FP32 "
              f"perplexity {ppl_float:.3f} on {len(evaluation)} windows of 64 bytes")
        if args.only in (None, "int8"):
            bench_int8(base, calib, evaluation, ppl_float, top_float, sizes, args)
        if args.only in (None, "int4"):
            bench_int4(base, calib, evaluation, ppl_float, top_float, sizes, args, feeds)
        if args.only in (None, "nncf"):
            bench_nncf(base, calib, evaluation, ppl_float, top_float, sizes)
    if args.only in (None, "large"):
        bench_large(args)


if __name__ == "__main__":
    main()
