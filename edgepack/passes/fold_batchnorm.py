"""FoldBatchNormPass: BatchNormalization into the Conv / ConvTranspose / Gemm / MatMul before it."""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack.graph import attr_float, attr_int, const_array, weight_input, weight_output_axis
from edgepack.passes.rewrite import remove_unused_initializers, set_input_constant, take_over_output

logger = logging.getLogger(__name__)


class FoldBatchNormPass(ir.passes.InPlacePass):
    """Folds an inference BatchNormalization into the weighted op that feeds it.

    With s = gamma / sqrt(var + eps):   BN(W x + b) = (s W) x + (s (b - mean) + beta)
    The weight is scaled along its output-channel axis and the bias replaced. MatMul has no bias
    input, so its BN becomes an Add of the folded bias. The op's output must feed only the BN,
    whose statistics, weight and bias must be constants; otherwise the BN stays.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        folded = 0
        for node in list(model.graph):
            if node.op_type == "BatchNormalization" and node.domain == "" and self._fold(model.graph, node):
                folded += 1
        if folded:
            remove_unused_initializers(model.graph)
            logger.info("folded %d BatchNormalization nodes", folded)
        return ir.passes.PassResult(model, modified=folded > 0)

    def _fold(self, graph: ir.Graph, bn: ir.Node) -> bool:
        x = bn.inputs[0]
        producer = x.producer()
        if producer is None or len(bn.outputs) > 1 and any(o.uses() for o in bn.outputs[1:]):
            return False
        if len(x.uses()) != 1 or x.is_graph_output():
            return False
        stats = [const_array(v) for v in bn.inputs[1:5]]
        weight_value = weight_input(producer)
        if any(s is None for s in stats) or weight_value is None or weight_value is not producer.inputs[1]:
            return False
        gamma, beta, mean, var = (s.astype(np.float64) for s in stats)
        eps = attr_float(bn, "epsilon", 1e-5)
        scale = gamma / np.sqrt(var + eps)
        w = const_array(weight_value)
        axis = weight_output_axis(producer, w.ndim)
        if not self._foldable(producer, x, w, axis, len(scale)):
            return False
        bias_value = producer.inputs[2] if len(producer.inputs) > 2 else None
        old_bias = np.zeros(len(scale)) if bias_value is None else const_array(bias_value)
        if old_bias is None or old_bias.size not in (1, len(scale)):
            return False
        gemm_beta = attr_float(producer, "beta", 1.0) if producer.op_type == "Gemm" else 1.0
        shape = [1] * w.ndim
        shape[axis] = len(scale)
        new_w = w * scale.astype(w.dtype).reshape(shape)  # in the weight's dtype: one copy of W
        del w  # a view of the old weight's mapping: the mapping is released when it is replaced
        old_bias = gemm_beta * np.broadcast_to(old_bias.reshape(-1), scale.shape)
        new_b = scale * (old_bias - mean) + beta
        set_input_constant(graph, producer, 1, new_w, f"{weight_value.name}_bnfolded")
        if producer.op_type == "MatMul":
            add = ir.node("Add", [x, None], name=f"{bn.name or x.name}_folded_bias")
            graph.insert_after(producer, add)
            set_input_constant(graph, add, 1, new_b.astype(new_w.dtype), f"{bn.name or x.name}_bias")
            out = add.outputs[0]
        else:
            if gemm_beta == 0:  # Gemm ignores C: make it count
                producer.attributes["beta"] = ir.AttrFloat32("beta", 1.0)
                gemm_beta = 1.0
            set_input_constant(graph, producer, 2, (new_b / gemm_beta).astype(new_w.dtype), f"{producer.name or x.name}_bias")
            out = x
        take_over_output(bn.outputs[0], out)
        graph.remove(bn, safe=True)
        return True

    @staticmethod
    def _foldable(producer: ir.Node, x: ir.Value, w: np.ndarray, axis: int, channels: int) -> bool:
        if w.shape[axis] != channels:
            return False
        op = producer.op_type
        if op == "ConvTranspose":
            return attr_int(producer, "group", 1) == 1
        if op == "MatMul":
            # BN normalizes axis 1; MatMul's features are its last axis: equal only for 2-D outputs.
            return w.ndim == 2 and x.shape is not None and len(x.shape) == 2
        return True
