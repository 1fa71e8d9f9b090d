"""Float16 weights and compute, with numerically fragile ops kept in float32 behind Casts."""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack import io
from edgepack.graph import const_array, copy_model

logger = logging.getLogger(__name__)

FP16_MAX = float(np.finfo(np.float16).max)
# Ops whose float32 accumulation or range matters (sums over many elements, exponentials),
# or whose inputs must stay float32 (Resize scales), or that generate values.
DEFAULT_BLOCK = ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2", "ReduceLogSum",
                 "ReduceLogSumExp", "ReduceProd", "LayerNormalization", "GroupNormalization",
                 "InstanceNormalization", "Softmax", "LogSoftmax", "Exp", "Log", "Pow", "Range",
                 "Resize", "Upsample", "RandomNormal", "RandomUniform", "RandomNormalLike",
                 "RandomUniformLike", "CumSum", "TopK", "NonMaxSuppression", "RoiAlign")
_MARK = "edgepack.fp16"
F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16


class ConvertToFloat16Pass(ir.passes.InPlacePass):
    """Runs every float op in float16 except the blocked ones.

    A node runs in float16 unless its op is in `block`, it is not in the default domain, it holds
    subgraphs, or it reads a constant with values beyond the float16 range (|x| > 65504).
    float32 constants read only by float16 nodes become float16; a float32 value read by a float16
    node passes through a Cast to float16, and a float16 value read by a float32 node (or a graph
    output, with `keep_io_float`) passes through a Cast to float32. With `keep_io_float=False`
    float inputs and outputs of the graph become float16 too. The Casts it adds are marked, so a
    second run changes nothing.
    """

    def __init__(self, *, keep_io_float: bool = True, block=DEFAULT_BLOCK):
        super().__init__()
        self.keep_io_float, self.block = keep_io_float, frozenset(block)
        self.converted: list[str] = []
        self.kept_float: list[str] = []

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        io.infer_shapes(model)
        graph = model.graph
        self.converted, self.kept_float = [], []
        half: set[int] = set()
        for node in graph:
            if not _has_float(node) or _MARK in node.metadata_props:
                continue
            if self._stays_float(node):
                self.kept_float.append(node.name or node.op_type)
            else:
                half.add(id(node))
                self.converted.append(node.name or node.op_type)
        if not half and (self.keep_io_float or not _float_io(graph)):
            return ir.passes.PassResult(model, modified=False)
        if not self.keep_io_float:
            for value in graph.inputs:
                if value.dtype == F32 and not value.is_initializer():
                    value.dtype = F16
        to_half: dict[int, ir.Value] = {}
        to_float: dict[int, ir.Value] = {}
        for node in list(graph):
            if _MARK in node.metadata_props:
                continue
            for index, value in enumerate(node.inputs):
                if value is None:
                    continue
                if id(node) in half and value.dtype == F32:
                    node.replace_input_with(index, self._half_input(graph, value, node, to_half))
                elif id(node) not in half and value.dtype == F16 and _produced_half(value, half):
                    node.replace_input_with(index, _cast(graph, value, F32, to_float, before=node))
            if id(node) in half:
                _to_half_node(node)
        for i, value in enumerate(list(graph.outputs)):
            if self.keep_io_float and value.dtype == F16 and _produced_half(value, half):
                cast = _cast(graph, value, F32, to_float, before=None)
            elif not self.keep_io_float and value.dtype == F32 and not _produced_half(value, half):
                cast = _cast(graph, value, F16, to_half, before=None)
            else:
                continue
            name = value.name
            value.name, cast.name = f"{name}/{'fp16' if cast.dtype == F32 else 'fp32'}", name
            graph.outputs[i] = cast
        logger.info("float16: %d nodes converted, %d kept in float32", len(self.converted),
                    len(self.kept_float))
        return ir.passes.PassResult(model, modified=True)

    def _stays_float(self, node: ir.Node) -> bool:
        if node.op_type in self.block or node.domain not in ("", "ai.onnx"):
            return True
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for attr in node.attributes.values()):
            return True
        for value in node.inputs:
            array = const_array(value)
            if array is not None and array.dtype == np.float32 and array.size and \
                    np.abs(array).max() > FP16_MAX:
                return True
        if node.op_type == "Constant":
            array = const_array(node.outputs[0])
            return array is not None and array.size > 0 and np.abs(array.astype(np.float64)).max() > FP16_MAX
        return False

    def _half_input(self, graph, value, node, cache) -> ir.Value:
        """A float16 version of `value`: the constant converted in place when only float16 nodes
        read it, else a Cast."""
        if value.is_initializer() and value.const_value is not None:
            if all(not _reads_as_float32(u) for u, _ in value.uses()) and value not in graph.outputs:
                array = value.const_value.numpy().astype(np.float16)
                value.const_value = ir.tensor(array, name=value.name)
                value.dtype = F16
                return value
        return _cast(graph, value, F16, cache, before=node)


