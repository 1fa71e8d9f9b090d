"""Simplification: onnxsim where it works, and our own no-op removal and constant folding."""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack import io
from edgepack.errors import first_line
from edgepack.graph import attr_int, const_array, static_shape
from edgepack.passes.rewrite import new_initializer, remove_unused_initializers, take_over_output

logger = logging.getLogger(__name__)

# onnxsim works on a protobuf holding every weight and copies it several times (measured: peak
# memory ~8x the weights): above this size our own passes do the job in about one copy.
ONNXSIM_MAX_BYTES = 64 << 20
_FOLD_MAX_ELEMENTS = 1 << 20


def dropout_is_identity(node: ir.Node) -> bool:
    """Inference Dropout: mask unused and training_mode absent or constant false."""
    if len(node.outputs) > 1 and node.outputs[1].uses():
        return False
    if len(node.inputs) > 2 and node.inputs[2] is not None:
        training = const_array(node.inputs[2])
        return training is not None and not training.any()
    return True


class OnnxSimplifyPass(ir.passes.InPlacePass):
    """onnxsim: constant folding, shape simplification and its own fusions, checked by onnxsim.

    onnxsim fails on some models (custom ops, unusual shapes) and cannot take models over 2 GB:
    then this pass warns and leaves the model as it is, and our own passes carry on. Its result is
    also refused when it is no longer portable ONNX: onnxsim fuses some patterns into ONNX Runtime
    contrib ops (com.microsoft::Attention, which TensorRT cannot run) and rewrites 3-D
    MatMul+Add into Reshape-Gemm-Reshape; it then runs again with constant folding only.
    Models with external data are left to our passes: onnxsim would need every weight copied
    into one protobuf. The simplified graph replaces the model's graph (the pass is in place).
    """

    # MatMul+Add on 3-D inputs -> Shape/Slice/Concat/Reshape around a Gemm: more nodes, and the
    # hidden units of a transformer FFN can no longer be followed by FoldPrunedWeightsPass.
    SKIPPED = ("fuse_matmul_add_bias_into_gemm_batched",)

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        if io.weights_nbytes(model) > ONNXSIM_MAX_BYTES:
            logger.info("onnxsim skipped: weights over %d MiB; using edgepack's own passes",
                           ONNXSIM_MAX_BYTES >> 20)
            return ir.passes.PassResult(model, modified=False)
        if io.has_external_data(model):  # onnxsim would read it relative to the working folder
            logger.info("onnxsim skipped: the model keeps its weights in external data; "
                           "using edgepack's own passes")
            return ir.passes.PassResult(model, modified=False)
        proto = ir.serde.serialize_model(model)
        before = proto.SerializeToString()
        simplified = self._simplify(proto, skipped_optimizers=list(self.SKIPPED))
        problem = simplified is not None and _not_portable(proto, simplified)
        if problem:
            logger.info("onnxsim result refused (%s); retrying with constant folding only", problem)
            simplified = self._simplify(proto, perform_optimization=False)
            problem = simplified is not None and _not_portable(proto, simplified)
            if problem:
                _warn_once("onnxsim result refused (%s); using edgepack's own passes", problem)
                simplified = None
        if simplified is None or simplified.SerializeToString() == before:
            return ir.passes.PassResult(model, modified=False)
        result = ir.serde.deserialize_model(simplified)
        model.graph = result.graph  # the opset imports live on the graph
        model.functions.clear()
        model.functions.update(result.functions)
        return ir.passes.PassResult(model, modified=True)

    @staticmethod
    def _simplify(proto, **options):
        import onnxsim

        try:
            simplified, ok = onnxsim.simplify(proto, **options)
        except Exception as exc:  # onnxsim raises many types; any failure means "not this time"
            _warn_once("onnxsim failed (%s: %s); using edgepack's own passes",
                           type(exc).__name__, first_line(exc))
            return None
        if not ok:
            _warn_once("onnxsim could not verify its result; using edgepack's own passes")
            return None
        return simplified


_warned: set[str] = set()


def _warn_once(message: str, *args) -> None:
    """onnxsim's failures are warned about once per process (then logged at INFO): a loop that
    optimizes many models, as pruning does, would otherwise repeat the same line."""
    if message in _warned:
        logger.info(message, *args)
    else:
        _warned.add(message)
        logger.warning(message, *args)


def _not_portable(before, after) -> str:
    """Why onnxsim's `after` may not replace `before` ('' if it may): new op domains, another
    opset, or a changed model interface (names, types, dynamic dims)."""
    def domains(proto):
        return {n.domain for n in proto.graph.node} - {"", "ai.onnx"}

    new = domains(after) - domains(before)
    if new:
        return "it adds ops from " + ", ".join(sorted(new))
    opset = {o.domain or "ai.onnx": o.version for o in before.opset_import}
    if any(opset.get(o.domain or "ai.onnx", o.version) != o.version for o in after.opset_import):
        return "it changes the opset"
    for kind in ("input", "output"):
        old = [(v.name, v.type.SerializeToString()) for v in getattr(before.graph, kind)
               if v.name not in {i.name for i in before.graph.initializer}]
        if old != [(v.name, v.type.SerializeToString()) for v in getattr(after.graph, kind)][:len(old)] \
                or len(getattr(after.graph, kind)) != len(old):
            return f"it changes the graph {kind}s"
    return ""


