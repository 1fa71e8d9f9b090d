"""Graph preparation before Q/DQ insertion: shapes the graph into the patterns runtimes fuse."""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack.graph import const_array
from edgepack.passes.rewrite import new_initializer, remove_unused_initializers, take_over_output

logger = logging.getLogger(__name__)


def prepare(model: ir.Model) -> bool:
    """The rewrites every quantizer run does first (semantics preserved); True if any changed.

    Weights computed from constants (CNTK's Reshape of a parameter) become initializers, so they
    are quantized per channel as weights, not per tensor as activations; BatchNorm folds into the
    weights before they are quantized; bias Adds fold into Convs.
    """
    from edgepack.passes.fold_batchnorm import FoldBatchNormPass
    from edgepack.passes.simplify import FoldConstantsPass

    passes = ir.passes.PassManager([FoldConstantsPass(), FoldBatchNormPass(), FoldConvBiasAddPass(),
                                    FoldMatMulBiasIntoGemmPass()])
    return passes(model).modified


class FoldConvBiasAddPass(ir.passes.InPlacePass):
    """Folds a per-channel constant Add after a Conv into the Conv's bias.

    Conv(x, W, b) -> y ; Add(y, C) with C constant, 1 everywhere but the channel axis (size M or 1):
        -> Conv(x, W, b + C.reshape(-1))   (b = 0 when absent)
    Exporters such as CNTK write the bias as a separate Add. Left apart, it sits between the Conv
    and the next QuantizeLinear, so ONNX Runtime cannot fuse DQ -> Conv -> Q into QLinearConv.
    Only a Conv whose output feeds just this Add (and is no graph output) is changed.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        folded = 0
        for add in list(graph):
            if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
                continue
            for side in (0, 1):
                conv, const = add.inputs[side].producer(), const_array(add.inputs[1 - side])
                if conv is None or conv.op_type != "Conv" or const is None or not self._foldable(conv, const):
                    continue
                w = const_array(conv.inputs[1])
                bias_in = conv.inputs[2] if len(conv.inputs) > 2 else None
                bias = const_array(bias_in) if bias_in is not None else np.zeros(w.shape[0], w.dtype)
                if bias is None:
                    continue
                new_bias = (bias + np.broadcast_to(const.reshape(-1), bias.shape)).astype(w.dtype)
                value = new_initializer(graph, new_bias, f"{conv.name or 'conv'}_bias")
                if len(conv.inputs) < 3:
                    conv.resize_inputs(3)
                conv.replace_input_with(2, value)
                out = conv.outputs[0]
                if out.dtype is None and add.outputs[0].dtype is not None:  # it may become a graph output
                    out.dtype, out.shape = add.outputs[0].dtype, add.outputs[0].shape
                name = add.outputs[0].name
                take_over_output(add.outputs[0], out)
                graph.remove(add, safe=True)
                if out.name != name:  # the Conv now computes what the Add did: same name, same range
                    add.outputs[0].name, out.name = f"{name}__folded", name
                folded += 1
                break
        if folded:
            remove_unused_initializers(graph)
            logger.info("folded %d bias Adds into Convs", folded)
        return ir.passes.PassResult(model, modified=folded > 0)

    @staticmethod
    def _foldable(conv: ir.Node, const: np.ndarray) -> bool:
        out = conv.outputs[0]
        w = const_array(conv.inputs[1]) if len(conv.inputs) > 1 else None
        if w is None or out.is_graph_output() or len(out.uses()) != 1 or const.dtype != w.dtype:
            return False
        rank = w.ndim  # the Conv output has the weight's rank: [N, M, spatial...]
        if const.ndim > rank:
            return False
        shape = (1,) * (rank - const.ndim) + const.shape
        return all(d == 1 for i, d in enumerate(shape) if i != 1) and shape[1] in (1, w.shape[0])


class FoldMatMulBiasIntoGemmPass(ir.passes.InPlacePass):
    """MatMul(x[N, K], W[K, M]) -> Add(·, b[M]) with W and b constant -> Gemm(x, W, b).

    Left apart, ONNX Runtime fuses the pair into a float Gemm before its QDQ fusions look at it,
    and the Gemm then dequantizes its weight at every inference; as one Gemm with an int32 bias
    it runs as QGemm. Only 2-D MatMuls whose output feeds just this Add (and is no graph output).
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        graph = model.graph
        folded = 0
        for add in list(graph):
            if add.op_type != "Add" or add.domain != "" or len(add.inputs) != 2:
                continue
            for side in (0, 1):
                matmul, bias = add.inputs[side].producer(), const_array(add.inputs[1 - side])
                if matmul is None or matmul.op_type != "MatMul" or matmul.domain != "" or bias is None:
                    continue
                w = const_array(matmul.inputs[1])
                x, out = matmul.inputs[0], matmul.outputs[0]
                if (w is None or w.ndim != 2 or x is None or x.shape is None or len(x.shape) != 2
                        or out.is_graph_output() or len(out.uses()) != 1 or bias.dtype != w.dtype
                        or bias.size != w.shape[1] or bias.ndim > 2 or (bias.ndim == 2 and bias.shape[0] != 1)):
                    continue
                b = new_initializer(graph, bias.reshape(-1), f"{matmul.name or 'matmul'}_bias")
                gemm = ir.node("Gemm", [x, matmul.inputs[1], b], name=matmul.name or None)
                graph.insert_before(matmul, gemm)
                result = gemm.outputs[0]
                result.dtype, result.shape = add.outputs[0].dtype, add.outputs[0].shape
                name = add.outputs[0].name
                take_over_output(add.outputs[0], result)
                graph.remove([add, matmul], safe=True)
                if result.name != name:
                    add.outputs[0].name, result.name = f"{name}__folded", name
                folded += 1
                break
        if folded:
            remove_unused_initializers(graph)
            logger.info("folded %d MatMul + bias Adds into Gemms", folded)
        return ir.passes.PassResult(model, modified=folded > 0)
