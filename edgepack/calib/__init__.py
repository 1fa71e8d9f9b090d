"""Calibration: data readers, preprocessing, streaming observers, ranges.

Imported lazily: `from edgepack.calib.preprocess import ...` (the CLI's flags) must not load
ONNX Runtime or onnx-ir, so that `edgepack --help` starts fast. `edgepack.calib.calibrate` is the
function (as it always was), not its module, even after the module is imported."""
from __future__ import annotations

import importlib
import sys
import types

_API = {"calibrate": "edgepack.calib.calibrate", "Preprocess": "edgepack.calib.preprocess",
        "Ranges": "edgepack.calib.ranges"}
__all__ = list(_API)


def __getattr__(name: str):
    if name in _API:
        value = getattr(importlib.import_module(_API[name]), name)
        types.ModuleType.__setattr__(sys.modules[__name__], name, value)
        return value
    raise AttributeError(f"module 'edgepack.calib' has no attribute {name!r}")


class _Package(types.ModuleType):
    def __setattr__(self, name, value):
        # importing the submodule edgepack.calib.calibrate would bind its module to the name
        if name in _API and isinstance(value, types.ModuleType) and value.__name__ == _API[name]:
            return
        super().__setattr__(name, value)


sys.modules[__name__].__class__ = _Package
