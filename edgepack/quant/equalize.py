"""Channel equalization before depthwise convolutions: an exact rewrite that lets one per-tensor
activation scale serve every channel.

    Conv_P(x; W, b) -> [Relu] -> y -> DepthwiseConv_D(y; V, c)

A depthwise conv mixes no channels, so per-tensor quantization of y is as coarse for a channel with
range 0.1 as for one with range 10: the small channels lose most of their precision, and the next
1x1 conv mixes that error into every channel. Scaling channel i of y by s_i > 0 and undoing it in D
changes nothing in float:

    W'_i = s_i W_i,  b'_i = s_i b_i,  Relu(s_i z) = s_i Relu(z),  V'_i = V_i / s_i

and nothing in the weights' quantization either, since both W (rows) and V (channels) are quantized
per output channel, where a per-channel factor is absorbed by the scale. With s_i = R / r_i (r_i the
calibrated max |y_i|, R the largest) every channel of y spans the full INT8 range. Channels with
r_i = 0 are left alone; s_i is capped at MAX_SCALE so weights stay well inside float32.
(Cross-layer equalization, Nagel et al. 2019, with activation ranges from data in place of weight
ranges; ReLU6/Clip are not followed: a clip at 6 does not commute with scaling.)
"""
from __future__ import annotations

import logging

import numpy as np
import onnx_ir as ir

from edgepack import runtime
from edgepack.calib.data import input_specs_of, open_dataset
from edgepack.graph import attr_int, const_array
from edgepack.passes.rewrite import set_input_constant

logger = logging.getLogger(__name__)
MAX_SCALE = 1e3


def depthwise_pairs(model: ir.Model) -> list[tuple[ir.Node, ir.Node | None, ir.Node]]:
    """(producer Conv, Relu or None, depthwise Conv) chains whose intermediates have no other user."""
    pairs = []
    for node in model.graph:
        if node.op_type != "Conv" or node.domain != "" or const_array(node.inputs[1]) is None:
            continue
        weight = const_array(node.inputs[1])
        groups = attr_int(node, "group", 1)
        if groups <= 1 or weight.shape[0] != groups or weight.shape[1] != 1:
            continue  # a depthwise conv with channel multiplier 1
        y = node.inputs[0]
        relu = y.producer()
        if relu is not None and relu.op_type == "Relu" and _only_user(y, relu is not None):
            z = relu.inputs[0]
        else:
            relu, z = None, y
        producer = z.producer()
        if (producer is None or producer.op_type != "Conv" or const_array(producer.inputs[1]) is None
                or (len(producer.inputs) > 2 and producer.inputs[2] is not None
                    and const_array(producer.inputs[2]) is None)
                or len(z.uses()) != 1 or z.is_graph_output() or y.is_graph_output()
                or len(y.uses()) != 1 or const_array(producer.inputs[1]).shape[0] != groups):
            continue
        pairs.append((producer, relu, node))
    return pairs


def _only_user(value: ir.Value, _: bool) -> bool:
    return len(value.uses()) == 1


def depthwise_outputs(model: ir.Model) -> list[tuple[ir.Node, ir.Node]]:
    """(depthwise Conv, Conv) where the depthwise output feeds only that Conv (group 1)."""
    pairs = []
    for node in model.graph:
        if node.op_type != "Conv" or node.domain != "" or attr_int(node, "group", 1) != 1:
            continue
        x = node.inputs[0]
        dw = x.producer()
        if (dw is None or dw.op_type != "Conv" or const_array(node.inputs[1]) is None or len(x.uses()) != 1
                or x.is_graph_output() or const_array(dw.inputs[1]) is None):
            continue
        v = const_array(dw.inputs[1])
        groups = attr_int(dw, "group", 1)
        if groups > 1 and v.shape[0] == groups and v.shape[1] == 1 and (
                len(dw.inputs) < 3 or dw.inputs[2] is None or const_array(dw.inputs[2]) is not None):
            pairs.append((dw, node))
    return pairs


