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


def random_pruned_net(seed: int) -> ir.Model:
    """A random small CNN from the patterns FoldPrunedWeightsPass follows (and some it must not):
    conv_bn with pruned filters (some with a non-zero BN beta: constant channels), depthwise and
    grouped convs, residual Add/Sub, Concat, squeeze-excite Mul, per-channel Mul/Div, padded pools,
    ConvTranspose, Resize, Pad, then a GAP/Flatten/Reshape/ReduceMean/GlobalMaxPool head into a pruned MLP."""
    rng = np.random.default_rng(seed)
    b = NetBuilder(seed)
    y, c, hw = "x", 3, 8

    def some(n, p):
        return [k for k in range(n) if rng.random() < p]

    for _ in range(rng.integers(2, 5)):
        kind = rng.choice(["conv", "dw", "res", "cat", "pool", "mul", "se", "convt", "grouped", "div",
                           "resize", "pad"])
        cout, k = int(rng.integers(3, 8)), int(rng.choice([1, 3]))
        pruned = some(cout, 0.4)
        act = rng.choice(["Relu", "Relu6", None])
        if kind == "conv":
            y = b.conv_bn(y, c, cout, k, pruned=pruned, act=act)
            if pruned and rng.random() < 0.5:  # a constant channel: BN beta stays non-zero
                bn = b.nodes[-1 if act is None else -2]
                init = next(i for i in b.inits if i.name == bn.input[2])
                beta = numpy_helper.to_array(init).copy()
                beta[pruned[0]] = 0.7
                init.CopyFrom(numpy_helper.from_array(beta, init.name))
            if rng.random() < 0.3:
                y = b.node(str(rng.choice(["Sigmoid", "LeakyRelu", "Tanh", "HardSwish"])), [y])
            c = cout
        elif kind == "dw":  # depthwise, channel multiplier 1 or 2
            mult = int(rng.integers(1, 3))
            y = b.conv_bn(y, c, c * mult, 3, group=c, pruned=some(c * mult, 0.3), act=act)
            c *= mult
        elif kind == "res":
            t = b.conv_bn(y, c, cout, 1, pruned=pruned)
            t = b.conv_bn(t, cout, c, 3, pruned=some(c, 0.3), act=None)
            y = b.node(str(rng.choice(["Add", "Sub"])), [t, y])
        elif kind == "cat":
            c2 = int(rng.integers(2, 6))
            p1 = b.conv_bn(y, c, cout, k, pruned=pruned)
            p2 = b.conv_bn(y, c, c2, 1, pruned=some(c2, 0.4))
            y, c = b.node("Concat", [p1, p2], axis=1), cout + c2
        elif kind == "mul":
            y = b.node("Mul", [y, b.const(rng.uniform(0.5, 2, (1, c, 1, 1)))])
        elif kind == "div":
            y = b.node("Div", [y, b.const(rng.uniform(0.5, 2, (c, 1, 1)))])
        elif kind == "se":
            r = max(c // 2, 1)
            g = b.node("GlobalAveragePool", [y])
            g = b.node("Relu", [b.node("Conv", [g, b.const(rng.standard_normal((r, c, 1, 1))),
                                                b.const(rng.standard_normal(r))], kernel_shape=[1, 1])])
            g = b.node("Sigmoid", [b.node("Conv", [g, b.const(rng.standard_normal((c, r, 1, 1))),
                                                   b.const(rng.standard_normal(c))], kernel_shape=[1, 1])])
            y = b.node("Mul", [y, g])
        elif kind == "convt":
            w = rng.standard_normal((c, cout, 3, 3))
            w[:, pruned] = 0
            y = b.node("ConvTranspose", [y, b.const(w)], kernel_shape=[3, 3], pads=[1, 1, 1, 1])
            gamma, beta = rng.uniform(0.5, 1.5, cout), rng.standard_normal(cout) * 0.1
            gamma[pruned] = beta[pruned] = 0
            y = b.node("BatchNormalization", [y, b.const(gamma), b.const(beta), b.const(np.zeros(cout)),
                                              b.const(rng.uniform(0.5, 2, cout))])
            y, c = b.node("Relu", [y]), cout
        elif kind == "grouped" and c % 2 == 0 and cout % 2 == 0:
            y, c = b.conv_bn(y, c, cout, 3, group=2, pruned=pruned), cout
        elif kind == "resize" and hw <= 8:
            mode = str(rng.choice(["nearest", "linear", "cubic"]))
            y = b.node("Resize", [y, "", b.const(np.array([1, 1, 2, 2]), "scales")], mode=mode)
            hw *= 2
        elif kind == "pad":
            pads = b.name("pads")
            b.inits.append(numpy_helper.from_array(np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64), pads))
            y = b.node("Pad", [y, pads, b.const(np.array(rng.choice([0.0, 0.5])), "pad_value")])
            hw += 2
        elif kind == "pool" and hw >= 4:
            op = str(rng.choice(["MaxPool", "AveragePool"]))
            attrs = dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], strides=[2, 2])
            if op == "AveragePool":
                attrs["count_include_pad"] = int(rng.integers(0, 2))
            y, hw = b.node(op, [y], **attrs), (hw + 1) // 2
    head = rng.choice(["gap", "flatten", "reshape", "reducemean", "gmp"])
    features = c * hw * hw if head in ("flatten", "reshape") else c
    if head == "gap":
        y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    elif head == "gmp":
        y = b.node("Flatten", [b.node("GlobalMaxPool", [y])])
    elif head == "flatten":
        y = b.node("Flatten", [y])
    elif head == "reshape":
        shape = b.name("shape")
        b.inits.append(numpy_helper.from_array(np.array([-1, features], np.int64), shape))
        y = b.node("Reshape", [y, shape])
    else:
        y = b.node("ReduceMean", [y], axes=[2, 3], keepdims=0)
    h = int(rng.integers(4, 10))
    y = b.node("Relu", [b.gemm(y, features, h, pruned=some(h, 0.5))])
    if rng.random() < 0.5:
        y = b.node("MatMul", [y, b.const(rng.standard_normal((h, 10)))])
    else:
        y = b.gemm(y, h, 10)
    return b.model(["N", 3, 8, 8], y, ["N", 10])
