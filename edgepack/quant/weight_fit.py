"""Fitting a layer's integer weights to its real inputs: clip-ratio search and learned rounding.

Every candidate is a point of the grid the runtime uses, W~ = s * q with q an integer in
[-qmax, qmax] (stored as q + z, z = 0 for int8, 128 for uint8), per output channel (or one s).
The error of a candidate is the layer's output error on the calibration inputs, a quadratic form
(layer_math.Quadratic): err(W~) = sum_m w~_m H w~_m^T - 2 w~_m g_m^T + yy_m.

Clip search: s_m = a * max|W_m| / qmax for a in a grid of ratios; rows are independent, so each
channel takes its own best a (per-tensor weights: the best a for the sum).

Learned rounding (AdaRound, Nagel et al. 2020): q = clip(floor(W/s) + h(V), -qmax, qmax) with
h(V) = clip(sigmoid(V) (zeta - gamma) + gamma, 0, 1), zeta = 1.1, gamma = -0.1, V initialised so
h(V) = frac(W/s). Minimise err(W~)/err(nearest) + lam * mean(1 - |2h - 1|^beta) with Adam, beta
annealed from 20 to 2 after a warm-up without the regulariser, so that h ends at 0 or 1; then
h = [V >= 0]. The fitted rounding is kept only when its error is below nearest rounding's.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from edgepack.quant.layer_math import Quadratic

CLIP_RATIOS = tuple(np.round(np.arange(1.0, 0.495, -0.025), 3))
ZETA, GAMMA = 1.1, -0.1


@dataclass
class Grid:
    """The runtime's integer grid for this layer's weights."""

    qmax: int
    per_channel: bool

    def scales(self, wg: np.ndarray, ratio: float = 1.0) -> np.ndarray:
        """Scales [g, M/g, 1] for a clip ratio: per output channel, or one for the tensor."""
        if self.per_channel:
            top = np.abs(wg).max(axis=2, keepdims=True)
        else:
            top = np.full(wg.shape[:2] + (1,), np.abs(wg).max())
        return np.maximum(top * ratio / self.qmax, 1e-12)

    def nearest(self, wg: np.ndarray, scale: np.ndarray) -> np.ndarray:
        return np.clip(np.round(wg / scale), -self.qmax, self.qmax)


def clip_search(wg: np.ndarray, quad: Quadratic, grid: Grid, ratios=CLIP_RATIOS) -> tuple[np.ndarray, np.ndarray]:
    """(scale [g, M/g, 1], chosen ratio [g, M/g]) minimising the output error per channel."""
    best_err = np.full(wg.shape[:2], np.inf)
    best_scale = grid.scales(wg)
    best_ratio = np.ones(wg.shape[:2])
    for a in ratios:
        scale = grid.scales(wg, a)
        err = quad.per_channel(grid.nearest(wg, scale) * scale)
        if not grid.per_channel:
            err = np.full_like(err, err.sum())
        better = err < best_err
        best_err = np.where(better, err, best_err)
        best_scale = np.where(better[..., None], scale, best_scale)
        best_ratio = np.where(better, a, best_ratio)
    return best_scale, best_ratio


def adaround(wg: np.ndarray, scale: np.ndarray, quad: Quadratic, grid: Grid, *, iterations: int = 600,
             reg: float = 0.01, lr: float = 0.03, warmup: float = 0.2, rank: int = 256,
             seed: int = 0) -> np.ndarray:
    """Integer weights q [g, M/g, K] by learned up/down rounding (see the module docstring)."""
    del seed  # the optimisation is deterministic: V starts at the fractional parts
    quad = quad.compressed(rank)
    x = (wg / scale).astype(np.float32)
    floor = np.floor(x)
    frac = np.clip(x - floor, 0.0, 1.0)
    p = np.clip((frac - GAMMA) / (ZETA - GAMMA), 1e-4, 1 - 1e-4)
    v = np.log(p / (1 - p)).astype(np.float32)
    lo, hi = -grid.qmax - floor, grid.qmax - floor            # h must keep q inside the grid
    nearest = grid.nearest(wg, scale)
    base = float(quad.per_channel(nearest * scale).sum()) or 1.0
    s32 = scale.astype(np.float32)
    m1, m2 = np.zeros_like(v), np.zeros_like(v)
    b1, b2 = 0.9, 0.999
    warm = int(iterations * warmup)
    count = v.size
    for step in range(1, iterations + 1):
        sig = 1.0 / (1.0 + np.exp(-v))
        raw = sig * (ZETA - GAMMA) + GAMMA
        h = np.clip(raw, 0.0, 1.0)
        q = np.clip(floor + h, -grid.qmax, grid.qmax)
        inside = ((raw > 0) & (raw < 1) & (floor + h >= -grid.qmax) & (floor + h <= grid.qmax)).astype(np.float32)
        grad_w = quad.gradient((q * s32).astype(np.float32)).astype(np.float32) / base
        grad_h = grad_w * s32
        if step > warm:
            beta = 20 + (2 - 20) * (step - warm) / max(iterations - warm, 1)
            t = 2 * h - 1
            grad_h = grad_h - reg / count * 2 * beta * np.abs(t) ** (beta - 1) * np.sign(t)
        grad_v = grad_h * inside * (ZETA - GAMMA) * sig * (1 - sig)
        m1 = b1 * m1 + (1 - b1) * grad_v
        m2 = b2 * m2 + (1 - b2) * grad_v * grad_v
        v -= lr * (m1 / (1 - b1 ** step)) / (np.sqrt(m2 / (1 - b2 ** step)) + 1e-8)
    hard = np.clip((v >= 0).astype(np.float32), lo, hi)
    return np.clip(floor + hard, -grid.qmax, grid.qmax)
