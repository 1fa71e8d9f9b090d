"""A MobileNetV2-shaped ImageNet classifier (3.5 M parameters, 224x224) with random weights.

For memory and time only: its weights are He-random (BatchNorm folded into each Conv's bias, ReLU6
as Clip 0..6, linear bottlenecks with residual Adds, depthwise 3x3), so it has MobileNetV2's tensor
sizes (the largest is 96x112x112 per image, 4x ShuffleNetV2's) and layer count, not its accuracy.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

# (expansion, channels, repeats, stride) as in the MobileNetV2 paper
BLOCKS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2),
          (6, 320, 1, 1))


def build(path: Path, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    nodes, inits = [], []

    def conv(x: str, cin: int, cout: int, k: int, stride: int, group: int = 1, relu: bool = True) -> str:
        i = len(nodes)
        fan_in = cin // group * k * k
        w = rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2.0 / fan_in)
        w = (w * rng.lognormal(0.0, 0.5, (cout, 1, 1, 1))).astype(np.float32)  # per-channel spread, as folded BN
        b = rng.normal(0.0, 0.1, cout).astype(np.float32)
        inits.extend([numpy_helper.from_array(w, f"w{i}"), numpy_helper.from_array(b, f"b{i}")])
        y = f"conv{i}"
        nodes.append(helper.make_node("Conv", [x, f"w{i}", f"b{i}"], [y], kernel_shape=[k, k],
                                      strides=[stride, stride], pads=[k // 2] * 4, group=group))
        if not relu:
            return y
        nodes.append(helper.make_node("Clip", [y, "zero", "six"], [y + "_relu6"]))
        return y + "_relu6"

    inits += [numpy_helper.from_array(np.array(0, np.float32), "zero"),
              numpy_helper.from_array(np.array(6, np.float32), "six")]
    x, cin = conv("input", 3, 32, 3, 2), 32
    for t, c, n, s in BLOCKS:
        for r in range(n):
            stride = s if r == 0 else 1
            h = conv(x, cin, cin * t, 1, 1) if t != 1 else x
            h = conv(h, cin * t, cin * t, 3, stride, group=cin * t)
            h = conv(h, cin * t, c, 1, 1, relu=False)
            if stride == 1 and cin == c:
                nodes.append(helper.make_node("Add", [x, h], [h + "_add"]))
                h += "_add"
            x, cin = h, c
    x = conv(x, cin, 1280, 1, 1)
    w = (rng.standard_normal((1000, 1280)) * np.sqrt(1.0 / 1280)).astype(np.float32)
    inits += [numpy_helper.from_array(w, "fc_w"), numpy_helper.from_array(np.zeros(1000, np.float32), "fc_b")]
    nodes += [helper.make_node("GlobalAveragePool", [x], ["pool"]),
              helper.make_node("Flatten", ["pool"], ["flat"]),
              helper.make_node("Gemm", ["flat", "fc_w", "fc_b"], ["output"], transB=1)]
    graph = helper.make_graph(nodes, "mobilenetv2_shape",
                              [helper.make_tensor_value_info("input", TensorProto.FLOAT, ["N", 3, 224, 224])],
                              [helper.make_tensor_value_info("output", TensorProto.FLOAT, ["N", 1000])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return path


def parameters(path: Path) -> int:
    return sum(int(np.prod(t.dims)) for t in onnx.load(str(path)).graph.initializer)
