"""Weight sharing (Deep Compression, Han et al. 2016): a per-layer 1-D k-means codebook.

Centroids start evenly spaced between min and max (the paper's linear initialisation, which keeps
the rare large weights represented), then Lloyd iterations; each weight becomes the index of its
nearest centroid. On sorted centroids the nearest one is found with a binary search.
"""
from __future__ import annotations

import numpy as np


def kmeans_1d(values: np.ndarray, k: int, *, iterations: int = 20) -> tuple[np.ndarray, np.ndarray]:
    """(centroids[k'] float64 sorted, indices[len(values)] uint8/uint16), k' <= k."""
    x = values.astype(np.float64).reshape(-1)
    unique = np.unique(x)
    if unique.size <= k:  # already few values: exact
        return unique, np.searchsorted(unique, x).astype(_index_dtype(unique.size))
    centroids = np.linspace(x.min(), x.max(), k)
    for _ in range(iterations):
        index = nearest(centroids, x)
        sums = np.bincount(index, weights=x, minlength=k)
        counts = np.bincount(index, minlength=k)
        updated = np.where(counts > 0, sums / np.maximum(counts, 1), centroids)
        updated.sort()
        if np.allclose(updated, centroids, rtol=0, atol=1e-12):
            break
        centroids = updated
    index = nearest(centroids, x)
    return centroids, index.astype(_index_dtype(k))


def nearest(centroids: np.ndarray, x: np.ndarray) -> np.ndarray:
    """Index of the nearest of the sorted `centroids` for each x."""
    right = np.clip(np.searchsorted(centroids, x), 1, len(centroids) - 1)
    left = right - 1
    return np.where(np.abs(x - centroids[left]) <= np.abs(centroids[right] - x), left, right)


def _index_dtype(k: int):
    return np.uint8 if k <= 256 else np.uint16