class RemoveNoOpsPass(ir.passes.InPlacePass):
    """Removes nodes that pass their input through unchanged.

    Identity; Dropout at inference (mask unused); Cast to the type it already has; Reshape to the
    shape it already has; Transpose pairs whose permutations compose to the identity.
    """

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        io.infer_shapes(model)
        removed = 0
        for node in list(model.graph):
            source = self._passthrough(node)
            if source is None or (source.is_graph_input() and node.outputs[0].is_graph_output()):
                continue
            out = node.outputs[0]
            if out.is_graph_output() and source.is_graph_output():
                continue  # two outputs would become one value
            if out.is_graph_output() and (source.producer() is None or len(source.uses()) > 1):
                continue  # keep the output's name without renaming a shared or input value
            take_over_output(out, source)
            model.graph.remove(node, safe=True)
            removed += 1
        removed_transposes = self._remove_transpose_pairs(model.graph)
        if removed or removed_transposes:
            ir.passes.common.RemoveUnusedNodesPass()(model)
            logger.info("removed %d no-op nodes", removed + removed_transposes)
        return ir.passes.PassResult(model, modified=bool(removed or removed_transposes))

    @staticmethod
    def _passthrough(node: ir.Node) -> ir.Value | None:
        if node.domain != "" or not node.inputs or node.inputs[0] is None:
            return None
        x, op = node.inputs[0], node.op_type
        if op == "Identity":
            return x
        if op == "Dropout":
            return x if dropout_is_identity(node) else None
        if op == "Cast" and x.dtype is not None and x.dtype.value == node.attributes["to"].value:
            return x
        if op == "Reshape":
            a, b = static_shape(x), static_shape(node.outputs[0])
            if a is not None and a == b and all(isinstance(d, int) for d in a):
                return x
        return None

    @staticmethod
    def _remove_transpose_pairs(graph: ir.Graph) -> int:
        removed = 0
        for node in list(graph):
            first = node.inputs[0].producer() if node.op_type == "Transpose" and node.inputs else None
            if first is None or first.op_type != "Transpose" or "perm" not in node.attributes \
                    or "perm" not in first.attributes:
                continue
            p1, p2 = list(first.attributes["perm"].value), list(node.attributes["perm"].value)
            if [p1[i] for i in p2] != list(range(len(p1))) or node.outputs[0].is_graph_output():
                continue
            node.outputs[0].replace_all_uses_with(first.inputs[0])
            graph.remove(node, safe=True)
            removed += 1
        return removed


class FoldConstantsPass(ir.passes.InPlacePass):
    """Evaluates nodes whose inputs are all constant (onnx's reference evaluator) into initializers.

    Our own folding for when onnxsim cannot run. Outputs over 1M elements are left as nodes so
    folding never inflates the model; random ops and control flow are never folded, nor ops whose
    result is not a tensor (an initializer holds only tensors).
    """

    SKIP = {"RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike", "Multinomial",
            "Bernoulli", "If", "Loop", "Scan", "QuantizeLinear", "DequantizeLinear"}

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        from onnx.reference import ReferenceEvaluator

        io.infer_shapes(model)  # Shape of a tensor whose shape is static folds too
        folded = 0
        for node in list(model.graph):
            if node.domain != "" or node.op_type in self.SKIP or any(o.is_graph_output() for o in node.outputs):
                continue
            if node.op_type == "Shape":
                if self._fold_shape(model.graph, node):
                    folded += 1
                continue
            inputs = [const_array(v) if v is not None else None for v in node.inputs]
            if any(v is not None and a is None for v, a in zip(node.inputs, inputs)):
                continue
            if node.op_type == "Constant" or sum(a.size for a in inputs if a is not None) > _FOLD_MAX_ELEMENTS:
                continue
            try:
                proto = ir.serde.serialize_node(node)
                evaluator = ReferenceEvaluator(proto)
                feeds = {name: a for name, a in zip(proto.input, inputs) if name}
                results = evaluator.run(None, feeds)
            except Exception:  # an op the reference evaluator lacks: leave it
                continue
            if not all(isinstance(r, np.ndarray) for r in results):
                continue  # a sequence, an optional or a map (SequenceEmpty): no initializer holds one
            if any(np.asarray(r).size > _FOLD_MAX_ELEMENTS for r in results):
                continue
            for out, array in zip(node.outputs, results):
                value = new_initializer(model.graph, np.asarray(array), out.name or "folded")
                take_over_output(out, value)
            model.graph.remove(node, safe=True)
            folded += 1
        if folded:
            ir.passes.common.RemoveUnusedNodesPass()(model)
            remove_unused_initializers(model.graph)
            logger.info("folded %d constant nodes", folded)
        return ir.passes.PassResult(model, modified=folded > 0)

    @staticmethod
    def _fold_shape(graph: ir.Graph, node: ir.Node) -> bool:
        """Shape(x)[start:end] is a constant when those dims of x are static."""
        dims = static_shape(node.inputs[0])
        if dims is None:
            return False
        start, end = attr_int(node, "start", 0), node.attributes.get("end")
        dims = dims[start:] if end is None else dims[start:int(end.value)]
        if not all(isinstance(d, int) for d in dims):
            return False
        take_over_output(node.outputs[0], new_initializer(graph, np.array(dims, np.int64), node.outputs[0].name or "shape"))
        graph.remove(node, safe=True)
        return True
