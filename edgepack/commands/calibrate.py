"""`edgepack calibrate`: observe activations over data, save their ranges."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from edgepack.calib.ranges import Ranges
from edgepack.commands.result import NOT_JSON, CommandResult
from edgepack.errors import UsageError


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


def calibrate(model: str | os.PathLike | ir.Model, data=None, output: str | os.PathLike | None = None, *,
              method: str | None = "entropy", percentile: float = 99.99, limit: int | None = None,
              symmetric: bool = False, tensorrt_cache: str | os.PathLike | None = None,
              progress: bool = True, batch_size: int = 32, only: set[str] | None = None) -> CalibrateReport:
    """Run `model` over `data` (a calibration folder, .npz, .npy, or an iterable of {input: array})
    and keep every float activation's range; write them to `output` (and a TensorRT calibration
    cache to `tensorrt_cache`) when given. The stage function is `edgepack.calib.calibrate`."""
    from edgepack import io
    from edgepack.calib import calibrate as observe

    if data is None:
        raise UsageError("calibrate needs --data", hint="pass a calibration folder, .npz or .npy")
    loaded = model if isinstance(model, ir.Model) else io.load(model)
    ranges = observe(loaded, data, method=method or "entropy", percentile=percentile, limit=limit, symmetric=symmetric,
                     progress=progress, batch_size=batch_size, only=only)
    if output is not None:
        ranges.save(output)
    if tensorrt_cache is not None:
        ranges.to_tensorrt_cache(tensorrt_cache)
    return CalibrateReport(ranges, None if output is None else str(output),
                           None if tensorrt_cache is None else str(tensorrt_cache))