def _reads_as_float32(node: ir.Node) -> bool:
    return node.op_type in DEFAULT_BLOCK or _MARK in node.metadata_props


def _has_float(node: ir.Node) -> bool:
    return any(v is not None and v.dtype == F32 for v in (*node.inputs, *node.outputs))


def _float_io(graph: ir.Graph) -> bool:
    return any(v.dtype == F32 for v in (*graph.inputs, *graph.outputs) if not v.is_initializer())


def _produced_half(value: ir.Value, half: set[int]) -> bool:
    producer = value.producer()
    return producer is None or id(producer) in half or _MARK in producer.metadata_props


def _to_half_node(node: ir.Node) -> None:
    for value in node.outputs:
        if value.dtype == F32:
            value.dtype = F16
    if node.op_type == "Cast" and node.attributes["to"].value == F32:
        node.attributes["to"] = ir.AttrInt64("to", F16)
    if node.op_type == "Constant" and "value" in node.attributes:
        tensor = node.attributes["value"].as_tensor()
        if tensor.dtype == F32:
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(tensor.numpy().astype(np.float16)))
    if node.op_type in ("ConstantOfShape",) and "value" in node.attributes:
        tensor = node.attributes["value"].as_tensor()
        if tensor.dtype == F32:
            node.attributes["value"] = ir.AttrTensor("value", ir.tensor(tensor.numpy().astype(np.float16)))


def _cast(graph: ir.Graph, value: ir.Value, to: ir.DataType, cache: dict, before) -> ir.Value:
    if id(value) in cache:
        return cache[id(value)]
    suffix = "fp16" if to == F16 else "fp32"
    cast = ir.node("Cast", [value], attributes={"to": to}, name=f"{value.name}/cast_{suffix}",
                   metadata_props={_MARK: "cast"})
    out = cast.outputs[0]
    out.name, out.dtype, out.shape = f"{value.name}/{suffix}", to, value.shape
    producer = value.producer()
    if producer is not None and producer.graph is graph:
        graph.insert_after(producer, cast)
    elif before is not None:
        graph.insert_before(before, cast)
    else:
        graph.append(cast)
    cache[id(value)] = out
    return out


def to_fp16(model: ir.Model, *, keep_io_float: bool = True, block=DEFAULT_BLOCK, data=None) -> tuple[ir.Model, dict]:
    """A float16 copy of `model` and its report (converted / kept nodes, cost and saving)."""
    from edgepack import cost

    converted = copy_model(model)
    fp16_pass = ConvertToFloat16Pass(keep_io_float=keep_io_float, block=block)
    fp16_pass(converted)
    report = {"keep_io_float": keep_io_float, "blocked_ops": sorted(fp16_pass.block),
              "converted_nodes": len(fp16_pass.converted), "float32_nodes": fp16_pass.kept_float,
              **cost.cost_report(model, converted, data)}
    return converted, report
