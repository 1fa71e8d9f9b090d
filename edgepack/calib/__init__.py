"""Calibration: data readers, preprocessing, streaming observers, ranges.

Imported lazily: `from edgepack.calib.preprocess import ...` (the CLI's flags) must not load
ONNX Runtime or onnx-ir, so that `edgepack --help` starts fast."""
from __future__ import annotations

import importlib

_API = {"calibrate": "edgepack.calib.calibrate", "Preprocess": "edgepack.calib.preprocess",
        "Ranges": "edgepack.calib.ranges"}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgepack.calib' has no attribute {name!r}")
