"""Ranges: the result of calibration, a file you can keep and quantize from again."""
from __future__ import annotations

import json
import struct
from dataclasses import dataclass, field
from pathlib import Path

from edgepack.errors import EdgepackError

SCHEMA = "edgepack.ranges/1"


@dataclass
class Ranges:
    """Per-tensor [min, max] for one calibration method; `symmetric` ranges are [-T, T]."""

    method: str
    tensors: dict[str, tuple[float, float]] = field(default_factory=dict)
    symmetric: bool = False
    samples: int = 0
    model_sha256: str | None = None
    percentile: float | None = None
    means: dict[str, list[float]] = field(default_factory=dict)  # per-channel means (bias correction)
    preprocess: dict | None = None  # Preprocess.to_json() of the data, so a later step reuses it

    def __getitem__(self, name: str) -> tuple[float, float]:
        return self.tensors[name]

    def __contains__(self, name: str) -> bool:
        return name in self.tensors

    def to_json(self) -> dict:
        return {"schema": SCHEMA, "method": self.method, "symmetric": self.symmetric, "samples": self.samples,
                "percentile": self.percentile, "model_sha256": self.model_sha256,
                **({"preprocess": self.preprocess} if self.preprocess else {}),
                "tensors": {k: {"min": lo, "max": hi, **({"mean": self.means[k]} if k in self.means else {})}
                            for k, (lo, hi) in self.tensors.items()}}

    def save(self, path: str | Path) -> Path:
        from edgepack.cli.common import write_text_atomic

        return write_text_atomic(path, json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: str | Path) -> "Ranges":
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise EdgepackError(f"ranges file not found: {path}", hint="run edgepack calibrate first") from None
        except json.JSONDecodeError as exc:
            raise EdgepackError(f"{path}: not valid JSON ({exc})") from None
        if not isinstance(data, dict) or data.get("schema") != SCHEMA:
            raise EdgepackError(f"{path}: not an edgepack ranges file (schema {SCHEMA})")
        try:
            tensors = {k: (float(v["min"]), float(v["max"])) for k, v in data["tensors"].items()}
            means = {k: [float(m) for m in v["mean"]] for k, v in data["tensors"].items() if "mean" in v}
        except (KeyError, TypeError, ValueError):
            raise EdgepackError(f"{path}: malformed 'tensors' entry") from None
        preprocess = data.get("preprocess")
        if preprocess is not None:
            from edgepack.calib.preprocess import Preprocess

            preprocess = Preprocess.from_manifest(preprocess, f"{path}: preprocess").to_json()
        return cls(data["method"], tensors, bool(data.get("symmetric")), int(data.get("samples", 0)),
                   data.get("model_sha256"), data.get("percentile"), means, preprocess)

    def to_tensorrt_cache(self, path: str | Path, version: str | None = None, *,
                          tensorrt_version: str = "8.6.1") -> Path:
        """TensorRT's calibration cache for implicit INT8 (an IInt8Calibrator reads it), TensorRT
        8.x and 10.x only: TensorRT 11 removed implicit quantization and the calibrators.

        A header line `TRT-<version number>-<calibrator>` (8.6.1 -> 8601, 10.3.0 -> 100300), then
        `tensor: <hex>` where hex is the big-endian float32 scale max|range| / 127. `version`
        overrides the header.
        """
        from edgepack.cli.common import write_text_atomic

        lines = [version or tensorrt_cache_header(tensorrt_version, self.method)]
        for name, (lo, hi) in self.tensors.items():
            scale = max(abs(lo), abs(hi)) / 127.0 or 1e-8
            lines.append(f"{name}: {struct.pack('>f', scale).hex()}")
        return write_text_atomic(path, "\n".join(lines) + "\n")


def tensorrt_cache_header(tensorrt_version: str, method: str = "entropy") -> str:
    """The first line of a calibration cache for this TensorRT (8.x / 10.x); EdgepackError on 11+."""
    from edgepack.backends.tensorrt_versions import version_tuple

    v = version_tuple(tensorrt_version) + (0, 0)
    if not v[:1] or v[0] >= 11:
        raise EdgepackError(
            f"a TensorRT calibration cache is for implicit INT8 quantization, which TensorRT "
            f"{tensorrt_version} does not have (TensorRT 11 removed the INT8 builder flag and the calibrators)",
            hint="use `edgepack quantize MODEL --target T --ranges ranges.json`: TensorRT 11 builds the Q/DQ model")
    number = v[0] * 1000 + v[1] * 100 + v[2] if v[0] < 10 else v[0] * 10000 + v[1] * 100 + v[2]
    calibrator = "MinMaxCalibration" if method == "minmax" else "EntropyCalibration2"
    return f"TRT-{number}-{calibrator}"
