"""Streaming observers: what calibration learns about one tensor, in memory that does not grow
with the number of samples.

`HistogramObserver` keeps a histogram of fixed size over [-R, R]. When a batch exceeds R, R doubles
as often as needed and adjacent bins merge in pairs, so re-binning is exact (no resampling error).
Ranges for each method are computed from the histogram at the end:
  minmax      the exact running min and max
  percentile  the p-th percentile of |x| (symmetric) or of each tail (asymmetric)
  entropy     TensorRT's method: the threshold T whose 128-level quantization of |x| clipped at T
              has the least KL divergence from the clipped distribution
  mse         the T that minimizes expected squared error: rounding error step^2/12 inside
              [-T, T], plus (|x| - T)^2 for clipped values
"""
from __future__ import annotations

import numpy as np

METHODS = ("minmax", "percentile", "entropy", "mse")


class HistogramObserver:
    def __init__(self, bins: int = 4096):
        assert bins % 4 == 0
        self.bins = bins
        self.hist = np.zeros(bins, np.float64)
        self.radius = 0.0
        self.min, self.max = np.inf, -np.inf
        self.count = 0

    def update(self, x: np.ndarray, need_histogram: bool = True) -> None:
        x = np.asarray(x, np.float32).reshape(-1)
        if x.size == 0:
            return
        lo, hi = float(x.min()), float(x.max())
        if not (np.isfinite(lo) and np.isfinite(hi)):
            raise FloatingPointError("NaN or Inf")
        self.min, self.max = min(self.min, lo), max(self.max, hi)
        self.count += x.size
        if not need_histogram:
            return
        peak = max(abs(lo), abs(hi))
        if self.radius == 0.0:
            self.radius = peak or 1e-8
        while peak > self.radius:
            self._double()
        # bin index in float32, in place: about 2x faster than clip + int64 on large tensors
        idx = x * np.float32(self.bins / (2 * self.radius))
        idx += np.float32(self.bins / 2)
        np.clip(idx, 0, self.bins - 1, out=idx)
        self.hist += np.bincount(idx.astype(np.int32), minlength=self.bins)

    def _double(self) -> None:
        """Cover [-2R, 2R] with the same number of bins: merge pairs, pad a quarter each side."""
        merged = self.hist.reshape(-1, 2).sum(axis=1)
        pad = self.bins // 4
        self.hist = np.concatenate([np.zeros(pad), merged, np.zeros(pad)])
        self.radius *= 2

    # -- results
    def abs_histogram(self) -> tuple[np.ndarray, float]:
        """Histogram of |x| with bins/2 bins over [0, R], and the bin width."""
        half = self.bins // 2
        folded = self.hist[half:] + self.hist[:half][::-1]
        return folded, self.radius / half

    def range(self, method: str, *, symmetric: bool, percentile: float = 99.99) -> tuple[float, float]:
        if self.count == 0:
            return 0.0, 0.0
        if method == "minmax":
            lo, hi = self.min, self.max
            if symmetric:
                t = max(abs(lo), abs(hi))
                return -t, t
            return lo, hi
        if method == "percentile" and not symmetric:
            cdf = np.cumsum(self.hist) / self.hist.sum()
            width = 2 * self.radius / self.bins
            lo = -self.radius + width * np.searchsorted(cdf, 1 - percentile / 100)
            hi = -self.radius + width * (np.searchsorted(cdf, percentile / 100) + 1)
            return max(lo, self.min), min(hi, self.max)
        if method == "entropy":  # unsigned tensors (after Relu) have twice the levels to spend
            threshold = self._entropy(levels=128 if symmetric or self.min < 0 else 256)
        else:
            threshold = {"percentile": self._percentile, "mse": self._mse}[method](percentile)
        if symmetric:
            return -threshold, threshold
        return max(self.min, -threshold), min(self.max, threshold)

    def _percentile(self, percentile: float) -> float:
        hist, width = self.abs_histogram()
        cdf = np.cumsum(hist) / hist.sum()
        return float(min(width * (np.searchsorted(cdf, percentile / 100) + 1), max(abs(self.min), abs(self.max))))

    def _entropy(self, _: float = 0.0, levels: int = 128) -> float:
        hist, width = self.abs_histogram()
        hist = hist.copy()
        if len(hist) > 1:
            hist[0] = hist[1]  # the spike of exact zeros (after Relu) would dominate the divergence
        last = int(np.flatnonzero(hist)[-1]) + 1 if hist.any() else 1
        if last <= levels:
            return width * last
        csum = np.concatenate([[0.0], np.cumsum(hist)])
        nz_sum = np.concatenate([[0], np.cumsum(hist > 0)])
        best, best_kl = last, np.inf
        for i in range(levels, last + 1, max(1, (last - levels) // 128)):
            p = hist[:i].copy()
            p[-1] += csum[-1] - csum[i]  # outliers clip into the last bin
            edges = np.linspace(0, i, levels + 1).astype(np.int64)
            chunk_sum = csum[edges[1:]] - csum[edges[:-1]]
            chunk_nz = nz_sum[edges[1:]] - nz_sum[edges[:-1]]
            per_bin = np.divide(chunk_sum, chunk_nz, out=np.zeros(levels), where=chunk_nz > 0)
            q = np.where(hist[:i] > 0, np.repeat(per_bin, np.diff(edges)), 0.0)
            mask = p > 0
            pn = p[mask] / p.sum()
            qn = np.maximum(q[mask] / max(q.sum(), 1e-30), 1e-12)
            kl = float(np.sum(pn * np.log(pn / qn)))
            if kl < best_kl:
                best, best_kl = i, kl
        return width * best

    def _mse(self, _: float = 0.0, candidates: int = 200) -> float:
        hist, width = self.abs_histogram()
        centers = (np.arange(len(hist)) + 0.5) * width
        peak = max(abs(self.min), abs(self.max))
        best, best_err = peak, np.inf
        for t in np.linspace(peak / candidates, peak, candidates):
            step = t / 127.5
            inside = centers <= t
            err = (hist[inside].sum() * step * step / 12) + float(np.sum(hist[~inside] * (centers[~inside] - t) ** 2))
            if err < best_err:
                best, best_err = t, err
        return float(best)


class ChannelMeanObserver:
    """Running mean of a tensor per channel (axis 1), for bias correction: a vector of C floats."""

    def __init__(self):
        self.sum: np.ndarray | None = None
        self.count = 0

    def update(self, x: np.ndarray) -> None:
        if x.ndim < 2 or x.size == 0:
            return
        axes = (0, *range(2, x.ndim))
        total = x.sum(axis=axes, dtype=np.float64)
        if self.sum is None or self.sum.shape != total.shape:
            self.sum, self.count = np.zeros_like(total), 0
        self.sum += total
        self.count += x.size // x.shape[1]

    def mean(self) -> list[float] | None:
        return None if self.sum is None or not self.count else (self.sum / self.count).tolist()

