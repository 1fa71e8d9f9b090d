"""The TensorRT backend: build an engine from a (QDQ) ONNX model, and run it with pycuda buffers.

Two halves. What needs no GPU is plain Python and tested everywhere: `builder_settings` turns a
target, the TensorRT version and the build options into builder settings; `prepare_model` makes
the ONNX model carry the precision where TensorRT 11 needs it; `layer_precisions` says what each
layer gets and why; `require_tensorrt` says in one line what is missing. What needs TensorRT and
a GPU (`build_engine`, `TensorRTRunner`) imports `tensorrt` and `pycuda` inside functions, and
supports TensorRT 8.x (bindings, EXPLICIT_BATCH), 10.x (named I/O tensors, opt-in strong typing)
and 11.x (strongly typed only). The version rules are data in tensorrt_versions.py.

Precision, per version (W = weakly typed, builder flags; S = strongly typed, types from the model):

  precision      TensorRT 8.x          TensorRT 10.x                TensorRT 11.x
  fp32           W, no flags           W, no flags                  S, model as is
  fp16           W, FP16               W, FP16                      S, model converted to float16 in ONNX
  int8 (QDQ)     W, INT8               S (STRONGLY_TYPED)           S, model as is (Q/DQ decide INT8)
  best (QDQ)     W, INT8 + FP16        W, INT8 + FP16               S, float16 outside the Q/DQ, in ONNX
  best (float)   W, FP16               W, FP16                      S, model converted to float16
  + DLA          W, + FP16 for int8,   W (DLA is weakly typed       S, on AGX Orin with JetPack 7.2.2+
                 GPU_FALLBACK           up to 10.7), GPU_FALLBACK    (11.4.1+), float parts float16,
                                                                    GPU_FALLBACK
DLA runs FP16 and INT8 only, never FP32.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgepack.backends import manifest as mf
from edgepack.backends import tensorrt_versions as tv
from edgepack.errors import EdgepackError
from edgepack.io import write_atomic

logger = logging.getLogger(__name__)

_ON_DEVICE = ("the build must run on the target device (or a machine with the same GPU and "
              "TensorRT version)")
_INSTALL_HINT = "pip install edgepack[tensorrt] on the device (JetPack ships tensorrt), or build for a CPU target: --target x86-cpu"
_JP7_TARGETS = "jetson-agx-orin-jp7, jetson-agx-thor"


def _version_tuple(version: str | None) -> tuple[int, ...]:
    return tv.version_tuple(version)


def builder_settings(target, precision: str, dla: int | None = None, sparsity: bool | None = None,
                     shapes: dict[str, tuple] | None = None, model_has_qdq: bool = False, *,
                     tensorrt_version: str | None = None, timing_cache: str | os.PathLike | None = None,
                     workspace_mb: int | None = None) -> dict[str, Any]:
    """The TensorRT builder settings for `target`: typing, flags, ONNX conversion, DLA, profiles, cache.

    `precision` is already resolved (int8, fp16 or fp32; see common.resolve_precision) or `best`.
    `tensorrt_version` is the TensorRT that will build (default: the version the target was
    written for). `sparsity=None` follows the target. Combinations that do not exist (DLA where
    the TensorRT / board / JetPack has none, TensorRT 11 on JetPack 6, int8 without Q/DQ) are
    EdgepackErrors. Pure: no TensorRT import.
    """
    if not target.is_tensorrt:
        raise EdgepackError(f"target '{target.name}' uses {target.backend}, not TensorRT",
                            hint="TensorRT settings apply to tensorrt targets only")
    version = tensorrt_version or target.tensorrt_version
    try:
        trt = tv.features(version)
    except ValueError as exc:
        raise EdgepackError(f"target '{target.name}': {exc}",
                            hint="build with TensorRT 8.x, 10.x or 11.x") from None
    problem = tv.platform_problem(version, jetpack=target.jetpack, compute_capability=target.compute_capability)
    if problem:
        raise EdgepackError(f"target '{target.name}' (JetPack {target.jetpack or '-'}, compute capability "
                            f"{target.compute_capability}): {problem}",
                            hint=f"build with the TensorRT the target names ({target.tensorrt_version})"
                                 + ("" if tv.version_tuple(target.jetpack) >= tv.MIN_JETPACK_11 or not target.jetpack
                                    else f", or pick a JetPack 7 target ({_JP7_TARGETS})"))
    if precision not in ("int8", "fp16", "fp32", "best"):
        raise EdgepackError(f"--precision {precision!r} is not int8, fp16, fp32 or best")
    if dla is not None:
        if target.dla_cores == 0:
            raise EdgepackError(f"--dla {dla}: target '{target.name}' has no DLA cores",
                                hint="leave out --dla, or pick a target with DLA "
                                     "(jetson-orin-nx, jetson-agx-orin, jetson-agx-orin-jp7)")
        if not 0 <= dla < target.dla_cores:
            raise EdgepackError(f"--dla {dla}: target '{target.name}' has DLA cores 0..{target.dla_cores - 1}",
                                hint=f"use --dla 0 to {target.dla_cores - 1}")
        if precision == "fp32":
            raise EdgepackError("--dla runs FP16 or INT8 only, not fp32",
                                hint="use --precision fp16, int8 or best with --dla")
        problem = tv.dla_problem(version, board=target.board, jetpack=target.jetpack, dla_cores=target.dla_cores)
        if problem:
            raise EdgepackError(f"--dla {dla} on target '{target.name}': {problem}",
                                hint="leave out --dla; DLA exists with TensorRT 8.x and 10.0-10.7 (JetPack 5/6) "
                                     "and with 11.4.1+ on AGX Orin with JetPack 7.2.2+ (jetson-agx-orin-jp7)")
    if precision == "int8" and not model_has_qdq:
        if trt.always_strongly_typed:
            raise EdgepackError(
                f"--precision int8 with TensorRT {version}: TensorRT 11 has no implicit INT8 (the INT8 "
                "builder flag and the calibrators are removed), so the model must carry Q/DQ nodes",
                hint="run `edgepack quantize MODEL --target " + target.name + "` first")
        raise EdgepackError("--precision int8 needs a quantized (QDQ) model; this model has no QuantizeLinear nodes",
                            hint="run `edgepack quantize MODEL --target " + target.name + "` first, "
                                 "or use --precision fp16/fp32")
    flags: list[str] = []
    network_flags: list[str] = ["EXPLICIT_BATCH"] if trt.explicit_batch_flag else []
    convert_fp16 = False
    int8 = precision == "int8" or (precision == "best" and model_has_qdq and "int8" in target.precisions)
    fp16 = precision == "fp16" or (precision == "best" and "fp16" in target.precisions) or \
        (precision == "int8" and dla is not None)  # DLA: what the Q/DQ leave in float needs FP16
    if trt.always_strongly_typed:
        strongly_typed = True  # STRONGLY_TYPED is deprecated and ignored in 11: no network flag
        convert_fp16 = fp16
    elif trt.strongly_typed_flag and precision == "int8" and dla is None:
        strongly_typed = True  # 10.x: Q/DQ scales decide what runs in INT8, the rest keeps its type
        network_flags.append("STRONGLY_TYPED")
    else:
        strongly_typed = False
        flags += ["INT8"] * int8 + ["FP16"] * fp16
    if sparsity is None:
        sparsity = target.sparsity
    elif sparsity and not target.sparsity:
        raise EdgepackError(f"--sparsity: target '{target.name}' has no 2:4 sparse tensor cores",
                            hint="leave out --sparsity (Ampere and newer GPUs have them)")
    if sparsity:
        flags.append("SPARSE_WEIGHTS")
    if dla is not None:
        flags.append("GPU_FALLBACK")
    workspace = target.workspace_mb if workspace_mb is None else workspace_mb
    if workspace <= 0:
        raise EdgepackError(f"--workspace-mb {workspace}: must be positive")
    return {
        "tensorrt_version": version,
        "tensorrt_major": trt.major,
        "precision": precision,
        "strongly_typed": strongly_typed,
        "explicit_batch": trt.explicit_batch_flag,
        "network_flags": network_flags,
        "flags": flags,
        "convert_to_fp16": convert_fp16,
        "workspace_bytes": workspace * 2**20,
        "dla_core": dla,
        "profiles": {name: {"min": list(mn), "opt": list(opt), "max": list(mx)}
                     for name, (mn, opt, mx) in (shapes or {}).items()},
        "timing_cache": str(timing_cache) if timing_cache else None,
    }


_QDQ_COMPUTE = ("Conv", "ConvTranspose", "Gemm", "MatMul")
_BOOKKEEPING = ("QuantizeLinear", "DequantizeLinear", "Cast", "Constant")


def layer_precisions(model, settings: dict[str, Any], kept: list[dict] | None = None) -> list[dict[str, str]]:
    """What precision each compute node of `model` (the model TensorRT will parse) gets, and why.

    `kept` is the fp16 pass's list of nodes it left in float32 with their reasons. Q/DQ, Cast and
    Constant nodes are bookkeeping and not listed. Strongly typed: the types are the model's;
    weakly typed: the flags say what TensorRT may choose, it picks per layer by speed.
    """
    import onnx_ir as ir

    reasons = {k["node"]: k["reason"] for k in kept or []}
    flags = set(settings["flags"])
    layers = []
    for node in model.graph:
        if node.op_type in _BOOKKEEPING and node.domain in ("", "ai.onnx"):
            continue
        name = node.name or node.op_type
        from_dq = [_through_casts(v) is not None and _through_casts(v).op_type == "DequantizeLinear"
                   for v in node.inputs[:2] if v is not None]
        out = next((v.dtype for v in node.outputs if v is not None and v.dtype is not None), None)
        if node.op_type in _QDQ_COMPUTE and len(from_dq) == 2 and all(from_dq):
            precision, why = "int8", "Q/DQ on its data and weight inputs: explicit quantization"
            if any(v.producer() is not None and v.producer().op_type == "Cast" for v in node.inputs[:2]):
                why += " (a float32 Q/DQ behind a Cast, see its reason)"
        elif not settings["strongly_typed"]:
            allowed = [p for p, f in (("int8", "INT8"), ("fp16", "FP16")) if f in flags]
            precision = "/".join([*allowed, "fp32"]) if allowed else "fp32"
            why = ("weakly typed: TensorRT picks the fastest of " + precision) if allowed else "fp32 build"
        elif out == ir.DataType.FLOAT16:
            precision, why = "fp16", "converted to float16 in ONNX"
        elif out == ir.DataType.FLOAT:
            precision = "fp32"
            why = reasons.get(name) or ("kept float32 by the model (strongly typed)" if settings["precision"] != "fp32"
                                        else "fp32 build")
        else:
            continue  # integer / bool / shape computations
        layers.append({"node": name, "op_type": node.op_type, "precision": precision, "reason": why})
    return layers


def _through_casts(value):
    """The producer of `value`, looking through the Casts the fp16 pass inserted."""
    producer = value.producer()
    while producer is not None and producer.op_type == "Cast" and "edgepack.fp16" in producer.metadata_props:
        producer = producer.inputs[0].producer()
    return producer


QDQ_FP16_OPSET = 19  # QuantizeLinear / DequantizeLinear take float16 scales from opset 19


def upgrade_opset(model, opset: int = QDQ_FP16_OPSET):
    """A copy of `model` at ONNX opset `opset` (onnx.version_converter), or None when it cannot."""
    import onnx
    import onnx_ir as ir

    try:
        proto = onnx.version_converter.convert_version(ir.serde.serialize_model(model), opset)
        onnx.checker.check_model(proto)
    except Exception as exc:  # the converter raises several types (RuntimeError, ValidationError, ...)
        logger.warning("could not convert the model to opset %d (%s): its Q/DQ stay float32 behind Casts",
                       opset, exc)
        return None
    return ir.serde.deserialize_model(proto)


def prepare_model(model, settings: dict[str, Any], *, data=None):
    """(the model TensorRT should parse, its layer precisions). On TensorRT 11, `fp16` and `best`
    convert the float parts of the model to float16 here, in ONNX, since the builder has no FP16
    flag. Q/DQ stay, with float16 scales: a QDQ model below opset 19 is converted to opset 19 first
    (where that fails, its Q/DQ stay float32 behind Casts). `data` feeds the fp16 data rule.
    The input model is not modified; it is returned as is when nothing changes."""
    if not settings["convert_to_fp16"]:
        return model, layer_precisions(model, settings)
    from edgepack.backends.common import has_qdq
    from edgepack.graph import copy_model
    from edgepack.passes.fp16 import ConvertToFloat16Pass, observed_absmax

    converted = None
    if has_qdq(model) and model.opset_imports.get("", 0) < QDQ_FP16_OPSET:
        converted = upgrade_opset(model)  # float16 Q/DQ scales: no Casts between Q/DQ and their layers
    converted = converted or copy_model(model)
    fp16_pass = ConvertToFloat16Pass(keep_io_float=True, absmax=observed_absmax(model, data) if data else None)
    fp16_pass(converted)
    return converted, layer_precisions(converted, settings, fp16_pass.kept)


def require_tensorrt(target) -> tuple[Any, Any]:
    """(tensorrt, pycuda.driver), ready; or one EdgepackError naming everything that is missing."""
    missing = []
    trt = cuda = None
    try:
        import tensorrt as trt
    except ImportError:
        missing.append("the tensorrt Python package")
    try:
        import pycuda.driver as cuda
    except ImportError:
        missing.append("pycuda")
    if cuda is not None:
        try:
            cuda.init()
            if cuda.Device.count() == 0:
                missing.append("an NVIDIA GPU")
        except Exception:  # pycuda raises its own error types when no driver or device is present
            missing.append("an NVIDIA GPU (CUDA driver)")
    elif not _has_gpu_device_file():
        missing.append("an NVIDIA GPU")
    if missing:
        raise EdgepackError(
            f"building for TensorRT target '{target.name}' needs {', '.join(missing)}, "
            f"missing on this machine; {_ON_DEVICE}", hint=_INSTALL_HINT)
    return trt, cuda


def _has_gpu_device_file() -> bool:
    return Path("/dev/nvidia0").exists() or Path("/dev/nvhost-ctrl-gpu").exists()  # desktop / Jetson


def device_info(cuda, index: int = 0) -> dict[str, Any]:
    device = cuda.Device(index)
    major, minor = device.compute_capability()
    info = {"name": device.name(), "compute_capability": f"{major}.{minor}",
            "memory_mb": device.total_memory() // 2**20}
    release = Path("/etc/nv_tegra_release")
    if release.is_file():  # Jetson: the L4T release pins JetPack
        info["l4t"] = release.read_text().splitlines()[0].strip()
    return info


def check_device(target, device: dict[str, Any]) -> None:
    """The GPU building the engine must be the target's: an engine's tactics are timed on it."""
    want, have = _version_tuple(target.compute_capability), _version_tuple(device["compute_capability"])
    ok = have >= want if target.device_match == "minimum" else have == want
    if not ok:
        need = f"compute capability {'>= ' if target.device_match == 'minimum' else ''}{target.compute_capability}"
        raise EdgepackError(
            f"this GPU ({device['name']}, compute capability {device['compute_capability']}) is not "
            f"target '{target.name}' ({need}); {_ON_DEVICE}",
            hint="build on the target device, or pass a target file whose compute_capability matches this GPU")


def check_version(target, version: str) -> None:
    if target.tensorrt_version and _version_tuple(version)[:2] != _version_tuple(target.tensorrt_version)[:2]:
        logger.warning("target '%s' was written for TensorRT %s, building with %s: the engine runs "
                       "only with TensorRT %s", target.name, target.tensorrt_version, version, version)


def check_engine_path(output: Path) -> None:
    if output.suffix not in (".engine", ".plan"):
        raise EdgepackError(f"-o {output}: a TensorRT engine ends in .engine or .plan",
                            hint=f"use -o {output.with_suffix('.engine')}")


def parser_errors(parser, node_names: list[str]) -> list[str]:
    """Each ONNX parser error as `node 'NAME' (OP): description`."""
    lines = []
    for i in range(parser.num_errors):
        error = parser.get_error(i)
        index = error.node()
        name = error.node_name() if hasattr(error, "node_name") else None
        if not name and 0 <= index < len(node_names):
            name = node_names[index]
        op = error.node_operator() if hasattr(error, "node_operator") else ""
        where = f"node '{name}'" + (f" ({op})" if op else "") if name else "graph"
        lines.append(f"{where}: {error.desc()}")
    return lines


def create_network(trt, builder, settings: dict[str, Any]):
    """The network definition, with the creation flags this TensorRT version takes."""
    return builder.create_network(_network_flags(trt, settings))


def configure_builder(trt, config, settings: dict[str, Any]) -> None:
    """Workspace, builder flags and DLA on `config`. Every flag name comes from `settings`,
    chosen for this TensorRT version: a flag the version removed raises AttributeError here."""
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
    else:  # TensorRT 8.2 (JetPack 4.6, Jetson Nano)
        config.max_workspace_size = settings["workspace_bytes"]
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings["dla_core"] is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings["dla_core"]


def build_engine(model_path: Path, output: Path, target, settings: dict[str, Any], *,
                 node_names: list[str], precision: str | None = None, source_path: Path | None = None,
                 layers: list[dict] | None = None) -> dict[str, Any]:
    """Build and write the engine; returns its manifest. `precision` is what the manifest reports
    (for `best`: int8 with a QDQ model, else fp16 or fp32); the default is settings["precision"].
    `source_path` is the user's model when `model_path` is a converted copy (TensorRT 11 fp16);
    `layers` (layer_precisions) goes into the manifest."""
    trt, cuda = require_tensorrt(target)
    device = device_info(cuda)
    check_device(target, device)
    check_version(target, trt.__version__)
    check_engine_path(output)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = create_network(trt, builder, settings)
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(model_path)):
        errors = parser_errors(parser, node_names)
        raise EdgepackError(f"{model_path}: TensorRT's ONNX parser refused it: " + "; ".join(errors or ["no detail"]),
                            hint="simplify it with `edgepack optimize`, or replace the named node's op")
    config = builder.create_builder_config()
    configure_builder(trt, config, settings)
    _add_profile(builder, network, config, settings["profiles"])
    cache_path = Path(settings["timing_cache"]) if settings["timing_cache"] else None
    if cache_path is not None:
        blob = cache_path.read_bytes() if cache_path.is_file() else b""
        config.set_timing_cache(config.create_timing_cache(blob), False)
    monitor = None
    if hasattr(trt, "IProgressMonitor") and hasattr(config, "progress_monitor"):  # TensorRT 10+
        monitor = config.progress_monitor = _progress_monitor(trt)
    logger.info("building the TensorRT engine for %s: this can take minutes", target.name)
    start = time.perf_counter()
    serialized = builder.build_serialized_network(network, config)
    seconds = time.perf_counter() - start
    if monitor is not None:
        monitor.close()
    if serialized is None:
        raise EdgepackError(f"{model_path}: TensorRT could not build an engine for '{target.name}' "
                            "(see the TensorRT messages above)",
                            hint="try --precision fp16, a larger --workspace-mb, or leave out --dla")
    write_atomic(output, bytes(serialized))
    if cache_path is not None:
        write_atomic(cache_path, bytes(config.get_timing_cache().serialize()))
    io = {"inputs": [{"name": network.get_input(i).name, "shape": list(network.get_input(i).shape)}
                     for i in range(network.num_inputs)],
          "outputs": [{"name": network.get_output(i).name, "shape": list(network.get_output(i).shape)}
                      for i in range(network.num_outputs)]}
    manifest = mf.make_manifest(
        backend="tensorrt", target=target, precision=precision or settings["precision"],
        model_path=source_path or model_path, artifact=output,
        versions={"tensorrt": trt.__version__, "jetpack_target": target.jetpack},
        device=device, flags={k: v for k, v in settings.items() if k != "tensorrt_version"},
        build_seconds=seconds, io=io)
    if source_path is not None and source_path != model_path:
        manifest["parsed_model_sha256"] = mf.model_sha256(model_path)  # the float16 copy TensorRT parsed
    if layers is not None:
        manifest["layers"] = layers
    return manifest


def _progress_monitor(trt):
    """Progress bars for the builder's phases, fed by TensorRT's own IProgressMonitor callbacks
    (which may come from several builder threads, hence the lock)."""
    import threading

    from tqdm import tqdm

    class Monitor(trt.IProgressMonitor):
        def __init__(self):
            trt.IProgressMonitor.__init__(self)
            self._lock = threading.Lock()
            self._bars: dict[str, Any] = {}

        def phase_start(self, phase_name, parent_phase, num_steps):
            with self._lock:
                self._bars[phase_name] = tqdm(total=num_steps, desc=phase_name, leave=False,
                                              position=len(self._bars), disable=None)

        def step_complete(self, phase_name, step):
            with self._lock:
                bar = self._bars.get(phase_name)
                if bar is not None:
                    bar.update(step + 1 - bar.n)
            return True  # False would cancel the build

        def phase_finish(self, phase_name):
            with self._lock:
                bar = self._bars.pop(phase_name, None)
                if bar is not None:
                    bar.close()

        def close(self):
            with self._lock:
                for bar in self._bars.values():
                    bar.close()
                self._bars.clear()

    return Monitor()


def _network_flags(trt, settings: dict[str, Any]) -> int:
    """EXPLICIT_BATCH on 8.x (implied from 10), STRONGLY_TYPED on 10.x when asked for; none on 11,
    where every network is strongly typed and the flag is deprecated and ignored."""
    flags = 0
    for name in settings["network_flags"]:
        flags |= 1 << int(getattr(trt.NetworkDefinitionCreationFlag, name))
    return flags


def _add_profile(builder, network, config, profiles: dict[str, dict[str, list[int]]]) -> None:
    dynamic = [network.get_input(i) for i in range(network.num_inputs) if -1 in tuple(network.get_input(i).shape)]
    if not dynamic:
        return
    profile = builder.create_optimization_profile()
    for tensor in dynamic:
        shape = profiles.get(tensor.name)
        if shape is None:
            fixed = [1 if d == -1 else d for d in tensor.shape]
            shape = {"min": fixed, "opt": fixed, "max": fixed}
            logger.warning("input '%s' is dynamic and not in --shapes: building for %s only",
                           tensor.name, "x".join(map(str, fixed)))
        profile.set_shape(tensor.name, shape["min"], shape["opt"], shape["max"])
    config.add_optimization_profile(profile)


class IOTensor(NamedTuple):
    """An engine input or output: name, shape (-1 for a dynamic dim), NumPy dtype."""

    name: str
    shape: tuple[int, ...]
    dtype: np.dtype


class TensorRTRunner:
    """Runs a TensorRT engine: pycuda device buffers, pinned host buffers, one CUDA stream.

    with TensorRTRunner("model.engine") as runner:
        outputs = runner.infer({"input": batch})
        host_ms, gpu_ms = runner.time_once()

    The manifest beside the engine is checked against this machine first (TensorRT version,
    compute capability). Uses named I/O tensors and execute_async_v3 where TensorRT has them
    (8.5+), bindings and execute_async_v2 before.
    """

    def __init__(self, engine_path: str | os.PathLike, *, device: int = 0, check_manifest: bool = True):
        self.path = Path(engine_path)
        self.manifest = mf.read_manifest(self.path) if check_manifest else None
        trt, cuda = _require_runtime(self.path)
        self._trt, self._cuda = trt, cuda
        self._context = None
        self._cuda_context = cuda.Device(device).retain_primary_context()
        self._cuda_context.push()
        try:
            if self.manifest is not None:
                for warning in mf.check_runtime(self.manifest, tensorrt_version=trt.__version__,
                                                device=device_info(cuda, device)):
                    logger.warning("%s", warning)
            self._logger = trt.Logger(trt.Logger.WARNING)
            self._runtime = trt.Runtime(self._logger)
            self._engine = self._runtime.deserialize_cuda_engine(self.path.read_bytes())
            if self._engine is None:
                raise EdgepackError(f"{self.path}: TensorRT could not load the engine (see its messages above)",
                                    hint="rebuild it on this machine with `edgepack build`")
            self._context = self._engine.create_execution_context()
            self._named = hasattr(self._engine, "num_io_tensors") and hasattr(self._context, "execute_async_v3")
            self._stream = cuda.Stream()
            self._tensors = self._io_tensors()  # [(IOTensor, is_input)] in engine order
            self._buffers: dict[str, tuple[np.ndarray, Any]] = {}
            self._shapes: dict[str, tuple[int, ...]] = {}
        except BaseException:
            self._cuda_context.pop()
            raise

    # --- lifetime -------------------------------------------------------------------------
    def __enter__(self) -> "TensorRTRunner":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._context is None:
            return
        for _, device_mem in self._buffers.values():
            device_mem.free()
        self._buffers.clear()
        self._context = self._engine = self._runtime = None
        self._cuda_context.pop()

    # --- interface ------------------------------------------------------------------------
    @property
    def inputs(self) -> list[IOTensor]:
        return [t for t, is_input in self._tensors if is_input]

    @property
    def outputs(self) -> list[IOTensor]:
        return [t for t, is_input in self._tensors if not is_input]

    def attach_profiler(self, profiler) -> None:
        """Per-layer times: `profiler` is a tensorrt.IProfiler, called after each inference."""
        self._context.profiler = profiler

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._load(feeds)
        self._copy_in()
        self._execute()
        self._copy_out()
        self._stream.synchronize()
        return {t.name: self._buffers[t.name][0].copy() for t in self.outputs}

    run = infer

    def time_once(self, feeds: dict[str, np.ndarray] | None = None) -> tuple[float, float]:
        """(host latency ms: H2D + compute + D2H, GPU compute ms between CUDA events), as trtexec."""
        if feeds is not None or not self._buffers:
            self._load(feeds or self._random_feeds())
        start, end = self._cuda.Event(), self._cuda.Event()
        begin = time.perf_counter()
        self._copy_in()
        start.record(self._stream)
        self._execute()
        end.record(self._stream)
        self._copy_out()
        self._stream.synchronize()
        host_ms = (time.perf_counter() - begin) * 1e3
        return host_ms, end.time_since(start)

    # --- internals ------------------------------------------------------------------------
    def _io_tensors(self) -> list[tuple[IOTensor, bool]]:
        trt, engine = self._trt, self._engine
        tensors = []
        if self._named:
            for i in range(engine.num_io_tensors):
                name = engine.get_tensor_name(i)
                tensors.append((IOTensor(name, tuple(engine.get_tensor_shape(name)),
                                         np.dtype(trt.nptype(engine.get_tensor_dtype(name)))),
                                engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT))
        else:
            for i in range(engine.num_bindings):
                tensors.append((IOTensor(engine.get_binding_name(i), tuple(engine.get_binding_shape(i)),
                                         np.dtype(trt.nptype(engine.get_binding_dtype(i)))),
                                engine.binding_is_input(i)))
        return tensors

    def _random_feeds(self) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        feeds = {}
        for t in self.inputs:
            shape = self._shapes.get(t.name) or tuple(1 if d < 0 else d for d in t.shape)
            feeds[t.name] = rng.standard_normal(shape).astype(t.dtype)
        return feeds

    def _load(self, feeds: dict[str, np.ndarray]) -> None:
        """Set input shapes, (re)allocate buffers whose shape changed, stage inputs in pinned memory."""
        names = {t.name for t in self.inputs}
        if set(feeds) != names:
            raise EdgepackError(f"inputs do not match the engine: got {sorted(feeds)}, it takes {sorted(names)}")
        for index, (tensor, is_input) in enumerate(self._tensors):
            if not is_input:
                continue
            array = np.ascontiguousarray(feeds[tensor.name], dtype=tensor.dtype)
            if self._named:
                ok = self._context.set_input_shape(tensor.name, array.shape)
            else:
                ok = self._context.set_binding_shape(index, array.shape)
            if ok is False:
                raise EdgepackError(f"input '{tensor.name}': shape {array.shape} is outside the engine's "
                                    "optimization profile", hint="rebuild with --shapes covering it")
            self._ensure_buffer(tensor.name, array.shape, tensor.dtype)
            self._buffers[tensor.name][0][...] = array
        for index, (tensor, is_input) in enumerate(self._tensors):
            if not is_input:
                shape = tuple(self._context.get_tensor_shape(tensor.name) if self._named
                              else self._context.get_binding_shape(index))
                self._ensure_buffer(tensor.name, shape, tensor.dtype)
        if self._named:
            for name, (_, device_mem) in self._buffers.items():
                self._context.set_tensor_address(name, int(device_mem))

    def _ensure_buffer(self, name: str, shape: tuple[int, ...], dtype: np.dtype) -> None:
        if self._shapes.get(name) == tuple(shape):
            return
        if name in self._buffers:
            self._buffers[name][1].free()
        host = self._cuda.pagelocked_empty(tuple(shape), dtype)
        self._buffers[name] = (host, self._cuda.mem_alloc(max(host.nbytes, 1)))
        self._shapes[name] = tuple(shape)

    def _copy_in(self) -> None:
        for t in self.inputs:
            host, device_mem = self._buffers[t.name]
            self._cuda.memcpy_htod_async(device_mem, host, self._stream)

    def _copy_out(self) -> None:
        for t in self.outputs:
            host, device_mem = self._buffers[t.name]
            self._cuda.memcpy_dtoh_async(host, device_mem, self._stream)

    def _execute(self) -> None:
        if self._named:
            ok = self._context.execute_async_v3(self._stream.handle)
        else:
            bindings = [int(self._buffers[t.name][1]) for t, _ in self._tensors]
            ok = self._context.execute_async_v2(bindings, self._stream.handle)
        if not ok:
            raise EdgepackError(f"{self.path}: TensorRT failed to run the engine (see its messages above)")


def _require_runtime(path: Path) -> tuple[Any, Any]:
    try:
        import pycuda.driver as cuda
        import tensorrt as trt
    except ImportError as exc:
        raise EdgepackError(f"{path}: running a TensorRT engine needs {exc.name}, not installed here",
                            hint=_INSTALL_HINT) from None
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise RuntimeError("no device")
    except Exception:
        raise EdgepackError(f"{path}: running a TensorRT engine needs an NVIDIA GPU, none found here",
                            hint="run it on the device it was built for") from None
    return trt, cuda
