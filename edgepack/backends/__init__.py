"""Backends: build an artifact for a target (TensorRT engine or ONNX Runtime model) and run it."""
from __future__ import annotations

import tempfile
from pathlib import Path

import onnx_ir as ir

from edgepack.errors import EdgepackError
from edgepack.targets import Target, load_target


class Artifact:
    """A built artifact: `path`, its `manifest`, and `run(inputs) -> {output: array}`."""

    def __init__(self, path: str | Path, manifest: dict):
        self.path, self.manifest = Path(path), manifest
        self._runner = None

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    def runner(self):
        if self._runner is None:
            if self.backend == "tensorrt":
                from edgepack.backends.tensorrt import TensorRTRunner

                self._runner = TensorRTRunner(self.path)
            else:
                from edgepack.backends.ort import OrtArtifact

                self._runner = OrtArtifact(self.path)
        return self._runner

    def run(self, inputs):
        return self.runner().run(inputs)

    def __repr__(self) -> str:
        return f"Artifact({self.backend}, {self.path}, target={self.manifest.get('target')})"


def model_has_qdq(path: Path) -> bool:
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    return any(n.op_type in ("QuantizeLinear", "DequantizeLinear") for n in proto.graph.node)


def build(model: ir.Model | str | Path, *, target: str | Path | Target, output: str | Path,
          precision: str = "best", dla: int | None = None, sparsity: bool | None = None,
          shapes: str | None = None, timing_cache: str | Path | None = None) -> Artifact:
    """Build `model` for `target` into `output` (+ `<output>.manifest.json`)."""
    target = load_target(target)
    output = Path(output)
    if not output.parent.is_dir():
        raise EdgepackError(f"output folder does not exist: {output.parent}")
    with tempfile.TemporaryDirectory() as tmp:
        if isinstance(model, ir.Model):
            from edgepack import io

            path = io.save(model, Path(tmp) / "model.onnx")
        else:
            path = Path(model)
            if not path.is_file():
                raise EdgepackError(f"model file not found: {path}")
        if target.is_tensorrt:
            from edgepack.backends.tensorrt import build_engine, builder_settings, parse_shapes, require_tensorrt

            options = dict(precision=precision, model_has_qdq=model_has_qdq(path), dla=dla, sparsity=sparsity,
                           shapes=parse_shapes(shapes))
            builder_settings(target, **options)  # bad options are refused here, TensorRT or not
            trt, _ = require_tensorrt(target)
            settings = builder_settings(target, **options, tensorrt_major=int(trt.__version__.split(".")[0]))
            manifest = build_engine(path, target, output, settings, Path(timing_cache) if timing_cache else None)
        else:
            from edgepack.backends.ort import build_ort

            if dla is not None or sparsity:
                raise EdgepackError(f"--dla and --sparsity apply to TensorRT targets; '{target.name}' is "
                                    "an ONNX Runtime target")
            has_qdq = model_has_qdq(path)
            if precision not in ("best", "fp32", "int8") or (precision == "int8" and not has_qdq):
                raise EdgepackError(f"precision '{precision}' on an ONNX Runtime target comes from the model",
                                    hint="quantize it first for int8, or use --precision best")
            manifest = build_ort(path, target, output, precision="int8" if has_qdq else "fp32")
    return Artifact(output, manifest)


def load_artifact(path: str | Path) -> Artifact:
    from edgepack.backends.manifest import read_manifest

    path = Path(path)
    if not path.is_file():
        raise EdgepackError(f"artifact not found: {path}")
    key = path.with_suffix(".onnx") if path.suffix == ".ort" else path
    return Artifact(path, read_manifest(key))
