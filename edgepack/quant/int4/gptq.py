"""GPTQ (Frantar et al. 2023): quantize W one input row at a time and push each row's rounding
error onto the rows not yet quantized, weighted by the inverse Hessian of the layer's loss.

For a layer y = x @ W with inputs X [n, K], the output error of W~ is tr((W~ - W)ᵀ H (W~ - W))
with H = XᵀX. Quantizing row k to q_k and updating the remaining rows F by

    δ_F = -(w_k - q_k) / [H⁻¹]_kk · [H⁻¹]_{k,F}

is the optimal (OBS) compensation. With U the upper Cholesky factor of H⁻¹ the update of row k
uses row k of U only, so the rows are processed in order. Lazy batches: the updates are applied
within a batch of `batch` rows at once and to the rest of W once per batch (one matrix product),
which is what makes it fast. Damping adds `damp` · mean(diag H) to the diagonal (H of a few
hundred tokens is singular); rows with H_kk = 0 (dead inputs) are quantized as they are.
Block scales are set from the current (already updated) rows of a block when its first row is
reached (a batch is a whole number of blocks, so a block is never split between batches).

`act_order`: rows are processed in order of decreasing H_kk (the inputs with the largest
activations first, while the most rows are left to absorb their error), with "static groups":
the block scales are fixed from W before GPTQ starts, so the blocks stay contiguous in K and
the result is encodable as is (no g_idx permutation in the file).
"""
from __future__ import annotations

import numpy as np

from edgepack.quant.int4.grid import Grid, Quantized, codes, from_codes, params


def gptq(w: np.ndarray, hessian: np.ndarray, grid: Grid, *, damp: float = 0.01,
         batch: int = 128, act_order: bool = True) -> Quantized:
    """GPTQ codes for W [K, N] given H = XᵀX [K, K] of the layer's calibration inputs."""
    w = np.array(w, np.float64)  # a copy: updated in place
    k, n = w.shape
    h = np.array(hessian, np.float64)
    b = grid.block
    if act_order:
        from edgepack.quant.int4.grid import blocks

        static = params(blocks(w, b), grid)
        perm = np.argsort(-np.diag(h), kind="stable")
        w, h = w[perm], h[perm][:, perm]
    else:
        static, perm = None, np.arange(k)
    dead = np.diag(h) <= 0
    h[dead, dead] = 1.0
    h[np.diag_indices(k)] += damp * float(np.mean(np.diag(h)))
    u = _upper_cholesky_of_inverse(h)
    batch = max(b, batch // b * b)
    q_rows = np.zeros((k, n), np.int64)
    n_blocks = -(-k // b)
    scale, zero = static if static is not None else (np.zeros((n_blocks, n)), np.zeros((n_blocks, n), np.int64))
    for i1 in range(0, k, batch):
        i2 = min(i1 + batch, k)
        w1 = w[i1:i2]             # a view: updates land in w
        err = np.zeros_like(w1)
        u1 = u[i1:i2, i1:i2]
        for i in range(i2 - i1):
            row = i1 + i
            if static is None and row % b == 0:
                s, z = params(w1[i:i + b], grid)
                scale[row // b], zero[row // b] = s, z
            blk = perm[row] // b
            q = codes(w1[i][None, :], scale[blk], zero[blk], grid)[0]
            q_rows[perm[row]] = q
            deq = (q - zero[blk]) * scale[blk]
            e = (w1[i] - deq) / u1[i, i]
            w1[i + 1:] -= np.outer(u1[i, i + 1:], e)
            err[i] = e
        w[i2:] -= u[i1:i2, i2:].T @ err
    return from_codes(q_rows, scale, zero, grid)


def _upper_cholesky_of_inverse(h: np.ndarray) -> np.ndarray:
    """U with UᵀU = H⁻¹ (U upper triangular), retrying with more damping if H is not positive
    definite in floating point."""
    for extra in (0.0, 1e-4, 1e-2, 1e-1):
        try:
            hd = h + extra * float(np.mean(np.diag(h))) * np.eye(len(h))
            inv = np.linalg.inv(np.linalg.cholesky(hd))      # L⁻¹, H = L Lᵀ
            return np.linalg.cholesky(inv.T @ inv).T          # H⁻¹ = L⁻ᵀ L⁻¹
        except np.linalg.LinAlgError:
            continue
    raise np.linalg.LinAlgError("Hessian is not positive definite even with damping")


def layer_error(w: np.ndarray, w_q: np.ndarray, hessian: np.ndarray) -> float:
    """‖X W~ − X W‖² = tr(Eᵀ H E), E = W~ − W: the output error GPTQ minimises."""
    e = np.asarray(w_q, np.float64) - np.asarray(w, np.float64)
    return float(np.sum((hessian @ e) * e))
