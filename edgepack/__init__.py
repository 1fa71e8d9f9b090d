"""edgepack: take a trained ONNX model to a fast, small, verified engine on an edge device.

The public API is imported lazily, so `import edgepack` stays cheap and works on any CPU
machine (TensorRT and other heavy dependencies load only when used).
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"

from edgepack.errors import EdgepackError, InternalError  # noqa: E402

# public name -> module that defines it. The commands (one per `edgepack <command>`, taking the
# CLI's options as keywords and returning a typed result with to_json()) come from
# edgepack.commands; the stage-level functions they are built on keep their names. `pack`,
# `profile`, `report` and `targets` also name subpackages/modules of edgepack (an import replaces
# such an attribute with the module), so those commands are pack_model, profile_artifact,
# report_run and describe_targets; `pack` stays for old callers (the format-level function).
_API = {
    # commands: the same options, files and JSON as the CLI
    "inspect": "edgepack.commands.inspect",
    "optimize": "edgepack.commands.optimize",
    "prune": "edgepack.commands.prune",
    "compress": "edgepack.commands.compress",
    "pack_model": "edgepack.commands.pack",
    "unpack_model": "edgepack.commands.pack",
    "unpack": "edgepack.commands.pack",
    "calibrate": "edgepack.commands.calibrate",
    "quantize": "edgepack.quant.quantize",
    "compare": "edgepack.quant.compare",
    "check_qdq": "edgepack.commands.check_qdq",
    "build": "edgepack.backends",
    "profile_artifact": "edgepack.commands.profile",
    "check": "edgepack.commands.profile",
    "history": "edgepack.commands.history",
    "describe_targets": "edgepack.commands.targets",
    "report_run": "edgepack.commands.report",
    "run": "edgepack.commands.run",
    "run_demo": "edgepack.demo",
    "CommandResult": "edgepack.commands.result",
    # models and targets
    "load": "edgepack.io",
    "save": "edgepack.io",
    "inspect_model": "edgepack.inspection",
    "load_target": "edgepack.targets",
    "list_targets": "edgepack.targets",
    "load_artifact": "edgepack.backends",
    "Artifact": "edgepack.backends",
    # stage-level functions under the commands
    "clip_weights": "edgepack.passes.clip_weights",
    "lowrank": "edgepack.passes.lowrank",
    "to_fp16": "edgepack.passes.fp16",
    "build_pipeline": "edgepack.passes.pipeline",
    "Ranges": "edgepack.calib.ranges",
    "compare_models": "edgepack.quant.compare",
    "profile_model": "edgepack.profile.profiler",
    "profile_pair": "edgepack.profile.profiler",
    "ProfileOptions": "edgepack.profile.profiler",
    "check_regression": "edgepack.profile.regression",
    "History": "edgepack.profile.history",
    "Budget": "edgepack.profile.timing",
    "pack": "edgepack.pack.format",
    "load_recipe": "edgepack.recipe",
    "run_recipe": "edgepack.recipe",
    "write_report": "edgepack.report.html",
}

__all__ = ["EdgepackError", "InternalError", "__version__", *_API]


def __getattr__(name: str):
    if name in _API:
        return getattr(importlib.import_module(_API[name]), name)
    raise AttributeError(f"module 'edgepack' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
