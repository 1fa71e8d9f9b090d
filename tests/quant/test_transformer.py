"""Transformers quantize: -inf masks never crash an observer; norms, masks and attention scores
stay float; activation x activation MatMul per target; SmoothQuant; perplexity against float on
a small Llama-style decoder trained here on real text (tests/quant/decoder.py)."""
from __future__ import annotations

import functools

import numpy as np
import pytest

from edgepack import runtime
from edgepack.calib.observers import METHODS, ChannelMeanObserver, HistogramObserver
from edgepack.graph import copy_model
from edgepack.quant import quantize
from edgepack.quant.float_rules import default_float_nodes
from edgepack.quant.qdq import QuantPolicy
from edgepack.quant.smoothquant import smooth
from edgepack.targets import load_target
from tests.helpers import check, model_from_text
from tests.quant import decoder as dec

CFG = dec.Config(dim=32, heads=2, ffn=88, layers=2, max_len=64)
TARGETS = ("x86-cpu", "jetson-orin-nano")


@functools.lru_cache(maxsize=1)
def _trained():
    """(float model, calibration data, evaluation windows): 120 Adam steps on stdlib source, ~2 s."""
    params = dec.train(CFG, steps=120, batch=8, seq=32, lr=1e-2)
    calib = [{"input_ids": dec.windows(dec.corpus(), 32, 16, seed=5)[:, :-1]}]
    evaluation = dec.windows(dec.corpus(dec.EVAL_FILES), 32, 24, seed=None)
    return dec.to_onnx(params, CFG), calib, evaluation


def _run_as_target(model, target):
    """ONNX Runtime as the target's runtime runs it: all optimizations for CPU targets; the exact
    QDQ math (optimizations off) for TensorRT targets."""
    return runtime.session(model, optimize=not load_target(target).is_tensorrt)


def test_observers_skip_inf_and_nan_and_count_them():
    x = np.random.default_rng(0).standard_normal(5000).astype(np.float32)
    masked = x.copy()
    masked[:100], masked[100] = -np.inf, np.nan
    clean, dirty = HistogramObserver(), HistogramObserver()
    clean.update(x[101:])
    dirty.update(masked)
    assert dirty.nonfinite == 101 and dirty.count == clean.count
    for method in METHODS:
        for symmetric in (False, True):
            got = dirty.range(method, symmetric=symmetric)
            assert np.all(np.isfinite(got)) and got == clean.range(method, symmetric=symmetric)
    only_inf = HistogramObserver()
    only_inf.update(np.full(8, -np.inf, np.float32))
    assert only_inf.range("entropy", symmetric=True) == (0.0, 0.0) and only_inf.nonfinite == 8
    means = ChannelMeanObserver()  # bias correction's per-channel means stay finite too
    means.update(masked.reshape(10, 5, 100))
    assert np.all(np.isfinite(means.mean()))


@pytest.mark.parametrize("target", TARGETS)
def test_decoder_quantizes_with_every_method_within_10_percent_perplexity(target):
    #   ids -> Gather -> [RMSNorm -> q,k,v MatMul -> RoPE -> QK^T -> +mask(-inf) -> Softmax -> PV
    #   -> Wo -> +x -> RMSNorm -> SwiGLU MLP -> +x] x2 -> RMSNorm -> lm_head
    base, calib, evaluation = _trained()
    ppl_float, top_float = dec.lm_stats(runtime.session(base), evaluation)
    assert ppl_float < 20  # a model that learned something (uniform bytes: 256)
    for method in METHODS:
        model = copy_model(base)
        quantize(model, calib, target=target, method=method)
        check(model)
        ppl, top = dec.lm_stats(_run_as_target(model, target), evaluation)
        assert ppl <= 1.10 * ppl_float, (method, ppl, ppl_float)
        assert (top == top_float).mean() >= 0.85, method


