"""The two legal INT4 encodings of one Quantized weight, and INT8 weight-only for mixed models.

TensorRT (and any ONNX runtime, opset >= 21): blocked DequantizeLinear feeding the MatMul

    W_q int4 [K, N] (two codes per byte, first in the low nibble) ─► DequantizeLinear(axis=0,
    scale [ceil(K/B), N]  (zero point omitted = 0)                     block_size=B) ─► MatMul(x, ·)

ONNX Runtime: com.microsoft.MatMulNBits(A, B, scales[, zero_points]) with K, N, bits=4,
block_size=B; B is uint8 [N, n_blocks, B/2]: column n's block b holds codes q(k) for
k = bB .. bB+B-1, code 2j in the low nibble of byte j and 2j+1 in the high nibble, stored
unsigned (symmetric codes + 8, the default zero point when none is given); scales are
[N, n_blocks]; zero points (asymmetric) uint8 [N, ceil(n_blocks/2)], block 2i in the low nibble.
K is padded to a whole number of blocks (padding codes dequantize to 0).

INT8 weight-only (the layers mixed precision keeps at 8 bits): DequantizeLinear(int8 [K, N],
per output channel, axis=1, zero point 0) ─► MatMul; ONNX Runtime also as MatMulNBits bits=8.
"""
from __future__ import annotations

import ml_dtypes
import numpy as np
import onnx_ir as ir

from edgepack.graph import const_array
from edgepack.passes.rewrite import new_initializer
from edgepack.quant.int4.grid import Quantized, unblocks

ENCODINGS = ("dequantize", "matmulnbits")
MS_DOMAIN = "com.microsoft"
DQ_BLOCK_OPSET = 21  # DequantizeLinear's block_size and the int4/uint4 types


def _insert_dq(graph: ir.Graph, node: ir.Node, inputs: list[ir.Value], attrs: dict, name: str,
               shape: ir.Shape) -> None:
    dq = ir.node("DequantizeLinear", inputs, attrs, name=f"{name}_DequantizeLinear")
    dq.outputs[0].name = f"{name}_dequantized"
    dq.outputs[0].shape, dq.outputs[0].dtype = shape, ir.DataType.FLOAT
    graph.insert_before(node, dq)
    node.replace_input_with(1, dq.outputs[0])


def dequantize_blocked(graph: ir.Graph, node: ir.Node, quantized: Quantized) -> None:
    """MatMul(x, W) -> MatMul(x, DequantizeLinear(W_q, scale[, zero], axis=0, block_size=B))."""
    name = node.inputs[1].name
    q = unblocks(quantized.q, quantized.k)
    if quantized.grid.symmetric:
        codes = new_initializer(graph, q.astype(ml_dtypes.int4), f"{name}_int4")
        inputs = [codes, new_initializer(graph, quantized.scale.astype(np.float32), f"{name}_scale")]
    else:
        codes = new_initializer(graph, q.astype(ml_dtypes.uint4), f"{name}_uint4")
        inputs = [codes, new_initializer(graph, quantized.scale.astype(np.float32), f"{name}_scale"),
                  new_initializer(graph, quantized.zero.astype(ml_dtypes.uint4), f"{name}_zero_point")]
    _insert_dq(graph, node, inputs, {"axis": 0, "block_size": quantized.grid.block}, name, node.inputs[1].shape)


def pack_nibbles(values: np.ndarray) -> np.ndarray:
    """uint8 codes 0..15 [..., 2m] -> bytes [..., m]: element 2j low nibble, 2j+1 high."""
    v = values.astype(np.uint8)
    if v.shape[-1] % 2:
        v = np.concatenate([v, np.zeros(v.shape[:-1] + (1,), np.uint8)], axis=-1)
    return (v[..., 0::2] & 0x0F) | ((v[..., 1::2] & 0x0F) << 4)


def unpack_nibbles(packed: np.ndarray, count: int) -> np.ndarray:
    out = np.stack([packed & 0x0F, packed >> 4], axis=-1).reshape(packed.shape[:-1] + (-1,))
    return out[..., :count]


