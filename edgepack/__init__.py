"""edgepack: take a trained ONNX model to a fast, small, verified engine on an edge device.

The public API is imported lazily, so `import edgepack` stays cheap and works on any CPU
machine (TensorRT and other heavy dependencies load only when used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from edgepack.errors import EdgepackError, InternalError  # noqa: E402

# public name -> module that defines it
_API = {
    "load": "edgepack.io",
    "save": "edgepack.io",
    "inspect_model": "edgepack.inspection",
    "load_target": "edgepack.targets",
    "list_targets": "edgepack.targets",
    "prune": "edgepack.passes.prune",
    "clip_weights": "edgepack.passes.clip_weights",
    "lowrank": "edgepack.passes.lowrank",
    "to_fp16": "edgepack.passes.fp16",
    "pack": "edgepack.pack.format",
    "unpack": "edgepack.pack.format",
    "profile_model": "edgepack.profile.profiler",
    "profile_pair": "edgepack.profile.profiler",
    "ProfileOptions": "edgepack.profile.profiler",
    "check_regression": "edgepack.profile.regression",
    "History": "edgepack.profile.history",
    "Budget": "edgepack.profile.timing",
    "optimize": "edgepack.passes.pipeline",
    "build_pipeline": "edgepack.passes.pipeline",
    "calibrate": "edgepack.calib.calibrate",
    "Ranges": "edgepack.calib.ranges",
    "quantize": "edgepack.quant.quantize",
    "check_qdq": "edgepack.quant.check_qdq",
    "compare_models": "edgepack.quant.compare",
    "build": "edgepack.backends",
    "load_artifact": "edgepack.backends",
    "Artifact": "edgepack.backends",
    "load_recipe": "edgepack.recipe",
    "run_recipe": "edgepack.recipe",
    "write_report": "edgepack.report.html",
    "run_demo": "edgepack.demo",
    "compare": "edgepack.quant.compare",
}

__all__ = ["EdgepackError", "InternalError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgepack' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
