"""The build manifest: what an artifact was built from, for which target, with what, on what.

It is written beside the artifact as `<artifact>.manifest.json`. A TensorRT engine only runs on
the GPU and TensorRT version it was built with, so loading one checks the manifest against the
machine first (`check_runtime`), and refuses a mismatch with a message instead of a crash.
"""
from __future__ import annotations

import hashlib
import json
import os
import platform
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError

SCHEMA = "edgepack.build/1"
_CHUNK = 2**20


def sha256_file(path: str | os.PathLike) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(_CHUNK), b""):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(path: str | os.PathLike) -> str:
    """sha256 of a model file and, in order, every external data file beside it that it reads."""
    path = Path(path)
    digest = hashlib.sha256(bytes.fromhex(sha256_file(path)))
    data = path.with_name(path.name + ".data")
    if data.is_file():
        digest.update(bytes.fromhex(sha256_file(data)))
    return digest.hexdigest()


def manifest_path(artifact: str | os.PathLike) -> Path:
    artifact = Path(artifact)
    return artifact.with_name(artifact.name + ".manifest.json")


def make_manifest(*, backend: str, target, precision: str, model_path: str | os.PathLike,
                  artifact: str | os.PathLike, versions: dict[str, str], device: Any,
                  flags: dict[str, Any], build_seconds: float,
                  files: list[str] | None = None, io: dict[str, Any] | None = None) -> dict[str, Any]:
    """The manifest of one build; `artifact` and `files` are stored relative to the manifest."""
    artifact = Path(artifact)
    return {
        "schema": SCHEMA,
        "backend": backend,
        "target": target.name,
        "target_file": str(target.path),
        "precision": precision,
        "model": str(model_path),
        "model_sha256": model_sha256(model_path),
        "artifact": artifact.name,
        "artifact_sha256": sha256_file(artifact),
        "files": {name: sha256_file(artifact.with_name(name)) for name in files or [artifact.name]},
        "versions": {"edgepack": _edgepack_version(), "python": platform.python_version(), **versions},
        "device": device,
        "flags": flags,
        "io": io or {},
        "build_seconds": round(build_seconds, 3),
    }


def find_manifest(artifact: Path) -> Path:
    """`<artifact>.manifest.json`, or for the twin of an ONNX Runtime build (X.ort beside X.onnx,
    or the reverse) the manifest of the file it was built with."""
    candidates = [manifest_path(artifact)]
    if artifact.suffix in (".onnx", ".ort"):
        candidates.append(manifest_path(artifact.with_suffix(".ort" if artifact.suffix == ".onnx" else ".onnx")))
    for path in candidates:
        if path.is_file():
            return path
    raise EdgepackError(f"{artifact}: no manifest beside it ({candidates[0].name} is missing)",
                        hint="artifacts are loaded with the manifest `edgepack build` wrote; rebuild it")


def read_manifest(artifact: str | os.PathLike) -> dict[str, Any]:
    """The manifest of `artifact`, checked: right schema, and the file is one it describes."""
    artifact = Path(artifact)
    if not artifact.is_file():
        raise EdgepackError(f"artifact not found: {artifact}", hint="check the path, or run `edgepack build`")
    path = find_manifest(artifact)
    try:
        manifest = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise EdgepackError(f"{path}: not valid JSON ({exc})", hint="rebuild the artifact") from None
    if not isinstance(manifest, dict) or manifest.get("schema") != SCHEMA:
        raise EdgepackError(f"{path}: not an edgepack build manifest (schema is not {SCHEMA})",
                            hint="rebuild the artifact with this version of edgepack")
    for key in ("backend", "target", "precision", "artifact", "versions"):
        if key not in manifest:
            raise EdgepackError(f"{path}: key '{key}' is missing", hint="rebuild the artifact")
    files = manifest.get("files") or {}
    expected = files.get(artifact.name) if isinstance(files, dict) else None
    if artifact.name not in files:
        raise EdgepackError(f"{artifact}: not a file its manifest {path.name} describes",
                            hint="load the file `edgepack build` wrote, or rebuild")
    if expected and sha256_file(artifact) != expected:
        raise EdgepackError(f"{artifact}: does not match its manifest (sha256 differs)",
                            hint="the file was changed or replaced after the build; rebuild it")
    return manifest


def check_runtime(manifest: dict[str, Any], *, tensorrt_version: str,
                  device: dict[str, Any] | None) -> list[str]:
    """Refuse a TensorRT engine this machine cannot run; return warnings for smaller mismatches.

    An engine is tied to the exact TensorRT version and to the GPU's compute capability
    (unless built version- or hardware-compatible); a different device name with the same
    compute capability runs, but its tactics were timed on another chip.
    """
    artifact = manifest.get("artifact", "engine")
    built = manifest["versions"].get("tensorrt")
    if built != tensorrt_version:
        raise EdgepackError(
            f"{artifact}: built with TensorRT {built}, this machine has TensorRT {tensorrt_version}; "
            "an engine runs only with the TensorRT version that built it",
            hint="rebuild the engine here with `edgepack build`, or install TensorRT " + str(built))
    if device is None:
        raise EdgepackError(f"{artifact}: this machine has no NVIDIA GPU",
                            hint="run the engine on the device it was built for")
    built_device = manifest.get("device") or {}
    built_cc, cc = built_device.get("compute_capability"), device.get("compute_capability")
    if built_cc != cc:
        raise EdgepackError(
            f"{artifact}: built for a GPU with compute capability {built_cc} "
            f"({built_device.get('name')}), this GPU is {device.get('name')} with {cc}",
            hint=f"rebuild the engine on this machine with `edgepack build --target` for it")
    warnings = []
    if built_device.get("name") != device.get("name"):
        warnings.append(f"{artifact}: built on {built_device.get('name')}, running on "
                        f"{device.get('name')} (same compute capability {cc}); rebuild here for best speed")
    return warnings


def _edgepack_version() -> str:
    from edgepack import __version__

    return __version__
