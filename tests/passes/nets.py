"""Networks built in code for the pass tests, at any width, optionally with channels pruned."""
from __future__ import annotations

import numpy as np
import onnx
import onnx_ir as ir
from onnx import helper, numpy_helper


class NetBuilder:
    """Appends nodes and random initializers; `conv_bn` zeroes the filters and BN gamma/beta of
    the channels in `pruned` (the way training-time pruning leaves a model)."""

    def __init__(self, seed: int = 0):
        self.rng = np.random.default_rng(seed)
        self.nodes, self.inits, self.count = [], [], 0

    def name(self, prefix: str) -> str:
        self.count += 1
        return f"{prefix}{self.count}"

    def const(self, array: np.ndarray, prefix: str = "w") -> str:
        name = self.name(prefix)
        self.inits.append(numpy_helper.from_array(np.asarray(array, np.float32), name))
        return name

    def node(self, op: str, inputs: list[str], **attrs) -> str:
        out = self.name(op.lower())
        self.nodes.append(helper.make_node(op, inputs, [out], name=f"/{out}/{op}", **attrs))
        return out

    def conv_bn(self, x: str, cin: int, cout: int, k: int, *, group: int = 1, pruned=(), act: str | None = "Relu"):
        w = self.rng.standard_normal((cout, cin // group, k, k)) * np.sqrt(2 / (cin // group * k * k))
        gamma = self.rng.uniform(0.5, 1.5, cout)
        beta = self.rng.standard_normal(cout) * 0.1
        w[list(pruned)] = 0
        gamma[list(pruned)] = 0
        beta[list(pruned)] = 0
        y = self.node("Conv", [x, self.const(w)], kernel_shape=[k, k], pads=[k // 2] * 4, group=group)
        y = self.node("BatchNormalization", [y, self.const(gamma), self.const(beta),
                                             self.const(self.rng.standard_normal(cout) * 0.1),
                                             self.const(self.rng.uniform(0.5, 2.0, cout))])
        if act == "Relu":
            y = self.node("Relu", [y])
        elif act == "Relu6":
            y = self.node("Clip", [y, self.const(np.array(0.0), "lo"), self.const(np.array(6.0), "hi")])
        return y

    def gemm(self, x: str, cin: int, cout: int, pruned=()):
        w = self.rng.standard_normal((cout, cin)) / np.sqrt(cin)
        b = self.rng.standard_normal(cout) * 0.1
        w[list(pruned)] = 0
        b[list(pruned)] = 0
        return self.node("Gemm", [x, self.const(w), self.const(b)], transB=1)

    def model(self, x_shape, y: str, y_shape) -> ir.Model:
        graph = helper.make_graph(
            self.nodes, "net", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)],
            [helper.make_tensor_value_info(y, onnx.TensorProto.FLOAT, y_shape)], self.inits)
        proto = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
        onnx.checker.check_model(proto, full_check=True)
        return ir.serde.deserialize_model(proto)


def resnet_style(expand=32, branch_a=12, branch_b=6, hidden=32, prune=False, seed=0) -> ir.Model:
    """x[N,3,16,16]
         -> conv_bn 3x3 (16) = s
         -> inverted residual: conv_bn 1x1 (E) Relu6 -> depthwise 3x3 (E) Relu6 -> conv_bn 1x1 (16) + s
         -> [conv_bn 3x3 (A), conv_bn 1x1 (B)] -> Concat -> conv_bn 3x3 (24)
         -> GlobalAveragePool -> Flatten -> Gemm (H) -> Relu -> Gemm (10)
    With prune=True: half the expansion channels, a third of each Concat branch and half the hidden
    units are pruned (filters and BN gamma, beta zero)."""
    b = NetBuilder(seed)
    half = lambda n: range(0, n, 2) if prune else ()  # noqa: E731
    third = lambda n: range(0, n, 3) if prune else ()  # noqa: E731
    s = b.conv_bn("x", 3, 16, 3)
    e = b.conv_bn(s, 16, expand, 1, pruned=half(expand), act="Relu6")
    d = b.conv_bn(e, expand, expand, 3, group=expand, act="Relu6")
    p = b.conv_bn(d, expand, 16, 1, act=None)
    r = b.node("Add", [p, s])
    a_ = b.conv_bn(r, 16, branch_a, 3, pruned=third(branch_a))
    b_ = b.conv_bn(r, 16, branch_b, 1, pruned=third(branch_b))
    c = b.node("Concat", [a_, b_], axis=1)
    c = b.conv_bn(c, branch_a + branch_b, 24, 3)
    g = b.node("Flatten", [b.node("GlobalAveragePool", [c])])
    h = b.node("Relu", [b.gemm(g, 24, hidden, pruned=half(hidden))])
    y = b.gemm(h, hidden, 10)
    return b.model(["N", 3, 16, 16], y, ["N", 10])
