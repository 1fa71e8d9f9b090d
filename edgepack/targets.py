"""Hardware targets: the schema of targets/*.toml, validated on load.

A target decides the QDQ policy, the builder settings and the profiler. Adding a device is
adding a file; a user can also pass the path of their own file wherever a target is asked for.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError, first_line
from edgepack.resources import data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BACKENDS = ("tensorrt", "onnxruntime")
PRECISIONS = ("int8", "fp16", "fp32")
ACTIVATION_SCHEMES = ("int8-symmetric-per-tensor", "uint8-asymmetric-per-tensor",
                      "int8-asymmetric-per-tensor")
DEVICE_MATCHES = ("exact", "minimum")
MAX_THREADS = 1024  # more is a typo; ORT would try to start them all
WEIGHT_SCHEMES = ("int8-symmetric-per-channel", "int8-symmetric-per-tensor")


@dataclasses.dataclass(frozen=True)
class QDQPolicy:
    """How a target wants tensors quantized. TensorRT: symmetric INT8 only, zero point 0."""

    activations: str = "int8-symmetric-per-tensor"
    weights: str = "int8-symmetric-per-channel"

    @property
    def activation_dtype(self) -> str:
        return self.activations.split("-")[0]

    @property
    def activation_symmetric(self) -> bool:
        return "-symmetric" in self.activations

    @property
    def weight_per_channel(self) -> bool:
        return self.weights.endswith("per-channel")


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    precisions: tuple[str, ...]
    qdq: QDQPolicy
    path: Path
    compute_capability: str | None = None
    dla_cores: int = 0
    sparsity: bool = False
    tensorrt_version: str | None = None
    jetpack: str | None = None
    memory_gb: float | None = None
    workspace_mb: int = 1024
    cpu_isa: str | None = None
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0  # 0: let the runtime choose
    # "exact": an engine is built on this compute capability only (a Jetson module);
    # "minimum": any GPU at or above it (a generic desktop/server target)
    device_match: str = "exact"

    @property
    def is_tensorrt(self) -> bool:
        return self.backend == "tensorrt"

    def summary(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        return data


# key -> (type(s), required). Nested tables are handled by name below.
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "description": ((str,), True),
    "backend": ((str,), True),
    "precisions": ((list,), True),
    "compute_capability": ((str,), False),
    "dla_cores": ((int,), False),
    "sparsity": ((bool,), False),
    "tensorrt_version": ((str,), False),
    "jetpack": ((str,), False),
    "memory_gb": ((int, float), False),
    "workspace_mb": ((int,), False),
    "cpu_isa": ((str,), False),
    "execution_providers": ((list,), False),
    "threads": ((int,), False),
    "device_match": ((str,), False),
    "qdq": ((dict,), True),
}


def target_dir() -> Path:
    return data_dir("targets")


def list_targets() -> list[Target]:
    return [load_target(p) for p in sorted(target_dir().glob("*.toml"))]


def load_target(name_or_path: str | Path | Target) -> Target:
    """A target by name (a file in targets/) or by the path of a TOML file."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    path = Path(text)
    if not (text.endswith(".toml") or path.is_file()):
        path = target_dir() / f"{text}.toml"
        if not path.is_file():
            known = ", ".join(p.stem for p in sorted(target_dir().glob("*.toml")))
            raise EdgepackError(f"unknown target '{text}'", hint=f"use one of: {known}, or a .toml path")
    if not path.is_file():
        raise EdgepackError(f"target file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgepackError(f"{path}: not valid TOML ({type(exc).__name__}: {first_line(exc)})",
                            hint="a target is a UTF-8 TOML file; see `edgepack targets`") from None
    except OSError as exc:
        raise EdgepackError(f"{path}: cannot read the target file ({exc.strerror})") from None
    return _validate(raw, path)


def _validate(raw: dict[str, Any], path: Path) -> Target:
    def fail(key: str, why: str, hint: str | None = None) -> EdgepackError:
        return EdgepackError(f"{path}: key '{key}' {why}", hint=hint)

    for key, value in raw.items():
        if key not in _FIELDS:
            raise fail(key, "is not a target setting", f"known keys: {', '.join(_FIELDS)}")
        types, _ = _FIELDS[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise fail(key, f"must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    for key, (_, required) in _FIELDS.items():
        if required and key not in raw:
            raise fail(key, "is missing")
    if raw["backend"] not in BACKENDS:
        raise fail("backend", f"must be one of {', '.join(BACKENDS)}, got {raw['backend']!r}")
    bad = [p for p in raw["precisions"] if p not in PRECISIONS]
    if bad or not raw["precisions"]:
        raise fail("precisions", f"must be a non-empty list of {', '.join(PRECISIONS)}; got {bad or '[]'}")
    if raw["backend"] == "tensorrt":
        cc = raw.get("compute_capability")
        if cc is None or not re.fullmatch(r"\d+\.\d+", cc):
            raise fail("compute_capability", "must be like \"8.7\" for a tensorrt target")
    elif raw.get("dla_cores", 0) or raw.get("sparsity", False):
        raise fail("dla_cores" if raw.get("dla_cores") else "sparsity", "applies to tensorrt targets only")
    if raw.get("device_match", "exact") not in DEVICE_MATCHES:
        raise fail("device_match", f"must be one of {', '.join(DEVICE_MATCHES)}, got {raw['device_match']!r}")
    for key in ("dla_cores", "workspace_mb", "threads"):
        if raw.get(key, 0) < 0:
            raise fail(key, "must not be negative")
    if raw.get("threads", 0) > MAX_THREADS:
        raise fail("threads", f"must be at most {MAX_THREADS}, got {raw['threads']}",
                   hint="0 lets the runtime use one thread per core")
    for key in ("precisions", "execution_providers"):
        bad = [v for v in raw.get(key, []) if not isinstance(v, str)]
        if bad:
            raise fail(key, f"must be a list of strings, got {bad[0]!r}")
    for key, value in raw["qdq"].items():
        if not isinstance(value, str):
            raise fail(f"qdq.{key}", f"must be a string, got {value!r}")
    qdq = raw["qdq"]
    for key in qdq:
        if key not in ("activations", "weights"):
            raise fail(f"qdq.{key}", "is not a QDQ setting", "known keys: activations, weights")
    policy = QDQPolicy(**qdq)
    if policy.activations not in ACTIVATION_SCHEMES:
        raise fail("qdq.activations", f"must be one of {', '.join(ACTIVATION_SCHEMES)}")
    if policy.weights not in WEIGHT_SCHEMES:
        raise fail("qdq.weights", f"must be one of {', '.join(WEIGHT_SCHEMES)}")
    if raw["backend"] == "tensorrt" and policy.activations != "int8-symmetric-per-tensor":
        raise fail("qdq.activations", "must be int8-symmetric-per-tensor: TensorRT takes zero point 0 only")
    fields = {k: v for k, v in raw.items() if k != "qdq"}
    fields["precisions"] = tuple(fields["precisions"])
    if "execution_providers" in fields:
        fields["execution_providers"] = tuple(fields["execution_providers"])
    if "memory_gb" in fields:
        fields["memory_gb"] = float(fields["memory_gb"])
    return Target(**fields, qdq=policy, path=path)
