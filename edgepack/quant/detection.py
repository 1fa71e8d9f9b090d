"""Box-level agreement of a detector with its FP32 self: YOLOX decode, class-aware NMS, matching.

A detector's INT8 quality is not an output SQNR: post-processing thresholds scores and suppresses
overlaps, so a small logit error near the threshold drops or adds a box. What counts is whether
the INT8 model finds the boxes FP32 finds:

    output [N, 4 + 1 + C] ──► decode ──► score = obj · max cls > threshold ──► NMS per class ──► boxes
    recall    = matched / FP32 boxes      a match: same class, IoU >= 0.5, each FP32 box used once
    precision = matched / INT8 boxes      (greedy, INT8 boxes by descending score)

YOLOX outputs come in two forms: raw (reg = x, y offsets in cells and log w, log h; the official
ONNX releases) and decoded in the graph (`decode_in_inference`: boxes already in pixels, xy =
(offset + grid) · stride, wh = exp(log wh) · stride). `decode(..., decoded=True)` reads the second.
"""
from __future__ import annotations

from typing import Sequence

import numpy as np

STRIDES = (8, 16, 32)
Detections = tuple[np.ndarray, np.ndarray, np.ndarray]  # boxes xyxy [K, 4], scores [K], classes [K]


def grids(size: int, strides: Sequence[int] = STRIDES) -> tuple[np.ndarray, np.ndarray]:
    """The (x, y) cell of every output row and its stride, in the YOLOX order (level, row, column)."""
    cells, strides_of = [], []
    for s in strides:
        g = size // s
        ys, xs = np.meshgrid(np.arange(g), np.arange(g), indexing="ij")
        cells.append(np.stack([xs.reshape(-1), ys.reshape(-1)], 1))
        strides_of.append(np.full(g * g, s))
    return np.concatenate(cells).astype(np.float32), np.concatenate(strides_of).astype(np.float32)[:, None]


def decode(output: np.ndarray, size: int, *, decoded: bool = False, score_threshold: float = 0.3,
           iou_threshold: float = 0.45, max_detections: int = 100,
           strides: Sequence[int] = STRIDES) -> Detections:
    """One image's [N, 5 + C] output -> boxes (xyxy, pixels), scores, classes after class-aware NMS,
    the `max_detections` best kept (COCO evaluation keeps 100 per image)."""
    if decoded:
        xy, wh = output[:, :2], output[:, 2:4]
    else:
        cells, stride = grids(size, strides)
        xy = (output[:, :2] + cells) * stride
        wh = np.exp(np.clip(output[:, 2:4], -10, 10)) * stride
    scores_all = output[:, 4:5] * output[:, 5:]
    cls = scores_all.argmax(1)
    score = scores_all.max(1)
    keep = score > score_threshold
    boxes = np.concatenate([xy - wh / 2, xy + wh / 2], 1)[keep]
    score, cls = score[keep], cls[keep]
    chosen = []
    for c in np.unique(cls):
        idx = np.flatnonzero(cls == c)
        idx = idx[np.argsort(-score[idx], kind="stable")]
        while len(idx):
            chosen.append(idx[0])
            idx = idx[1:][iou(boxes[idx[0]][None], boxes[idx[1:]])[0] < iou_threshold]
    chosen = np.array(sorted(chosen, key=lambda i: -score[i])[:max_detections], np.int64)
    return boxes[chosen], score[chosen], cls[chosen]


def iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Pairwise IoU of xyxy boxes: [len(a), len(b)]."""
    lt = np.maximum(a[:, None, :2], b[None, :, :2])
    rb = np.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = np.prod(np.clip(rb - lt, 0, None), axis=2)
    area = lambda x: np.prod(np.clip(x[:, 2:] - x[:, :2], 0, None), axis=1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def agreement(reference: list[Detections], candidate: list[Detections],
              threshold: float = 0.5) -> tuple[float, float, int, int]:
    """(recall, precision, FP32 boxes, INT8 boxes) over images; see the module docstring."""
    matched = n_ref = n_cand = 0
    for (rb, _, rc), (cb, _, cc) in zip(reference, candidate):
        n_ref, n_cand = n_ref + len(rb), n_cand + len(cb)
        if not len(rb) or not len(cb):
            continue
        overlaps = iou(cb, rb) * (cc[:, None] == rc[None, :])
        used = np.zeros(len(rb), bool)
        for i in range(len(cb)):
            j = int(np.argmax(np.where(used, -1, overlaps[i])))
            if not used[j] and overlaps[i, j] >= threshold:
                used[j] = True
                matched += 1
    return matched / max(n_ref, 1), matched / max(n_cand, 1), n_ref, n_cand


def detect(session, images: np.ndarray, *, decoded: bool = False, input_name: str | None = None,
           **options) -> list[Detections]:
    """Run an ORT session on [n, 3, S, S] images one at a time (fixed batch 1) and decode each."""
    name = input_name or session.get_inputs()[0].name
    size = images.shape[-1]
    return [decode(session.run(None, {name: images[i:i + 1]})[0][0], size, decoded=decoded, **options)
            for i in range(len(images))]
