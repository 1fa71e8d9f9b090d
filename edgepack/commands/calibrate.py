"""`edgepack calibrate`: observe activations over data, save their ranges."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from edgepack.calib.ranges import Ranges
from edgepack.commands.result import NOT_JSON, CommandResult
from edgepack.errors import UsageError
from edgepack.keywords import cli_keywords


@dataclass
class CalibrateReport(CommandResult):
    """JSON: the ranges file itself (`edgepack.ranges/1`). Acts as the `Ranges` it holds
    (`.tensors`, `.save()`, `.to_tensorrt_cache()`, `report[name]`)."""

    ranges: Ranges = field(metadata=NOT_JSON)
    output: str | None = field(default=None, metadata=NOT_JSON)
    tensorrt_cache: str | None = field(default=None, metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        return self.ranges.to_json()

    def text(self) -> str:
        where = f" -> {self.output}" if self.output else ""
        return f"{len(self.ranges.tensors)} tensor ranges from {self.ranges.samples} samples ({self.ranges.method}){where}"

    def __getitem__(self, name: str):
        return self.ranges[name]

    def __contains__(self, name: str) -> bool:
        return name in self.ranges

    def __getattr__(self, name: str) -> Any:
        ranges = self.__dict__.get("ranges")
        if ranges is None:
            raise AttributeError(name)
        return getattr(ranges, name)


@cli_keywords
def calibrate(model: str | os.PathLike | ir.Model, data=None, output: str | os.PathLike | None = None, *,
              method: str | None = "entropy", percentile: float = 99.99, limit: int | None = None,
              symmetric: bool = False, tensorrt_cache: str | os.PathLike | None = None, target=None,
              preprocess=None, progress: bool = True, batch_size: int = 32,
              only: set[str] | None = None) -> CalibrateReport:
    """Run `model` over `data` (a calibration folder, .npz, .npy, or an iterable of {input: array})
    and keep every float activation's range; write them to `output` (and a TensorRT calibration
    cache to `tensorrt_cache`, whose header follows `target`'s TensorRT version) when given. The
    stage function is `edgepack.calib.calibrate`. `preprocess`: an `edgepack.calib.preprocess.Preprocess`."""
    from edgepack import io
    from edgepack.calib import calibrate as observe

    if data is None:
        raise UsageError("calibrate needs --data", hint="pass a calibration folder, .npz or .npy")
    tensorrt_version = _cache_tensorrt_version(target, tensorrt_cache)  # refused before calibrating
    loaded = model if isinstance(model, ir.Model) else io.load(model)
    ranges = observe(loaded, data, method=method or "entropy", percentile=percentile, limit=limit, symmetric=symmetric,
                     progress=progress, batch_size=batch_size, only=only, preprocess=preprocess)
    if output is not None:
        ranges.save(output)
    if tensorrt_cache is not None:
        ranges.to_tensorrt_cache(tensorrt_cache, tensorrt_version=tensorrt_version)
    return CalibrateReport(ranges, None if output is None else str(output),
                           None if tensorrt_cache is None else str(tensorrt_cache))


def _cache_tensorrt_version(target, tensorrt_cache) -> str:
    """The TensorRT version a calibration cache is written for; refused for TensorRT 11 targets."""
    from edgepack.calib.ranges import tensorrt_cache_header
    from edgepack.errors import EdgepackError
    from edgepack.targets import load_target

    if target is None or not tensorrt_cache:  # a recipe passes its target to every step
        return "8.6.1"
    target = load_target(target)
    if not target.is_tensorrt:
        raise EdgepackError(f"--tensorrt-cache: target '{target.name}' uses {target.backend}, not TensorRT",
                            hint="leave out --tensorrt-cache; `edgepack quantize` makes the model for it")
    if not target.allows().get("int8_calibrator"):
        try:
            tensorrt_cache_header(target.tensorrt_version)
        except EdgepackError as exc:
            raise EdgepackError(f"--tensorrt-cache for target '{target.name}': {exc.message}",
                                hint=f"run `edgepack quantize MODEL --target {target.name} --data ...` (or "
                                     "--ranges with the ranges file this command writes): TensorRT 11 builds the "
                                     "Q/DQ model, strongly typed") from None
    return target.tensorrt_version
