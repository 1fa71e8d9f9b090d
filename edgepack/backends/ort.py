"""ONNX Runtime backend: graph optimizations applied offline, saved as ONNX and as ORT format."""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path

import numpy as np

from edgepack.backends.manifest import edgepack_version, host_description, model_sha256, read_manifest, write_manifest
from edgepack.errors import EdgepackError
from edgepack.targets import Target

logger = logging.getLogger(__name__)


def build_ort(model_path: Path, target: Target, output: Path, *, precision: str) -> dict:
    """Writes `output` (.onnx, optimized) and `output` with suffix .ort, plus the manifest.

    Optimizations stop at ORT's 'extended' level: the 'all' level adds layout transforms tied to the
    machine that runs the optimization, which is not always the device."""
    import onnxruntime as ort

    output = Path(output)
    start = time.perf_counter()
    written = {}
    for fmt, path in (("ONNX", output), ("ORT", output.with_suffix(".ort"))):
        tmp = path.with_name(f".{path.name}.tmp{path.suffix}")
        options = ort.SessionOptions()
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(tmp)
        options.log_severity_level = 3
        if fmt == "ORT":
            options.add_session_config_entry("session.save_model_format", "ORT")
        try:
            ort.InferenceSession(str(model_path), options, providers=list(target.execution_providers))
        except Exception as exc:
            tmp.unlink(missing_ok=True)
            raise EdgepackError(f"{model_path}: ONNX Runtime cannot load the model: {str(exc).splitlines()[0]}") from None
        os.replace(tmp, path)
        written[fmt.lower()] = str(path)
    manifest = {
        "backend": "onnxruntime", "target": target.name, "precision": precision,
        "model": str(model_path), "model_sha256": model_sha256(model_path), "artifact": str(output),
        "files": written, "versions": {"onnxruntime": ort.__version__, **edgepack_version()},
        "execution_providers": list(target.execution_providers), "threads": target.threads,
        "optimization_level": "extended", "device": host_description(),
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    write_manifest(output, manifest)
    return manifest


class OrtArtifact:
    """An ONNX Runtime artifact (.onnx or .ort) with its manifest."""

    backend = "onnxruntime"

    def __init__(self, path: str | Path, *, threads: int | None = None):
        import onnxruntime as ort

        self.path = Path(path)
        self.manifest = read_manifest(self.path if self.path.suffix != ".ort" else self.path.with_suffix(".onnx"))
        options = ort.SessionOptions()
        options.intra_op_num_threads = self.manifest.get("threads", 0) if threads is None else threads
        options.log_severity_level = 3
        self.session = ort.InferenceSession(str(self.path), options,
                                            providers=self.manifest.get("execution_providers", ["CPUExecutionProvider"]))

    @property
    def inputs(self):
        return [(i.name, i.shape, i.type) for i in self.session.get_inputs()]

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.session.get_outputs()]
        return dict(zip(names, self.session.run(names, inputs)))
