"""INT4 weight-only and FP8: encodings bit-exact in ONNX Runtime and the ONNX reference, the
algorithms' effect on real activations, the representative decoder in both encodings, and the
target rules (block sizes, FP8 compute capability, opset window)."""
from __future__ import annotations

import functools

import numpy as np
import onnx
import onnx_ir as ir
import pytest
from onnx import TensorProto, helper

from edgepack import runtime
from edgepack.errors import EdgepackError
from edgepack.graph import copy_model
from edgepack.quant import quantize
from edgepack.quant.check_qdq import check_qdq
from edgepack.quant.int4 import encodings
from edgepack.quant.int4.gptq import gptq, layer_error
from edgepack.quant.int4.grid import Grid, rtn
from edgepack.quant.int4.awq import quantize_group
from edgepack.quant.int4.weight_only import collect
from edgepack.targets import load_target
from tests.helpers import check
from tests.quant import decoder as dec


def _matmul(w: np.ndarray, opset: int) -> ir.Model:
    #   x [M, K] ─► MatMul(·, W [K, N]) ─► y [M, N]
    k, n = w.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"], name="/fc/MatMul")], "mm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", n])],
        [onnx.numpy_helper.from_array(w, "w")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    proto.ir_version = 10
    return ir.serde.deserialize_model(proto)


def _reference_weights(q) -> np.ndarray:
    """W~ [K, N] as the spec computes it in float32: (q - z) * s, per block."""
    deq = (q.q - q.zero[:, None, :]).astype(np.float32) * q.scale.astype(np.float32)[:, None, :]
    return deq.reshape(-1, deq.shape[-1])[:q.k]


@pytest.mark.parametrize("symmetric", (True, False))
@pytest.mark.parametrize("block", (16, 32, 64))
def test_matmulnbits_and_blocked_dq_decode_bit_exactly(symmetric, block):
    # K = 80 is no multiple of 32 or 64: the last block is padded; x = I makes y the weights
    rng = np.random.default_rng(block)
    w = (rng.standard_normal((80, 6)) * np.linspace(0.1, 3, 6)).astype(np.float32)
    q = rtn(w, Grid(block, symmetric))
    expected = _reference_weights(q)
    eye = np.eye(80, dtype=np.float32)

    nbits = _matmul(w, 21)
    node = next(iter(nbits.graph))
    encodings.matmulnbits(nbits.graph, node, q)
    nbits.opset_imports[encodings.MS_DOMAIN] = 1
    assert [n.op_type for n in nbits.graph] == ["MatMulNBits"]
    packed = encodings.matmulnbits_inputs(q)["B"]
    assert packed.shape == (6, -(-80 // block), block // 2) and packed.dtype == np.uint8
    # first code of column 0 in the low nibble of its first byte (symmetric codes stored + 8)
    assert packed[0, 0, 0] & 0x0F == (q.q[0, 0, 0] + (8 if symmetric else 0))
    for optimize in (False, True):
        got = runtime.session(nbits, optimize=optimize).run(None, {"x": eye})[0]
        np.testing.assert_array_equal(got, expected)

    blocked = _matmul(w, 21)
    encodings.dequantize_blocked(blocked.graph, next(iter(blocked.graph)), q)
    check(blocked)
    dq = next(n for n in blocked.graph if n.op_type == "DequantizeLinear")
    assert dq.inputs[0].dtype == (ir.DataType.INT4 if symmetric else ir.DataType.UINT4)
    assert dq.attributes["block_size"].value == block and dq.attributes["axis"].value == 0
    from onnx.reference import ReferenceEvaluator

    spec = ReferenceEvaluator(ir.serde.serialize_model(blocked)).run(None, {"x": eye})[0]
    np.testing.assert_array_equal(spec, expected)
    got = runtime.session(blocked, optimize=False).run(None, {"x": eye})[0]
    np.testing.assert_array_equal(got, expected)
    # optimized, ORT rewrites DQ -> MatMul into its own 4-bit kernel: (q·s − z·s for asymmetric codes): equal within a few float32 ulps
    got = runtime.session(blocked, optimize=True).run(None, {"x": eye})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-7 * np.abs(expected).max())


def test_nibble_packing_order():
    codes = np.array([[1, 2, 3, 4, 5]], np.uint8)
    packed = encodings.pack_nibbles(codes)
    assert packed.tolist() == [[0x21, 0x43, 0x05]]
    assert encodings.unpack_nibbles(packed, 5).tolist() == codes.tolist()


@functools.lru_cache(maxsize=1)
def _decoder():
    base = dec.representative()
    calib = [{"input_ids": dec.windows(dec.corpus(), 64, 32, seed=5)[:, :-1]}]
    evaluation = dec.windows(dec.corpus(dec.EVAL_FILES), 64, 24, seed=None)
    return base, calib, evaluation, dec.lm_stats(runtime.session(base), evaluation)[0]


def test_gptq_and_awq_lower_the_layer_output_error_below_rtn_on_real_activations():
    # the down projection and the q projection of the decoder, fed the real text's activations
    base, calib, _, _ = _decoder()
    nodes = {n.name: n for n in base.graph}
    for name in ("/layers.0/mlp/down_proj/MatMul", "/layers.1/attn/q_proj/MatMul"):
        node = nodes[name]
        h, mean_abs = collect(base, [node.inputs[0]], calib)[node.inputs[0].name]
        w = node.inputs[1].const_value.numpy().astype(np.float64)
        for grid in (Grid(32, False), Grid(128, True)):
            e_rtn = layer_error(w, rtn(w, grid).dequantized(), h)
            e_gptq = layer_error(w, gptq(w, h, grid).dequantized(), h)
            (awq,), s = quantize_group([w], h, mean_abs, grid)
            e_awq = layer_error(w, awq.dequantized() / s[:, None], h)
            assert e_gptq < e_rtn and e_awq < e_rtn, (name, grid, e_rtn, e_gptq, e_awq)


@pytest.mark.parametrize("target, block", (("x86-cpu-vnni", 32), ("jetson-agx-thor", 128)))
def test_decoder_int4_default_within_25_percent_and_far_closer_than_rtn(target, block):
    # the default algorithm (AWQ scaling + GPTQ rounding) against round-to-nearest, both encodings
    base, calib, evaluation, ppl_float = _decoder()
    trt = load_target(target).is_tensorrt
    ppl = {}
    for algorithm in ("rtn", None):
        model = copy_model(base)
        options = {"algorithm": algorithm} if algorithm else {}
        result = quantize(model, calib, target=target, weights="int4", block_size=block, **options)
        check(model)
        assert not check_qdq(model, load_target(target)) and len(result.quantized) == (15 if trt else 16)
        ppl[algorithm] = dec.lm_stats(runtime.session(model, optimize=not trt), evaluation)[0]
    ops = {n.op_type for n in model.graph}
    if trt:
        assert "MatMulNBits" not in ops and model.opset_imports[""] == 21
        dq = [n for n in model.graph if n.op_type == "DequantizeLinear"]
        assert len(dq) == 15 and all(n.inputs[0].dtype == ir.DataType.INT4 and len(n.inputs) == 2 for n in dq)
    else:  # ONNX Runtime also takes the embedding in 4 bits
        assert "MatMulNBits" in ops and "GatherBlockQuantized" in ops and model.opset_imports[""] == 17
    assert ppl[None] <= 1.25 * ppl_float
    assert ppl[None] - ppl_float < (ppl["rtn"] - ppl_float) / 3, (ppl, ppl_float)


@pytest.mark.slow
def test_mixed_int4_int8_keeps_sensitive_layers_at_8_bits_until_the_budget_holds():
    base, calib, _, _ = _decoder()
    model = copy_model(base)
    few = [{"input_ids": calib[0]["input_ids"][:6]}]  # 6 windows of 64 tokens: enough to rank 15 layers
    result = quantize(model, few, target="x86-cpu-vnni", weights="int4", algorithm="rtn", max_error=20.0)
    bits = {r["node"]: r["bits"] for r in result.sensitivity}
    assert 0 < sum(b == 8 for b in bits.values()) < len(bits)
    assert result.output_sqnr_db >= 20.0
    eight = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert len(eight) == sum(b == 8 for b in bits.values())
    # the layers kept at 8 bits are the least robust ones alone
    ranked = [r["node"] for r in result.sensitivity]
    assert {r for r, b in bits.items() if b == 8} == set(ranked[:len(eight)])


def test_targets_refuse_what_their_runtime_cannot_take(tmp_path):
    w = np.random.default_rng(0).standard_normal((128, 8)).astype(np.float32)
    thor, nano = load_target("jetson-agx-thor"), load_target("jetson-orin-nano")
    # block 32 (ONNX Runtime's default) as blocked DQ: legal for ORT, not for TensorRT
    model = _matmul(w, 21)
    encodings.dequantize_blocked(model.graph, next(iter(model.graph)), rtn(w, Grid(32, True)))
    assert any("block_size 32" in p for p in check_qdq(model, thor))
    assert not check_qdq(model, load_target("x86-cpu"))
    # the same model for Orin Nano (TensorRT 10.3): the parser reads opsets up to 20
    assert any("opset 21" in p or "reads opsets up to 20" in p for p in check_qdq(model, nano))
    nbits = _matmul(w, 17)
    encodings.matmulnbits(nbits.graph, next(iter(nbits.graph)), rtn(w, Grid(64, True)))
    assert any("MatMulNBits is an ONNX Runtime op" in p for p in check_qdq(nbits, thor))
    with pytest.raises(EdgepackError, match="block size 32 is not legal"):
        quantize(_matmul(w, 17), None, target=thor, weights="int4", algorithm="rtn", block_size=32)
    with pytest.raises(EdgepackError, match="reads opsets up to 20"):
        quantize(_matmul(w, 17), None, target=nano, weights="int4", algorithm="rtn")
    with pytest.raises(EdgepackError, match=r"no FP8 \(compute capability 8.7") as err:
        quantize(_matmul(w, 17), [{"x": w[:8]}], target=nano, weights="fp8")
    assert "\n" not in str(err.value)


def test_tensorrt_writer_stays_inside_the_parser_window():
    # onnx writes opset 26+ by default; TensorRT 11.4's parser reads up to 24
    w = np.random.default_rng(1).standard_normal((64, 8)).astype(np.float32)
    model = _matmul(w, 25)
    x = np.random.default_rng(2).standard_normal((16, 64)).astype(np.float32)
    quantize(model, [{"x": x}], target="jetson-agx-thor", method="minmax")
    assert model.opset_imports[""] <= load_target("jetson-agx-thor").onnx_opset_max
    assert any("reads opsets up to 24" in p for p in check_qdq(_matmul(w, 25), load_target("jetson-agx-thor")))


def test_fp8_decoder_for_thor_passes_the_rules_and_keeps_perplexity():
    base, calib, evaluation, ppl_float = _decoder()
    model = copy_model(base)
    result = quantize(model, calib, target="jetson-agx-thor", weights="fp8", method="minmax")
    check(model)
    assert not check_qdq(model, load_target("jetson-agx-thor")) and result.quantized
    assert 19 <= model.opset_imports[""] <= 24
    fp8 = [n for n in model.graph if n.op_type == "DequantizeLinear"]
    assert fp8 and all(n.inputs[2].dtype == ir.DataType.FLOAT8E4M3FN for n in fp8)
    ppl = dec.lm_stats(runtime.session(model, optimize=False), evaluation)[0]
    assert ppl <= 1.10 * ppl_float, (ppl, ppl_float)
    assert any("no FP8" in p for p in check_qdq(model, load_target("jetson-agx-orin-jp7")))


def test_gemm_layers_become_int4_matmuls_with_their_bias():
    #   x [M, 64] ─► Gemm(W [8, 64], b [8], transB=1) ─► y [M, 8]
    rng = np.random.default_rng(3)
    w = rng.standard_normal((8, 64)).astype(np.float32)
    b = rng.standard_normal(8).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "w", "b"], ["y"], name="/fc/Gemm", transB=1)], "gemm",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["m", 64])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["m", 8])],
        [onnx.numpy_helper.from_array(w, "w"), onnx.numpy_helper.from_array(b, "b")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    proto.ir_version = 10
    model = ir.serde.deserialize_model(proto)
    quantize(model, None, target="x86-cpu-vnni", weights="int4", algorithm="rtn", block_size=32)
    check(model)
    assert [n.op_type for n in model.graph] == ["MatMulNBits", "Add"]
    x = rng.standard_normal((4, 64)).astype(np.float32)
    expected = x @ _reference_weights(rtn(w.T, Grid(32, False))) + b
    got = runtime.session(model).run(None, {"x": x})[0]
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("symmetric", (True, False))
def test_gather_block_quantized_reads_the_embedding_bit_exactly(symmetric):
    #   ids [M] ─► Gather(E [50, 40], axis 0) ─► rows [M, 40]   (D = 40: the last block is padded)
    rng = np.random.default_rng(4)
    table = rng.standard_normal((50, 40)).astype(np.float32)
    graph = helper.make_graph(
        [helper.make_node("Gather", ["e", "ids"], ["rows"], name="/embed/Gather", axis=0)], "emb",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, ["m"])],
        [helper.make_tensor_value_info("rows", TensorProto.FLOAT, ["m", 40])],
        [onnx.numpy_helper.from_array(table, "e")])
    proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 21), helper.make_opsetid("com.microsoft", 1)])
    proto.ir_version = 10
    model = ir.serde.deserialize_model(proto)
    q = rtn(table.T, Grid(16, symmetric))
    encodings.gather_block_quantized(model.graph, next(iter(model.graph)), q)
    ids = np.arange(50, dtype=np.int64)[::-1].copy()
    got = runtime.session(model, optimize=False).run(None, {"ids": ids})[0]
    np.testing.assert_array_equal(got, _reference_weights(q).T[ids])
