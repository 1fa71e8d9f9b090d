"""Float16 weights and compute, with numerically fragile ops kept in float32 behind Casts.

This is what TensorRT 11 needs before a float16 build: it has no FP16 builder flag, every network
is strongly typed, so the ONNX model itself must carry float16 tensors. The rules follow NVIDIA
Model Optimizer's AutoCast (see docs/tensorrt.md): a node stays float32 when
  - its op is numerically fragile (BLOCK_REASONS: reductions, Softmax / normalization, Exp/Log/Pow,
    shape-like or generated values), or not a standard ONNX op, or holds a subgraph;
  - it reads a constant beyond the float16 range (|x| > 65504), AutoCast's init_max;
  - on the calibration data, one of its float inputs or outputs reaches |x| > data_max (65504 by
    default: the value would overflow to inf in float16; AutoCast's data_max, whose default is 512);
  - it is a QuantizeLinear/DequantizeLinear whose scale cannot be float16 (opset < 19, or a scale
    below float16's smallest normal number 6.1e-5).
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack import io
from edgepack.graph import const_array, copy_model

logger = logging.getLogger(__name__)

FP16_MAX = float(np.finfo(np.float16).max)
FP16_TINY = float(np.finfo(np.float16).tiny)  # smallest normal float16, 6.1e-5

_REDUCTION = "reduction: a sum over many values, float16 accumulation loses precision or overflows"
_NORM = "normalization / softmax: exponentials and variance sums need float32 accumulation"
_EXP = "exponential / logarithm / power: the output range leaves float16 quickly"
_SHAPE = "shape-like inputs (scales, sizes, ranges) must stay exact"
_GEN = "generates values (random, ranges, indices): kept as the model wrote it"
BLOCK_REASONS: dict[str, str] = {
    **{op: _REDUCTION for op in ("ReduceMean", "ReduceSum", "ReduceSumSquare", "ReduceL1", "ReduceL2",
                                 "ReduceLogSum", "ReduceLogSumExp", "ReduceProd", "CumSum")},
    **{op: _NORM for op in ("LayerNormalization", "GroupNormalization", "InstanceNormalization",
                            "Softmax", "LogSoftmax")},
    **{op: _EXP for op in ("Exp", "Log", "Pow")},
    **{op: _SHAPE for op in ("Resize", "Upsample", "RoiAlign")},
    **{op: _GEN for op in ("Range", "RandomNormal", "RandomUniform", "RandomNormalLike", "RandomUniformLike",
                           "TopK", "NonMaxSuppression")},
}
DEFAULT_BLOCK = tuple(BLOCK_REASONS)
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
_MARK = "edgepack.fp16"
F32, F16 = ir.DataType.FLOAT, ir.DataType.FLOAT16


class ConvertToFloat16Pass(ir.passes.InPlacePass):
    """Runs every float op in float16 except the ones the rules above keep in float32.

    float32 constants read only by float16 nodes become float16; a float32 value read by a float16
    node passes through a Cast to float16, and a float16 value read by a float32 node (or a graph
    output, with `keep_io_float`) passes through a Cast to float32:

        x(f32) -> Cast(f16) -> Conv(f16) -> Relu(f16) -> Cast(f32) -> Softmax(f32) -> y

    With `keep_io_float=False` float inputs and outputs of the graph become float16 too. `absmax`
    ({tensor name: max |x| seen on data}) drives the data rule. `kept` lists each float32 node with
    its reason. The Casts it adds are marked, so a second run changes nothing.
    """

    def __init__(self, *, keep_io_float: bool = True, block=DEFAULT_BLOCK,
                 absmax: dict[str, float] | None = None, data_max: float = FP16_MAX):
        super().__init__()
        self.keep_io_float, self.block = keep_io_float, frozenset(block)
        self.absmax, self.data_max = absmax or {}, data_max
        self.converted: list[str] = []
        self.kept: list[dict] = []

    @property
    def kept_float(self) -> list[str]:
        return [k["node"] for k in self.kept]

    def call(self, model: ir.Model) -> ir.passes.PassResult:
        io.infer_shapes(model)
        graph = model.graph
        opset = model.opset_imports.get("", 0)
        self.converted, self.kept = [], []
        half: set[int] = set()
        for node in graph:
            if not _has_float(node) or _MARK in node.metadata_props:
                continue
            reason = self._stays_float(node, opset)
            if reason:
                self.kept.append({"node": node.name or node.op_type, "op_type": node.op_type, "reason": reason})
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
                    node.replace_input_with(index, _half_input(graph, value, node, to_half, half))
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
        logger.info("float16: %d nodes converted, %d kept in float32", len(self.converted), len(self.kept))
        return ir.passes.PassResult(model, modified=True)

    def _stays_float(self, node: ir.Node, opset: int) -> str | None:
        """Why `node` stays float32, or None when it runs in float16."""
        if node.op_type in self.block:
            return BLOCK_REASONS.get(node.op_type, "op type listed in --block")
        if node.domain not in ("", "ai.onnx"):
            return f"op of domain '{node.domain}': its float16 support is unknown"
        if any(attr.type in (ir.AttributeType.GRAPH, ir.AttributeType.GRAPHS)
               for attr in node.attributes.values()):
            return "holds a subgraph"
        if node.op_type in QDQ_OPS:
            if opset < 19:
                return f"Q/DQ scale must be float32 before opset 19 (model: opset {opset})"
            scale = const_array(node.inputs[1]) if len(node.inputs) > 1 else None
            if scale is not None and scale.size and float(np.abs(scale).min()) < FP16_TINY:
                return f"Q/DQ scale {float(np.abs(scale).min()):.3g} is below float16's normal range"
        for value in node.inputs:
            array = const_array(value)
            if array is not None and array.dtype == np.float32 and array.size and \
                    np.abs(array).max() > FP16_MAX:
                return f"reads constant '{value.name}' with |x| up to {float(np.abs(array).max()):.3g} > 65504"
        if node.op_type == "Constant":
            array = const_array(node.outputs[0])
            if array is not None and array.size > 0 and np.abs(array.astype(np.float64)).max() > FP16_MAX:
                return "constant beyond the float16 range"
        for value in (*node.inputs, *node.outputs):
            if value is not None and value.dtype == F32 and self.absmax.get(value.name, 0.0) > self.data_max:
                where = "output" if value in node.outputs else "input"
                return (f"{where} '{value.name}' reaches |x| = {self.absmax[value.name]:.3g} on the data "
                        f"(> {self.data_max:g}{', the float16 maximum' if self.data_max == FP16_MAX else ''})")
        return None


def _half_input(graph, value, node, cache, half) -> ir.Value:
    """A float16 version of `value`: the constant converted in place when only float16 nodes
    read it, else a Cast."""
    if value.is_initializer() and value.const_value is not None:
        if all(id(u) in half for u, _ in value.uses()) and value not in graph.outputs:
            array = value.const_value.numpy().astype(np.float16)
            value.const_value = ir.tensor(array, name=value.name)
            value.dtype = F16
            return value
    return _cast(graph, value, F16, cache, before=node)


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


def observed_absmax(model: ir.Model, data, *, limit: int = 256) -> dict[str, float]:
    """max |x| of every float tensor of `model` over `data` (a calibration folder, .npz/.npy or an
    iterable of {input: array}), from one ONNX Runtime pass (calibrate, min-max)."""
    from edgepack.calib import calibrate

    ranges = calibrate(copy_model(model), data, method="minmax", limit=limit, progress=False)
    return {name: max(abs(lo), abs(hi)) for name, (lo, hi) in ranges.tensors.items()}


def to_fp16(model: ir.Model, *, keep_io_float: bool = True, block=DEFAULT_BLOCK, data=None,
            data_max: float = FP16_MAX) -> tuple[ir.Model, dict]:
    """A float16 copy of `model` and its report: converted nodes, the float32 ones and why, cost.

    With `data` the model first runs over it once: a node whose float input or output reaches
    |x| > `data_max` there stays float32 (its producer and consumers keep the value in range),
    and the output error is measured on that data instead of random inputs.
    """
    from edgepack import cost

    absmax = observed_absmax(model, data) if data is not None else None
    converted = copy_model(model)
    fp16_pass = ConvertToFloat16Pass(keep_io_float=keep_io_float, block=block, absmax=absmax, data_max=data_max)
    fp16_pass(converted)
    report = {"keep_io_float": keep_io_float, "blocked_ops": sorted(fp16_pass.block), "data_max": data_max,
              "data_rule": data is not None,
              "converted_nodes": len(fp16_pass.converted), "float32_nodes": fp16_pass.kept_float,
              "kept_float32": fp16_pass.kept, **cost.cost_report(model, converted, data)}
    return converted, report
