"""The INT4 block grid and round-to-nearest (RTN).

A MatMul weight W [K, N] (y = x @ W) is cut into blocks of B consecutive rows of one column
(along the reduction axis K, the layout both TensorRT's blocked DequantizeLinear and ONNX
Runtime's MatMulNBits use); block (b, n) has one scale s and, if asymmetric, one zero point z:

    symmetric  (TensorRT, z = 0):   q = clip(round(w / s), -8, 7),   w~ = s q,
                                    s = r · max(max(w) / 7, -min(w) / 8)
    asymmetric (ONNX Runtime):      q = clip(round(w / s) + z, 0, 15),  w~ = s (q - z),
                                    s = r · (max(w, 0) - min(w, 0)) / 15,  z = round(-min(w, 0) / s)

r <= 1 is the clip ratio (1: the block's range; the clip search in awq.py picks r per block).
K need not be a multiple of B: the last block is shorter (zero padding, which rounds to 0 on
either grid since 0 is always representable).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class Grid:
    block: int
    symmetric: bool = True

    @property
    def qmin(self) -> int:
        return -8 if self.symmetric else 0

    @property
    def qmax(self) -> int:
        return 7 if self.symmetric else 15


def blocks(w: np.ndarray, block: int) -> np.ndarray:
    """W [K, N] -> [K/B, B, N] (zero padded to a multiple of B)."""
    k, n = w.shape
    pad = -k % block
    if pad:
        w = np.concatenate([w, np.zeros((pad, n), w.dtype)])
    return w.reshape(-1, block, n)


def unblocks(wb: np.ndarray, k: int) -> np.ndarray:
    return wb.reshape(-1, wb.shape[-1])[:k]


def params(wb: np.ndarray, grid: Grid, ratio: np.ndarray | float = 1.0) -> tuple[np.ndarray, np.ndarray]:
    """Scales and zero points [K/B, N] for blocks wb [K/B, B, N] (or [B, N] -> [N])."""
    lo = np.minimum(wb.min(axis=-2), 0.0) * ratio
    hi = np.maximum(wb.max(axis=-2), 0.0) * ratio
    if grid.symmetric:
        scale = np.maximum(hi / 7.0, -lo / 8.0)
        zero = np.zeros(scale.shape, np.int64)
    else:
        scale = (hi - lo) / 15.0
        zero = np.zeros(scale.shape, np.int64)
    scale = np.where(scale > 0, scale, 1.0).astype(np.float64)
    if not grid.symmetric:
        zero = np.clip(np.round(-lo / scale), 0, 15).astype(np.int64)
    return scale, zero


def codes(wb: np.ndarray, scale: np.ndarray, zero: np.ndarray, grid: Grid) -> np.ndarray:
    """Integer codes of blocks wb [..., B, N] under scale/zero [..., N]."""
    q = np.round(wb / scale[..., None, :]) + zero[..., None, :]
    return np.clip(q, grid.qmin, grid.qmax).astype(np.int64)


def dequantize(q: np.ndarray, scale: np.ndarray, zero: np.ndarray) -> np.ndarray:
    return (q - zero[..., None, :]) * scale[..., None, :]


@dataclass
class Quantized:
    """One weight's INT4 form: codes [K/B, B, N] (padding rows included), scales and zero
    points [K/B, N], the original K, and the grid."""

    q: np.ndarray
    scale: np.ndarray
    zero: np.ndarray
    k: int
    grid: Grid

    def dequantized(self) -> np.ndarray:
        """W~ [K, N] in float64: what every encoding of this weight computes."""
        return unblocks(dequantize(self.q, self.scale, self.zero), self.k)


def rtn(w: np.ndarray, grid: Grid, ratio: np.ndarray | float = 1.0) -> Quantized:
    """Round to nearest on the block grid (`ratio` [K/B, N] or a float: clip ratios)."""
    wb = blocks(np.asarray(w, np.float64), grid.block)
    scale, zero = params(wb, grid, ratio)
    return Quantized(codes(wb, scale, zero, grid), scale, zero, w.shape[0], grid)


def from_codes(q_rows: np.ndarray, scale: np.ndarray, zero: np.ndarray, grid: Grid) -> Quantized:
    """A Quantized from codes [K, N] (unpadded) and their block params."""
    k = q_rows.shape[0]
    qb = blocks(q_rows.astype(np.int64), grid.block)
    if -k % grid.block:  # padding rows: code of 0.0
        qb.reshape(-1, q_rows.shape[1])[k:] = zero[-1]
    return Quantized(qb, scale, zero, k, grid)