@pytest.mark.parametrize("target", TARGETS)
def test_norms_masks_scores_stay_float_attention_matmul_per_target(target):
    base, calib, _ = _trained()
    model = copy_model(base)
    result = quantize(model, calib, target=target, method="minmax", placement="rules")
    producers = {n.name: [v.producer().op_type if v is not None and v.producer() else None for v in n.inputs]
                 for n in model.graph}
    for name, inputs in producers.items():
        if any(k in name for k in ("/masked/", "/scaled/", "mul_gamma", "add_eps", "/softmax/", "Gather")):
            assert "DequantizeLinear" not in inputs, name
    qk = producers["/layers.0/attn/qk/MatMul"]
    pv = producers["/layers.0/attn/pv/MatMul"]
    if load_target(target).is_tensorrt:  # TensorRT runs QK^T and PV in INT8: Q/DQ on both inputs
        assert qk == ["DequantizeLinear"] * 2 and pv == ["DequantizeLinear"] * 2
    else:
        assert "DequantizeLinear" not in qk + pv
        assert "/layers.0/attn/masked/Add" in dict(result.skipped)
    assert producers["/layers.0/attn/q_proj/MatMul"][0] == "DequantizeLinear"  # weights' MatMuls are INT8
    assert producers["/lm_head/MatMul"][1] == "DequantizeLinear"


def test_without_the_float_rules_the_masked_scores_still_stay_float_on_cpu():
    # a quantized Add(scores, mask) would turn -inf into a finite code; on ONNX Runtime its only
    # consumer (Softmax) is float, so INT8 there would only add a Q and a DQ: it stays float anyway
    base, calib, evaluation = _trained()
    ppl_float, _ = dec.lm_stats(runtime.session(base), evaluation)
    model = copy_model(base)
    result = quantize(model, calib, target="x86-cpu", method="minmax", float_defaults=False)
    reasons = dict(result.skipped)
    masked = [name for name in reasons if "/masked/" in name]
    assert masked and all("no INT8 consumer" in reasons[name] for name in masked)
    ppl, _ = dec.lm_stats(runtime.session(model), evaluation)
    assert np.isfinite(ppl)


def test_smoothquant_keeps_the_function_and_flattens_channels():
    base, calib, evaluation = _trained()
    model = copy_model(base)
    result = smooth(model, calib, alpha=0.5)
    # each layer: the input norm (q,k,v) and the post-attention norm (gate, up) via gamma, the
    # down projection's input via the up projection's columns, the o projection's input via the
    # v projection's columns (through the attention); the final norm (lm_head)
    assert len(result.smoothed) == 4 * CFG.layers + 1
    feeds = {"input_ids": evaluation[:4, :-1]}
    a, b = runtime.session(base).run(None, feeds)[0], runtime.session(model).run(None, feeds)[0]
    np.testing.assert_allclose(a, b, atol=2e-3 * np.abs(a).max())
    quantized = copy_model(base)
    quantize(quantized, calib, target="x86-cpu", method="minmax", smoothquant=0.5)
    check(quantized)
    ppl_float, _ = dec.lm_stats(runtime.session(base), evaluation)
    ppl, _ = dec.lm_stats(runtime.session(quantized), evaluation)
    assert ppl <= 1.10 * ppl_float


@functools.lru_cache(maxsize=1)
def _representative():
    """The decoder with LLM outlier channels (decoder.representative), its data and FP32 figures."""
    base = dec.representative()
    calib = [{"input_ids": dec.windows(dec.corpus(), 64, 32, seed=5)[:, :-1]}]
    evaluation = dec.windows(dec.corpus(dec.EVAL_FILES), 64, 24, seed=None)
    return base, calib, evaluation, dec.lm_stats(runtime.session(base), evaluation)[0]


def test_representative_decoder_has_outliers_and_loses_int8_without_smoothquant():
    # what real small LLMs do: norm outputs with channels ~100x the median, and plain per-tensor
    # W8A8 costs tens of percent of perplexity (a real 260K Llama: x1.26-1.31)
    from edgepack.calib.calibrate import _with_outputs

    base, calib, evaluation, ppl_float = _representative()
    norm = next(n.outputs[0] for n in base.graph if n.name == "/layers.0/input_norm/mul_gamma/Mul")
    out = runtime.session(_with_outputs(copy_model(base), [norm])).run([norm.name], calib[0])[0]
    channel_max = np.abs(out.reshape(-1, out.shape[-1])).max(axis=0)
    assert channel_max.max() > 30 * np.median(channel_max)
    model = copy_model(base)
    quantize(model, calib, target="x86-cpu-vnni", smoothquant=None, runtime_check=False)
    ppl, _ = dec.lm_stats(runtime.session(model), evaluation)
    assert ppl > 1.15 * ppl_float


