"""Weighted layers as matrix problems: Conv (any group, 1-D/2-D), Gemm and MatMul written as
y[g] = W[g] @ x[g] per group, with x the layer's input patches (im2col), and the streamed second
moments of those patches that weight fitting needs.

    Conv W[M, C/g, kh, kw], group g  ->  W[g, M/g, K]  with K = C/g * kh * kw
    Gemm B[K, N] (transB: B[N, K])   ->  W[1, N, K]
    MatMul x[..., K] @ W[K, N]       ->  W[1, N, K]

LayerStats accumulates, over every input position p (no rows are kept, so memory does not grow
with the data):  n,  S_x = sum x_p,  H = sum x_p x_p^T  [g, K, K],  and with a target output y_p
(the float model's output of the same node):  S_y,  G = sum y_p x_p^T  [g, M/g, K],  S_yy = sum y_p^2
per channel; the target of the weights is t = y - b (b the float bias).  Then, for any candidate weights V, the squared output error
sum_p ||V x_p - (y_p - b)||^2 = sum_m v_m H v_m^T - 2 v_m g_m^T + S_yy_m, exactly.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import onnx_ir as ir

from edgepack.graph import attr_float, attr_int, attr_ints, attr_str

CHUNK_ELEMENTS = 1 << 22   # patches processed at a time (16 MB of float32)


@dataclass(frozen=True)
class LayerShape:
    """How the node's weight and input map onto W[g, M/g, K] and x[g, K]."""

    op: str
    weight_shape: tuple[int, ...]
    groups: int
    kernel: tuple[int, ...] = ()
    strides: tuple[int, ...] = ()
    pads: tuple[int, ...] = ()        # begin..., end...
    dilations: tuple[int, ...] = ()
    trans_b: bool = False
    auto_pad: str = "NOTSET"

    def pads_for(self, size: list[int]) -> tuple[int, ...]:
        """Explicit pads (begin..., end...) for input spatial `size` (SAME_UPPER/LOWER resolved)."""
        if self.auto_pad not in ("SAME_UPPER", "SAME_LOWER"):
            return self.pads
        begin, end = [], []
        for i, n in enumerate(size):
            span = (self.kernel[i] - 1) * self.dilations[i] + 1
            total = max((-(-n // self.strides[i]) - 1) * self.strides[i] + span - n, 0)
            first = total // 2 if self.auto_pad == "SAME_UPPER" else total - total // 2
            begin.append(first)
            end.append(total - first)
        return tuple(begin + end)

    @property
    def out_channels(self) -> int:
        if self.op == "Conv":
            return self.weight_shape[0]
        return self.weight_shape[0] if self.trans_b else self.weight_shape[-1]

    def to_groups(self, w: np.ndarray) -> np.ndarray:
        """Weight in its ONNX layout -> W[g, M/g, K]."""
        if self.op == "Conv":
            m = w.shape[0]
            return w.reshape(self.groups, m // self.groups, -1)
        matrix = w if self.trans_b else w.T
        return matrix.reshape(1, *matrix.shape)

    def from_groups(self, wg: np.ndarray) -> np.ndarray:
        if self.op == "Conv":
            return wg.reshape(self.weight_shape)
        matrix = wg[0]
        return matrix if self.trans_b else matrix.T

    def positions(self, x_shape: tuple[int, ...]) -> int:
        """Output positions per sample (1 for Gemm/MatMul rows)."""
        if self.op != "Conv":
            return 1
        size = list(x_shape[2:]) if len(x_shape) == 4 else [1, x_shape[2]]
        pads = self.pads_for(size)
        count = 1
        for i, n in enumerate(size):
            span = (self.kernel[i] - 1) * self.dilations[i] + 1
            count *= (n + pads[i] + pads[i + 2] - span) // self.strides[i] + 1
        return count

    def patches(self, x: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """The input as patches [P, g, K] (P positions), in the order of W[g, M/g, K]; `where`:
        only these output positions (flat indices into Ho*Wo) of every sample."""
        if self.op != "Conv":
            k = self.weight_shape[1] if self.trans_b else self.weight_shape[0]
            return x.reshape(-1, 1, k)
        if x.ndim == 3:
            x = x[:, :, None, :]
        n, c = x.shape[:2]
        pads = self.pads_for(list(x.shape[2:]))
        pad = [(0, 0), (0, 0)] + [(pads[i], pads[i + len(self.kernel)]) for i in range(len(self.kernel))]
        x = np.pad(x, pad) if any(pads) else x
        kh, kw = self.kernel
        dh, dw = self.dilations
        window = np.lib.stride_tricks.sliding_window_view(x, ((kh - 1) * dh + 1, (kw - 1) * dw + 1), axis=(2, 3))
        window = window[:, :, ::self.strides[0], ::self.strides[1], ::dh, ::dw]   # [N, C, Ho, Wo, kh, kw]
        n, c, ho, wo = window.shape[:4]
        if where is not None:
            window = window[:, :, where // wo, where % wo]                           # [N, C, P, kh, kw]
            return window.transpose(0, 2, 1, 3, 4).reshape(-1, self.groups, (c // self.groups) * kh * kw)
        cols = window.transpose(0, 2, 3, 1, 4, 5).reshape(n * ho * wo, self.groups, (c // self.groups) * kh * kw)
        return cols

    def outputs(self, y: np.ndarray, where: np.ndarray | None = None) -> np.ndarray:
        """The node's output as [P, g, M/g], positions in the order of `patches`."""
        m = self.out_channels
        if self.op == "Conv":
            y = y.reshape(y.shape[0], m, -1)
            if where is not None:
                y = y[:, :, where]
            y = np.moveaxis(y, 1, 2)
        return y.reshape(-1, self.groups, m // self.groups)


def layer_shape(node: ir.Node, weight: np.ndarray) -> LayerShape | None:
    """The node as a matrix problem, or None where it is not one this module handles."""
    op = node.op_type
    if op == "Conv":
        auto_pad = attr_str(node, "auto_pad", "NOTSET")
        if weight.ndim not in (3, 4) or auto_pad not in ("NOTSET", "VALID", "SAME_UPPER", "SAME_LOWER"):
            return None
        spatial = weight.ndim - 2
        kernel = tuple(weight.shape[2:])
        strides = tuple(attr_ints(node, "strides", [1] * spatial))
        pads = tuple(attr_ints(node, "pads", [0] * 2 * spatial))
        dilations = tuple(attr_ints(node, "dilations", [1] * spatial))
        if spatial == 1:
            kernel, strides, dilations = (1, *kernel), (1, *strides), (1, *dilations)
            pads = (0, pads[0], 0, pads[1])
        groups = attr_int(node, "group", 1)
        if weight.shape[0] % groups:
            return None
        return LayerShape(op, tuple(weight.shape), groups, kernel, strides, pads, dilations, auto_pad=auto_pad)
    if op == "Gemm":
        if weight.ndim != 2 or attr_int(node, "transA", 0) or attr_float(node, "alpha", 1.0) != 1.0 \
                or attr_float(node, "beta", 1.0) != 1.0:
            return None
        return LayerShape(op, tuple(weight.shape), 1, trans_b=bool(attr_int(node, "transB", 0)))
    if op == "MatMul" and weight.ndim == 2 and node.inputs[1] is not None:
        return LayerShape(op, tuple(weight.shape), 1)
    return None


class LayerStats:
    """Streamed moments of a layer's input patches x and (optionally) target outputs y."""

    def __init__(self, shape: LayerShape, bias: np.ndarray | None, *, rows_per_sample: int | None = None,
                 seed: int = 0):
        """`rows_per_sample`: at most this many output positions of each sample, drawn at random
        (seeded) per batch: the moments converge long before every position of a 112x112 map
        is used, and the cost is positions * K^2."""
        self.shape = shape
        self.rows_per_sample = rows_per_sample
        self.rng = np.random.default_rng(seed)
        g = shape.groups
        m_g = shape.out_channels // g
        k = int(np.prod(shape.weight_shape)) // shape.out_channels
        self.n = 0
        self.sum_x = np.zeros((g, k))
        self.h = np.zeros((g, k, k))
        self.sum_y = np.zeros((g, m_g))
        self.g = np.zeros((g, m_g, k))
        self.sum_yy = np.zeros((g, m_g))
        self.has_target = False
        self.bias = (np.zeros((g, m_g)) if bias is None
                     else np.broadcast_to(np.asarray(bias, np.float64).reshape(-1), (shape.out_channels,)).reshape(g, m_g))

    def update(self, x: np.ndarray, y: np.ndarray | None = None) -> None:
        where = None
        total = self.shape.positions(x.shape)
        if self.rows_per_sample is not None and total > self.rows_per_sample:
            where = np.sort(self.rng.choice(total, self.rows_per_sample, replace=False))
        cols = self.shape.patches(np.asarray(x, np.float32), where)
        ys = self.shape.outputs(np.asarray(y, np.float32), where) if y is not None else None
        if ys is not None and ys.shape[0] != cols.shape[0]:
            raise ValueError(f"{ys.shape[0]} output positions for {cols.shape[0]} input patches")
        groups = cols.shape[1]
        step = max(1, CHUNK_ELEMENTS // max(1, groups * cols.shape[2]))
        for start in range(0, cols.shape[0], step):
            c = cols[start:start + step]
            self.n += c.shape[0]
            if groups == 1:                       # one BLAS call: H += X^T X
                c2 = np.ascontiguousarray(c[:, 0, :])
                self.sum_x[0] += c2.sum(axis=0, dtype=np.float64)
                self.h[0] += c2.T @ c2
            else:
                cg = np.ascontiguousarray(c.transpose(1, 0, 2))       # [g, P, K]
                self.sum_x += cg.sum(axis=1, dtype=np.float64)
                self.h += np.matmul(cg.transpose(0, 2, 1), cg)
            if ys is None:
                continue
            self.has_target = True
            t = ys[start:start + step]
            if groups == 1:
                t2 = np.ascontiguousarray(t[:, 0, :])
                self.sum_y[0] += t2.sum(axis=0, dtype=np.float64)
                self.sum_yy[0] += np.einsum("pm,pm->m", t2, t2, dtype=np.float64)
                self.g[0] += t2.T @ c2
            else:
                tg = np.ascontiguousarray(t.transpose(1, 0, 2))       # [g, P, M/g]
                self.sum_y += tg.sum(axis=1, dtype=np.float64)
                self.sum_yy += np.einsum("gpm,gpm->gm", tg, tg, dtype=np.float64)
                self.g += np.matmul(tg.transpose(0, 2, 1), cg)

    def problem(self, w_float: np.ndarray, *, centered: bool) -> "Quadratic":
        """The error of candidate weights as a quadratic form, per sample position (means).

        Without a target (or its float model output), the target is the float weights on the same
        inputs (AdaRound's ||W x - V x||^2). `centered`: the per-channel mean of the error is
        removed afterwards (bias correction), so only its covariance counts."""
        n = max(self.n, 1)
        h = self.h / n
        mean_x = self.sum_x / n
        wg = self.shape.to_groups(w_float).astype(np.float64)
        if self.has_target:  # moments of t = y - b from those of y
            b = self.bias
            g = self.g / n - b[:, :, None] * mean_x[:, None, :]
            yy = (self.sum_yy - 2 * b * self.sum_y) / n + b * b
            mean_y = self.sum_y / n - b
        else:
            g = np.matmul(wg, h)
            yy = np.einsum("gmk,gmk->gm", g, wg)
            mean_y = np.einsum("gmk,gk->gm", wg, mean_x)
        if centered:
            h = h - mean_x[:, :, None] * mean_x[:, None, :]
            g = g - mean_y[:, :, None] * mean_x[:, None, :]
            yy = yy - mean_y ** 2
        return Quadratic(h, g, yy, mean_x, mean_y)


@dataclass
class Quadratic:
    """err_m(V) = v_m H v_m^T - 2 v_m g_m^T + yy_m, per output channel, for V[g, M/g, K]."""

    h: np.ndarray
    g: np.ndarray
    yy: np.ndarray
    mean_x: np.ndarray
    mean_y: np.ndarray

    def per_channel(self, v: np.ndarray) -> np.ndarray:
        vh = np.matmul(v, self.h)
        return np.maximum(np.einsum("gmk,gmk->gm", vh - 2 * self.g, v) + self.yy, 0.0)

    def gradient(self, v: np.ndarray) -> np.ndarray:
        return 2 * (np.matmul(v, self.h) - self.g)

    def compressed(self, rank: int) -> "Quadratic":
        """H replaced by its top-`rank` eigenpairs plus the mean of the rest on the diagonal, so
        that an iteration costs M*K*rank instead of M*K^2 on wide layers."""
        if self.h.shape[-1] <= rank:
            return self
        vals, vecs = np.linalg.eigh(self.h)
        top_vals, top_vecs = vals[:, -rank:], vecs[:, :, -rank:]
        rest = np.maximum(vals[:, :-rank].mean(axis=1), 0.0)
        return _LowRankQuadratic(self.h, self.g, self.yy, self.mean_x, self.mean_y,
                                 top_vecs.astype(np.float32), (top_vals - rest[:, None]).astype(np.float32),
                                 rest.astype(np.float32))


@dataclass
class _LowRankQuadratic(Quadratic):
    vecs: np.ndarray = None          # [g, K, r]
    vals: np.ndarray = None          # [g, r]
    rest: np.ndarray = None          # [g]

    def _apply(self, v: np.ndarray) -> np.ndarray:
        return np.matmul(np.matmul(v, self.vecs) * self.vals[:, None, :], self.vecs.transpose(0, 2, 1)) \
            + v * self.rest[:, None, None]

    def gradient(self, v: np.ndarray) -> np.ndarray:
        return 2 * (self._apply(v) - self.g)
