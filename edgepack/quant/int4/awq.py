"""AWQ (Lin et al. 2024): protect the weights that meet large activations by scaling them up
before rounding, and search each block's clip ratio against the layer's output error.

Scaling. For input channel k scaled by s_k, y = (x / s) @ (diag(s) W) is exact in float; in INT4,
row k of diag(s) W gets a relatively finer grid, so channels with large |x_k| (the salient ones)
lose less. AWQ searches s = mean|x|^α (normalised by sqrt(max · min)) over a grid of α in [0, 1]
and keeps the α whose rounded layers have the smallest output error

    Σ_layers tr(Eᵀ H E),   E = Q(diag(s) W) / s − W,   H = XᵀX

(computed from the Hessian: no activations are kept). The division x / s is folded into the op
that produces x (an RMSNorm's gamma, the up/v projection's columns: quant/smoothquant.py's
groups), so it costs nothing at run time; layers whose input cannot absorb it are only clipped.

Clip search. For block (b, n) and ratio r in CLIP_RATIOS, the block's share of the output error
is e_rᵀ H_bb e_r with e_r = Q_r(w_bn) − w_bn and H_bb the block's diagonal Hessian block; the
ratio with the smallest error is kept (r < 1 trades the block's extremes for finer steps).
"""
from __future__ import annotations

import numpy as np

from edgepack.quant.int4.grid import Grid, Quantized, blocks, codes, dequantize, params, rtn, unblocks

ALPHAS = np.linspace(0.0, 1.0, 21)
CLIP_RATIOS = np.linspace(1.0, 0.5, 11)


def search_scales(weights: list[np.ndarray], hessian: np.ndarray, mean_abs: np.ndarray,
                  grid: Grid) -> tuple[np.ndarray, float]:
    """(s [K], α) minimising the summed output error of RTN-rounded diag(s) W over `weights`
    (all read the same input; H and mean|x| of that input)."""
    mean_abs = np.maximum(np.asarray(mean_abs, np.float64), 1e-8)
    best = (np.inf, np.ones_like(mean_abs), 0.0)
    for alpha in ALPHAS:
        s = mean_abs ** alpha
        s = s / np.sqrt(s.max() * s.min())
        error = 0.0
        for w in weights:
            deq = rtn(w * s[:, None], grid).dequantized() / s[:, None]
            e = deq - w
            error += float(np.sum((hessian @ e) * e))
        if error < best[0]:
            best = (error, s, float(alpha))
    return best[1], best[2]


def clip_search(w: np.ndarray, hessian: np.ndarray, grid: Grid) -> Quantized:
    """RTN with the clip ratio per block that minimises its output error under H."""
    w = np.asarray(w, np.float64)
    k, n = w.shape
    b = grid.block
    wb = blocks(w, b)
    pad = wb.shape[0] * b - k
    h = np.pad(np.asarray(hessian, np.float64), ((0, pad), (0, pad)))
    ratio = np.ones((wb.shape[0], n))
    for i in range(wb.shape[0]):
        hb = h[i * b:(i + 1) * b, i * b:(i + 1) * b]
        best = np.full(n, np.inf)
        for r in CLIP_RATIOS:
            scale, zero = params(wb[i], grid, r)
            e = dequantize(codes(wb[i], scale, zero, grid), scale, zero) - wb[i]
            err = np.sum((hb @ e) * e, axis=0)
            better = err < best
            best[better], ratio[i, better] = err[better], r
    return rtn(w, grid, ratio)


def quantize_group(weights: list[np.ndarray], hessian: np.ndarray, mean_abs: np.ndarray | None,
                   grid: Grid) -> tuple[list[Quantized], np.ndarray | None]:
    """AWQ for layers sharing one input: (their quantized weights, the scales s the input must be
    divided by, or None when `mean_abs` is None: no scaling, clip search only)."""
    if mean_abs is None:
        return [clip_search(w, hessian, grid) for w in weights], None
    s, _ = search_scales(weights, hessian, mean_abs, grid)
    scaled_h = hessian / s[:, None] / s[None, :]   # H of x / s
    return [clip_search(w * s[:, None], scaled_h, grid) for w in weights], s


__all__ = ["quantize_group", "clip_search", "search_scales", "unblocks"]
