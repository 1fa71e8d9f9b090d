"""Build manifests: what an artifact was built from and for, written beside it, checked on load."""
from __future__ import annotations

import hashlib
import json
import platform
from pathlib import Path

from edgepack.errors import EdgepackError

SCHEMA = "edgepack.build/1"


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def model_sha256(path: str | Path) -> str:
    """The model file's hash, plus its external data files (a model is all of them)."""
    import onnx

    digest = hashlib.sha256(bytes.fromhex(sha256_file(path)))
    proto = onnx.load(str(path), load_external_data=False)
    locations = sorted({e.value for t in proto.graph.initializer for e in t.external_data if e.key == "location"})
    for location in locations:
        digest.update(bytes.fromhex(sha256_file(Path(path).parent / location)))
    return digest.hexdigest()


def manifest_path(artifact: str | Path) -> Path:
    return Path(f"{artifact}.manifest.json")


def write_manifest(artifact: str | Path, data: dict) -> Path:
    from edgepack.cli.common import write_text_atomic

    return write_text_atomic(manifest_path(artifact), json.dumps({"schema": SCHEMA, **data}, indent=2) + "\n")


def read_manifest(artifact: str | Path) -> dict:
    path = manifest_path(artifact)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise EdgepackError(f"{artifact}: no build manifest ({path.name})",
                            hint="build artifacts with `edgepack build`, which writes one beside them") from None
    except json.JSONDecodeError as exc:
        raise EdgepackError(f"{path}: not valid JSON ({exc})") from None
    if data.get("schema") != SCHEMA:
        raise EdgepackError(f"{path}: not an edgepack build manifest (schema {SCHEMA})")
    return data


def edgepack_version() -> dict:
    from edgepack import __version__

    return {"edgepack": __version__}


def host_description() -> dict:
    return {"machine": platform.machine(), "system": platform.system(), "python": platform.python_version()}


def check_engine_compatible(manifest: dict, *, tensorrt_version: str, device_name: str, compute_capability: str,
                            artifact: str | Path) -> None:
    """A TensorRT engine runs only with the TensorRT version and GPU it was built for."""
    built = manifest.get("versions", {}).get("tensorrt")
    if built != tensorrt_version:
        raise EdgepackError(f"{artifact}: engine built with TensorRT {built}, this machine has {tensorrt_version}",
                            hint="rebuild the engine here with `edgepack build`")
    device = manifest.get("device", {})
    if device.get("compute_capability") != compute_capability:
        raise EdgepackError(f"{artifact}: engine built for compute capability {device.get('compute_capability')} "
                            f"({device.get('name')}), this GPU is {compute_capability} ({device_name})",
                            hint="rebuild the engine on this device")
