"""Backends: build a model into the artifact a target runs, and load artifacts back.

    artifact = edgepack.build("model.qdq.onnx", target="jetson-orin-nano", output="model.engine")
    outputs = artifact.run({"input": batch})

TensorRT targets give an engine (`.engine`/`.plan`), ONNX Runtime targets an optimized `.onnx`
plus its `.ort` twin; each comes with `<artifact>.manifest.json` (see manifest.py).
"""
from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import numpy as np
import onnx_ir as ir

from edgepack.backends import manifest as mf
from edgepack.backends.common import has_qdq, model_inputs, parse_shapes, resolve_precision
from edgepack.errors import EdgepackError
from edgepack.keywords import cli_keywords

logger = logging.getLogger(__name__)


@dataclasses.dataclass
class Artifact:
    """A built artifact and its manifest. `run` opens the right runtime on first use."""

    path: Path
    manifest: dict[str, Any]
    _runner: Any = dataclasses.field(default=None, repr=False)

    @property
    def backend(self) -> str:
        return self.manifest["backend"]

    @property
    def target(self) -> str:
        return self.manifest["target"]

    @property
    def precision(self) -> str:
        return self.manifest["precision"]

    @property
    def manifest_path(self) -> Path:
        return mf.manifest_path(self.path)

    def to_json(self) -> dict[str, Any]:
        """What `edgepack build --json` prints: the manifest (schema `edgepack.build/1`)."""
        return dict(self.manifest)

    def text(self) -> str:
        from edgepack.quant.origin import describe_defaults

        m = self.manifest
        files = ", ".join(m.get("files", [m["artifact"]]))
        text = "".join(line + "\n" for line in describe_defaults(m.get("from_model") or {}))
        text += (f"built {files} for {m['target']} ({m['backend']}, {m['precision']}) "
                f"in {m['build_seconds']:.2f} s; manifest: {self.manifest_path}")
        check = m.get("runtime_check")  # QDQ models built for ONNX Runtime: as built vs QDQ math
        if check:
            text += (f"\nruntime check: the artifact {'matches' if check['ok'] else 'DIFFERS from'} its QDQ math "
                     f"(SQNR {check['runtime_sqnr_db']:.1f} dB on {check['samples']} {check['data']}; "
                     f"CPU {check['cpu_flags']})")
        fusion = m.get("ort_fusion")
        if fusion:
            text += (f"\nfused by ONNX Runtime: {fusion['integer_kernels']} integer kernels, "
                     f"{len(fusion['float_weighted'])} float weighted layers, {len(fusion['dq_on_constants'])} "
                     f"weights dequantized per run, {len(fusion['activation_qdq'])} activation Q/DQ left")
        speed = m.get("speed")
        if speed:
            from edgepack.quant.speed import SpeedVerdict

            text += "\n" + SpeedVerdict(**{k: v for k, v in speed.items() if k != "baseline"}).line()
            text += " against " + speed["baseline"]
        for warning in m.get("warnings", []):
            text += f"\nwarning: {warning}"
        return text

    @property
    def exit_code(self) -> int:
        return 0

    def runner(self):
        """A new runtime for this artifact (a context manager): OrtRunner or TensorRTRunner."""
        if self.backend == "tensorrt":
            from edgepack.backends.tensorrt import TensorRTRunner

            return TensorRTRunner(self.path)
        from edgepack.backends.ort import OrtRunner

        return OrtRunner(self.path, threads=self.manifest.get("flags", {}).get("threads", 0))

    def run(self, inputs: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Outputs by name for one batch of inputs by name."""
        if self._runner is None:
            self._runner = self.runner().__enter__()
        return self._runner.infer(inputs)

    def close(self) -> None:
        if self._runner is not None:
            self._runner.__exit__(None, None, None)
            self._runner = None

    def __enter__(self) -> "Artifact":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def load_artifact(path: str | os.PathLike) -> Artifact:
    """An artifact written by `build`, with its manifest read and checked (runtime checks on run)."""
    path = Path(path)
    return Artifact(path, mf.read_manifest(path))


@cli_keywords
def build(model: str | os.PathLike | ir.Model, target=None, *, output: str | os.PathLike | None = None,
          precision: str = "best", dla: int | None = None, sparsity: bool | None = None,
          shapes: str | dict | None = None, timing_cache: str | os.PathLike | None = None,
          workspace_mb: int | None = None, threads: int | None = None, data=None,
          runtime_check: bool = True, speed_check: bool = True) -> Artifact:
    """Build `model` (a path or an onnx-ir Model) for `target` (name, .toml path or Target).

    `output` defaults to a file in a new temporary folder. `shapes` is the `--shapes` text or
    {input: (min, opt, max)}. Options a target does not support are errors naming the option.
    `data` (calibration folder, .npz/.npy), optional: a QDQ model built for ONNX Runtime is run as
    built and as its QDQ math on a few samples of it (random inputs when None), and the manifest's
    `runtime_check` says whether they agree; `speed_check`: the artifact is timed against the QDQ
    model's float twin (quant/speed.py, interleaved, batch 1) with a warning when INT8 is not
    faster, and the manifest lists what ORT left unfused (`ort_fusion`); where TensorRT 11 needs the model converted to float16
    first, nodes whose values leave the float16 range on it stay float32.

    Without `target`, the target a quantized model records (`edgepack.quantized_for`) is used; `data`
    without preprocessing is prepared as the model records; the manifest's `from_model` and the
    text say so.
    """
    from edgepack.quant.origin import QUANTIZED_FOR, PREPROCESS, recorded_defaults, recorded_in_file
    from edgepack.targets import load_target

    metadata = ({k: model.metadata_props[k] for k in (QUANTIZED_FOR, PREPROCESS) if k in model.metadata_props}
                if isinstance(model, ir.Model) else recorded_in_file(model))
    from_model, target, data = recorded_defaults(metadata, target=target, data=data)
    if target is None:
        from edgepack.errors import UsageError

        raise UsageError("build needs a target: the model records none", hint="pass -t T (see `edgepack targets`)")
    target = load_target(target)
    with _model_file(model) as model_path:
        from edgepack.io import has_external_data, load, weights_nbytes

        graph = load(model_path)
        qdq = has_qdq(graph)
        if qdq:
            _say_if_quantized_for_another_target(graph, target)
        resolved = resolve_precision(target, precision, qdq)
        output = Path(output) if output is not None else _default_output(model_path, target)
        _refuse_overwriting_input(model_path, output)
        logger.info("building %s for %s at %s", model_path, target.name, resolved)
        if target.is_tensorrt:
            if threads is not None:
                raise EdgepackError(f"--threads applies to ONNX Runtime targets; '{target.name}' uses tensorrt",
                                    hint="leave it out")
            # `best` stays `best` for TensorRT: weakly typed, INT8 and FP16 allowed, TensorRT picks per layer
            manifest = _build_tensorrt(model_path, output, target, graph, qdq,
                                       "best" if precision == "best" else resolved, resolved, dla=dla,
                                       sparsity=sparsity, shapes=shapes, timing_cache=timing_cache,
                                       workspace_mb=workspace_mb, data=data)
        else:
            for option, value in (("--dla", dla), ("--sparsity", sparsity), ("--timing-cache", timing_cache),
                                  ("--workspace-mb", workspace_mb), ("--shapes", shapes)):
                if value is not None:
                    raise EdgepackError(f"{option} applies to TensorRT targets; '{target.name}' uses onnxruntime",
                                        hint="leave it out")
            from edgepack.backends import ort

            from edgepack.io import has_external_data

            manifest = ort.build(model_path, output, target, precision=resolved, threads=threads,
                                 weights_nbytes=weights_nbytes(graph), external_data=has_external_data(graph))
            if qdq and runtime_check:
                manifest["runtime_check"] = _check_runtime(model_path, output, target, data)
            if qdq:
                manifest.update(_fusion_and_speed(graph, output, target, data, speed_check))
    from edgepack.quant.origin import QUANTIZED_FOR, stored_preprocess

    if graph.metadata_props.get(QUANTIZED_FOR):
        manifest["quantized_for"] = graph.metadata_props[QUANTIZED_FOR]
    if stored_preprocess(graph):  # how inputs are prepared, for whoever deploys the artifact
        manifest["preprocess"] = stored_preprocess(graph)
    if from_model:
        manifest["from_model"] = from_model
    if isinstance(model, ir.Model):
        manifest["model"] = None  # built from memory: the temporary file is gone, its sha256 stays
    from edgepack.io import write_atomic

    write_atomic(mf.manifest_path(output), json.dumps(manifest, indent=2) + "\n")
    return Artifact(output, manifest)


def _fusion_and_speed(graph: ir.Model, artifact: Path, target, data, speed_check: bool) -> dict[str, Any]:
    """What ORT fused in the artifact (weights dequantized per run, Q/DQ left, float layers), the
    quantizer's per-layer decisions, and the artifact's latency against its float twin."""
    import onnx

    from edgepack.quant.ort_fusion import report_of_graph

    fusion = report_of_graph(onnx.load(str(artifact), load_external_data=False).graph)
    out: dict[str, Any] = {"ort_fusion": fusion.to_json(), "warnings": []}
    if fusion.dq_on_constants:
        out["warnings"].append(f"{len(fusion.dq_on_constants)} weight(s) dequantized at every inference "
                               f"({', '.join(fusion.dq_on_constants[:3])}): re-quantize with edgepack quantize")
    decisions = graph.metadata_props.get("edgepack.decisions")
    if decisions:
        try:
            out["decisions"] = json.loads(decisions)
        except json.JSONDecodeError:
            pass
    if speed_check:
        import tempfile

        from edgepack import io
        from edgepack.quant.speed import first_feeds, float_twin, latency_verdict

        feeds = first_feeds(graph, data) if data is not None else None
        with tempfile.TemporaryDirectory(prefix="edgepack-twin-") as folder:
            twin = io.save(float_twin(graph), Path(folder) / "fp32.onnx")
            if feeds is None:
                from edgepack import runtime

                feeds = runtime.random_feeds(runtime.session(twin, optimize=False))
            verdict = latency_verdict(twin, artifact, feeds, fusion_of=lambda: fusion)
        out["speed"] = {**verdict.to_json(), "baseline": "the QDQ model's float twin (Q/DQ removed)"}
        logger.info("%s", verdict.line())
        if verdict.warning:
            logger.warning("%s", verdict.warning)
            out["warnings"].append(verdict.warning)
    return out


def _check_runtime(model_path: Path, artifact: Path, target, data) -> dict[str, Any]:
    from edgepack.quant.faithfulness import check_runtime

    check = check_runtime(model_path, data, deployed=artifact, target=target)
    if not check.ok:
        logger.warning("%s", check.message)
    return {**check.to_json(), "data": "random inputs" if data is None else f"samples of {data}"}
def _say_if_quantized_for_another_target(graph: ir.Model, target) -> None:
    """TensorRT refuses the ONNX Runtime QDQ form: say so before anything else; an ONNX Runtime
    target runs a model quantized for another target, with a warning."""
    from edgepack.quant.origin import target_mismatch

    mismatch = target_mismatch(graph, target)
    if mismatch is None:
        return
    if target.is_tensorrt:
        raise EdgepackError(f"the model was {mismatch}; TensorRT takes int8 with zero point 0 only",
                            hint=f"re-quantize the float model with `edgepack quantize -t {target.name}`")
    logger.warning("the model was %s; it runs on %s, but re-quantizing with -t %s gives its best form",
                   mismatch, target.name, target.name)


def _build_tensorrt(model_path, output, target, graph, qdq, precision, resolved, *, dla, sparsity, shapes,
                    timing_cache, workspace_mb, data) -> dict[str, Any]:
    from edgepack.backends import tensorrt as trt_backend

    inputs = model_inputs(graph)
    profiles = shapes if isinstance(shapes, dict) else parse_shapes(shapes, inputs)
    options = dict(precision=precision, dla=dla, sparsity=sparsity, shapes=profiles, model_has_qdq=qdq,
                   timing_cache=timing_cache, workspace_mb=workspace_mb)
    trt_backend.builder_settings(target, **options)  # option errors first, on any machine
    trt_backend.check_engine_path(output)
    trt, _ = trt_backend.require_tensorrt(target)
    settings = trt_backend.builder_settings(target, tensorrt_version=trt.__version__, **options)
    parsed, layers = trt_backend.prepare_model(graph, settings, data=data)
    names = [node.name for node in parsed.graph]
    if parsed is graph:
        return trt_backend.build_engine(model_path, output, target, settings, node_names=names,
                                        precision=resolved, layers=layers)
    from edgepack.io import save

    with tempfile.TemporaryDirectory(prefix=".edgepack-fp16-", dir=output.parent if str(output.parent) else ".") as tmp:
        converted = save(parsed, Path(tmp) / (model_path.stem + ".fp16.onnx"))
        return trt_backend.build_engine(Path(converted), output, target, settings, node_names=names,
                                        precision=resolved, source_path=model_path, layers=layers)


def _refuse_overwriting_input(model_path: Path, output: Path) -> None:
    """The input is never modified: no output file (artifact, .ort/.onnx twin, manifest) may be it."""
    written = [output, mf.manifest_path(output)]
    if output.suffix in (".onnx", ".ort"):
        written.append(output.with_suffix(".ort" if output.suffix == ".onnx" else ".onnx"))
    source = model_path.resolve()
    for path in written:
        if path.resolve() == source:
            raise EdgepackError(f"-o {output}: the build would write over the input model {model_path}",
                                hint="choose another output name, e.g. -o " + str(model_path.with_suffix(".opt.onnx")))


def _default_output(model_path: Path, target) -> Path:
    folder = Path(tempfile.mkdtemp(prefix="edgepack-build-"))
    suffix = ".engine" if target.is_tensorrt else ".onnx"
    return folder / (model_path.stem + suffix)


@contextlib.contextmanager
def _model_file(model):
    """A path to the model: the given path, or an in-memory model saved to a temporary folder."""
    if not isinstance(model, ir.Model):
        yield Path(model)
        return
    from edgepack.io import save

    folder = Path(tempfile.mkdtemp(prefix="edgepack-model-"))
    try:
        yield save(model, folder / "model.onnx")
    finally:
        shutil.rmtree(folder, ignore_errors=True)