def matmulnbits_inputs(quantized: Quantized) -> dict[str, np.ndarray]:
    """B, scales and (asymmetric) zero_points exactly as MatMulNBits reads them."""
    q = quantized.q                                   # [n_blocks, B, N]
    unsigned = q + 8 if quantized.grid.symmetric else q
    b = pack_nibbles(np.transpose(unsigned, (2, 0, 1)))  # [N, n_blocks, B/2]
    out = {"B": b, "scales": np.ascontiguousarray(quantized.scale.T.astype(np.float32))}
    if not quantized.grid.symmetric:
        out["zero_points"] = pack_nibbles(quantized.zero.T)  # [N, ceil(n_blocks/2)]
    return out


def matmulnbits(graph: ir.Graph, node: ir.Node, quantized: Quantized) -> ir.Node:
    """MatMul(x, W) -> com.microsoft.MatMulNBits(x, B, scales[, zero_points])."""
    name = node.inputs[1].name
    arrays = matmulnbits_inputs(quantized)
    inputs = [node.inputs[0]] + [new_initializer(graph, a, f"{name}_{key}") for key, a in arrays.items()]
    n = quantized.q.shape[2]
    new = ir.node("MatMulNBits", inputs, {"K": quantized.k, "N": n, "bits": 4, "block_size": quantized.grid.block},
                  domain=MS_DOMAIN, name=f"{node.name or name}_MatMulNBits")
    graph.insert_before(node, new)
    _take_over(graph, node, new)
    return new


def int8_weight_only(graph: ir.Graph, node: ir.Node) -> np.ndarray:
    """MatMul(x, W) -> MatMul(x, DequantizeLinear(int8 W_q, scale[N], axis=1)); returns W~."""
    w = const_array(node.inputs[1]).astype(np.float64)
    scale = np.maximum(np.abs(w).max(axis=0), 1e-12) / 127.0
    q = np.clip(np.round(w / scale), -127, 127).astype(np.int8)
    name = node.inputs[1].name
    inputs = [new_initializer(graph, q, f"{name}_int8"),
              new_initializer(graph, scale.astype(np.float32), f"{name}_scale"),
              new_initializer(graph, np.zeros(scale.shape, np.int8), f"{name}_zero_point")]
    _insert_dq(graph, node, inputs, {"axis": 1}, name, node.inputs[1].shape)
    return q.astype(np.float64) * scale.astype(np.float32)


def _take_over(graph: ir.Graph, old: ir.Node, new: ir.Node) -> None:
    from edgepack.passes.rewrite import take_over_output

    out = old.outputs[0]
    new.outputs[0].dtype, new.outputs[0].shape = out.dtype, out.shape
    name, was_output = out.name, out.is_graph_output()
    take_over_output(out, new.outputs[0])
    graph.remove(old, safe=True)
    if not was_output:  # the MatMul's output name (and ranges, reports) carries over
        out.name = f"{name}__replaced"
        new.outputs[0].name = name


def gather_block_quantized(graph: ir.Graph, node: ir.Node, quantized: Quantized) -> ir.Node:
    """Gather(E [V, D], ids, axis=0) -> com.microsoft.GatherBlockQuantized(E_q int4/uint4 [V, D],
    ids, scales [V, ceil(D/B)][, zero_points], gather_axis=0, quantize_axis=1, block_size=B).
    `quantized` holds Eᵀ [D, V] blocked along D (the grid's axis 0), as ONNX Runtime's quantizer
    blocks an embedding along its last axis."""
    name = node.inputs[0].name
    q = unblocks(quantized.q, quantized.k).T
    dtype = ml_dtypes.int4 if quantized.grid.symmetric else ml_dtypes.uint4
    inputs = [new_initializer(graph, np.ascontiguousarray(q).astype(dtype), f"{name}_int4"), node.inputs[1],
              new_initializer(graph, np.ascontiguousarray(quantized.scale.T).astype(np.float32), f"{name}_scales")]
    if not quantized.grid.symmetric:
        inputs.append(new_initializer(graph, np.ascontiguousarray(quantized.zero.T).astype(dtype), f"{name}_zero_point"))
    new = ir.node("GatherBlockQuantized", inputs,
                  {"gather_axis": 0, "quantize_axis": 1, "block_size": quantized.grid.block},
                  domain=MS_DOMAIN, name=f"{node.name or name}_GatherBlockQuantized")
    graph.insert_before(node, new)
    _take_over(graph, node, new)
    return new