def channel_peaks(model: ir.Model, tensors: list[ir.Value], data, limit: int) -> dict[str, np.ndarray | None]:
    """max |x| per channel (axis 1) of each tensor, over up to `limit` samples of `data`."""
    from edgepack.calib.calibrate import _with_outputs

    session = runtime.session(_with_outputs(model, tensors), lean=True)
    names = [v.name for v in tensors]
    peak: dict[str, np.ndarray | None] = {n: None for n in names}
    for batch in open_dataset(data, input_specs_of(session), batch_size=8, limit=limit):
        for name, value in zip(names, session.run(names, batch)):
            m = np.abs(value).max(axis=tuple(i for i in range(value.ndim) if i != 1))
            peak[name] = m if peak[name] is None else np.maximum(peak[name], m)
    return peak


def equalize_depthwise_inputs(model: ir.Model, data, *, limit: int = 64) -> int:
    """Rescales the channels entering depthwise convs (see the module docstring), in place; returns
    how many depthwise inputs were equalized. Ranges come from running `model` over `data`."""
    pairs = depthwise_pairs(model)
    if not pairs:
        return 0
    tensors = [dw.inputs[0] for _, _, dw in pairs]
    names = [v.name for v in tensors]
    peak = channel_peaks(model, tensors, data, limit)
    done = 0
    for (producer, _, dw), name in zip(pairs, names):
        r = peak[name]
        if r is None or not np.any(r > 0):
            continue
        s = np.where(r > 0, r.max() / np.where(r > 0, r, 1), 1.0)
        s = np.minimum(s, MAX_SCALE).astype(np.float64)
        w = const_array(producer.inputs[1]).astype(np.float64)
        shape = (-1,) + (1,) * (w.ndim - 1)
        set_input_constant(model.graph, producer, 1, (w * s.reshape(shape)).astype(np.float32),
                           f"{producer.inputs[1].name}_equalized")
        if len(producer.inputs) > 2 and producer.inputs[2] is not None:
            b = const_array(producer.inputs[2]).astype(np.float64)
            set_input_constant(model.graph, producer, 2, (b * s).astype(np.float32), f"{producer.inputs[2].name}_equalized")
        v = const_array(dw.inputs[1]).astype(np.float64)
        set_input_constant(model.graph, dw, 1, (v / s.reshape(shape)).astype(np.float32), f"{dw.inputs[1].name}_equalized")
        done += 1
    logger.info("equalized the channels entering %d depthwise convs", done)
    return done


def balance_depthwise_outputs(model: ir.Model, data, *, limit: int = 64, alpha: float = 0.5) -> int:
    """Depthwise output y (channel i) -> Conv C: y_i / t_i and C[:, i] * t_i, t_i = a_i^alpha / w_i^(1-alpha)
    (a_i = max |y_i| on `data`, w_i = max |C[:, i]|): activation and weight ranges meet in the
    middle (the SmoothQuant balance). Exact in float; the depthwise weights absorb 1/t_i per channel."""
    pairs = depthwise_outputs(model)
    if not pairs:
        return 0
    tensors = [conv.inputs[0] for _, conv in pairs]
    names = [v.name for v in tensors]
    peak = channel_peaks(model, tensors, data, limit)
    done = 0
    for (dw, conv), name in zip(pairs, names):
        a = peak[name]
        c = const_array(conv.inputs[1]).astype(np.float64)
        w = np.abs(c).max(axis=tuple(i for i in range(c.ndim) if i != 1))
        if a is None or a.shape != w.shape:
            continue
        ok = (a > 0) & (w > 0)
        t = np.where(ok, np.power(np.where(ok, a, 1), alpha) / np.power(np.where(ok, w, 1), 1 - alpha), 1.0)
        t = np.clip(t, 1 / MAX_SCALE, MAX_SCALE)
        v = const_array(dw.inputs[1]).astype(np.float64)
        shape = (-1,) + (1,) * (v.ndim - 1)
        set_input_constant(model.graph, dw, 1, (v / t.reshape(shape)).astype(np.float32), f"{dw.inputs[1].name}_balanced")
        if len(dw.inputs) > 2 and dw.inputs[2] is not None:
            b = const_array(dw.inputs[2]).astype(np.float64)
            set_input_constant(model.graph, dw, 2, (b / t).astype(np.float32), f"{dw.inputs[2].name}_balanced")
        cshape = (1, -1) + (1,) * (c.ndim - 2)
        set_input_constant(model.graph, conv, 1, (c * t.reshape(cshape)).astype(np.float32), f"{conv.inputs[1].name}_balanced")
        done += 1
    logger.info("balanced %d depthwise outputs with their consumers", done)
    return done