@pytest.mark.parametrize("target", ("x86-cpu-vnni", "jetson-orin-nano"))
def test_representative_decoder_int8_within_10_percent_by_default(target):
    # default options: SmoothQuant "auto" moves the outliers (norm outputs, SwiGLU products,
    # attention outputs) into the weights; both target styles, run as the runtime runs them
    base, calib, evaluation, ppl_float = _representative()
    model = copy_model(base)
    result = quantize(model, calib, target=target, runtime_check=False)
    check(model)
    ppl, _ = dec.lm_stats(_run_as_target(model, target), evaluation)
    assert ppl <= 1.10 * ppl_float, (ppl, ppl_float)
    assert result.quantized


LAYERNORM = """
<ir_version: 8, opset_import: ["" : 17]>
ln (float[N, 8, 16] x, float[N, 8, 16] r) => (float[N, 8, 4] y) <float[16] g = {1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0,1.0}, float[16] b = {0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1,0.1}, float eps = {0.00001}, float two = {2.0}, float[16, 4] w = {%s}> {
  h = Add(x, r)
  mean = ReduceMean<axes = [-1]>(h)
  d = Sub(h, mean)
  sq = Pow(d, two)
  var = ReduceMean<axes = [-1]>(sq)
  ve = Add(var, eps)
  std = Sqrt(ve)
  inv = Reciprocal(std)
  n = Mul(d, inv)
  ng = Mul(n, g)
  nb = Add(ng, b)
  y = MatMul(nb, w)
}
""" % ",".join(["0.25"] * 64)


def test_decomposed_layernorm_nodes_are_found():
    #   h = x + r -> ReduceMean -> Sub -> Pow -> ReduceMean -> Add eps -> Sqrt -> Reciprocal
    #   -> Mul(d, 1/std) -> Mul gamma -> Add beta -> MatMul
    model = model_from_text(LAYERNORM)
    floats = default_float_nodes(model, QuantPolicy.for_target(load_target("x86-cpu")))
    outputs = {n.outputs[0].name: why for n, why in floats.items()}
    assert {"ve", "n", "ng", "nb"} <= set(outputs) and "h" not in outputs  # the residual Add is quantized
    assert all("normalization" in outputs[k] for k in ("ve", "n", "ng", "nb"))


def test_probabilities_keep_their_exact_range_with_every_method():
    # entropy/percentile would clip Softmax's rare large probabilities, the ones attention needs
    base, calib, _ = _trained()
    for method in ("entropy", "percentile"):
        model = copy_model(base)
        quantize(model, calib, target="jetson-orin-nano", method=method)
        softmax = next(n for n in model.graph if n.op_type == "Softmax")
        q = next(u.node for u in softmax.outputs[0].uses() if u.node.op_type == "QuantizeLinear")
        assert q.inputs[1].const_value.numpy() == np.float32(1 / 127), method


BERT_MASK = """
<ir_version: 8, opset_import: ["" : 17]>
att (float[N, 4, 8, 8] s, int64[N, 8] am) => (float[N, 4, 8, 8] p)
    <float one = {1.0}, float big = {-10000.0}, float sc = {0.5}, int64[2] ax = {1, 2}> {
  a = Cast<to = 1>(am)
  u = Unsqueeze(a, ax)
  inv = Sub(one, u)
  mk = Mul(inv, big)
  sd = Mul(s, sc)
  sm = Add(sd, mk)
  p = Softmax<axis = -1>(sm)
}
"""


def test_bert_style_additive_mask_and_scores_stay_float():
    #   attention_mask -> Cast -> Unsqueeze -> (1 - m) * -10000 ─┐
    #   scores * 0.5 ─────────────────────────────────────────── Add -> Softmax
    from edgepack import io

    model = model_from_text(BERT_MASK)
    io.infer_shapes(model)
    floats = default_float_nodes(model, QuantPolicy.for_target(load_target("x86-cpu")))
    reasons = {n.outputs[0].name: why for n, why in floats.items()}
    assert "mask" in reasons["sm"] and "before Softmax" in reasons["sd"]
