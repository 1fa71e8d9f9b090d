"""The TensorRT backend: build an engine from a (QDQ) ONNX model, and run it with pycuda buffers.

Two halves. What needs no GPU is plain Python and tested everywhere: `builder_settings` turns a
target and the build options into TensorRT builder settings; `require_tensorrt` says in one line
what is missing. What needs TensorRT and a GPU (`build_engine`, `TensorRTRunner`) imports
`tensorrt` and `pycuda` inside functions, and supports TensorRT 8.x (bindings, EXPLICIT_BATCH)
through 10.x (named I/O tensors, strongly typed networks).

Precision, per the TensorRT developer guide:
  int8 + QDQ model, TensorRT >= 10  -> STRONGLY_TYPED network: Q/DQ scales decide what runs in INT8,
                                       every other layer keeps the model's float type, no flags.
  int8 + QDQ model, TensorRT <  10  -> INT8 flag (explicit quantization; no calibrator).
  best                              -> INT8 (QDQ models) + FP16 flags, weakly typed: TensorRT picks.
  fp16 / fp32                       -> FP16 flag / none.
DLA (`dla=N`) runs layers on DLA core N with GPU fallback; DLA has no FP32 and no strongly typed mode.
"""
from __future__ import annotations

import logging
import os
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgepack.backends import manifest as mf
from edgepack.errors import EdgepackError
from edgepack.io import write_atomic

logger = logging.getLogger(__name__)

_ON_DEVICE = ("the build must run on the target device (or a machine with the same GPU and "
              "TensorRT version)")
_INSTALL_HINT = "pip install edgepack[tensorrt] on the device (JetPack ships tensorrt), or build for a CPU target: --target x86-cpu"


def _version_tuple(version: str | None) -> tuple[int, ...]:
    if not version:
        return ()
    return tuple(int(p) for p in version.split(".")[:3] if p.isdigit())


def builder_settings(target, precision: str, dla: int | None = None, sparsity: bool | None = None,
                     shapes: dict[str, tuple] | None = None, model_has_qdq: bool = False, *,
                     tensorrt_version: str | None = None, timing_cache: str | os.PathLike | None = None,
                     workspace_mb: int | None = None) -> dict[str, Any]:
    """The TensorRT builder settings for `target`: flags, typing, workspace, DLA, profiles, cache.

    `precision` is already resolved (int8, fp16 or fp32; see common.resolve_precision) or `best`.
    `tensorrt_version` is the TensorRT that will build (default: the version the target was
    written for). `sparsity=None` follows the target. Pure: no TensorRT import.
    """
    if not target.is_tensorrt:
        raise EdgepackError(f"target '{target.name}' uses {target.backend}, not TensorRT",
                            hint="TensorRT settings apply to tensorrt targets only")
    version = tensorrt_version or target.tensorrt_version
    modern = _version_tuple(version) >= (10,)
    flags: list[str] = []
    strongly_typed = False
    if dla is not None:
        if target.dla_cores == 0:
            raise EdgepackError(f"--dla {dla}: target '{target.name}' has no DLA cores",
                                hint="leave out --dla, or pick a target with DLA (jetson-orin-nx, jetson-agx-orin)")
        if not 0 <= dla < target.dla_cores:
            raise EdgepackError(f"--dla {dla}: target '{target.name}' has DLA cores 0..{target.dla_cores - 1}",
                                hint=f"use --dla 0 to {target.dla_cores - 1}")
        if precision == "fp32":
            raise EdgepackError("--dla runs FP16 or INT8 only, not fp32",
                                hint="use --precision fp16, int8 or best with --dla")
    if precision == "int8":
        if modern and dla is None:
            strongly_typed = True
        else:
            flags.append("INT8")
            if dla is not None:
                flags.append("FP16")  # layers the Q/DQ pairs leave in float still need a DLA precision
    elif precision == "best":
        if model_has_qdq and "int8" in target.precisions:
            flags.append("INT8")
        if "fp16" in target.precisions:
            flags.append("FP16")
    elif precision == "fp16":
        flags.append("FP16")
    elif precision != "fp32":
        raise EdgepackError(f"--precision {precision!r} is not int8, fp16, fp32 or best")
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
        "precision": precision,
        "strongly_typed": strongly_typed,
        "explicit_batch": not modern,
        "flags": flags,
        "workspace_bytes": workspace * 2**20,
        "dla_core": dla,
        "profiles": {name: {"min": list(mn), "opt": list(opt), "max": list(mx)}
                     for name, (mn, opt, mx) in (shapes or {}).items()},
        "timing_cache": str(timing_cache) if timing_cache else None,
    }


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


def build_engine(model_path: Path, output: Path, target, settings: dict[str, Any], *,
                 node_names: list[str], precision: str | None = None) -> dict[str, Any]:
    """Build and write the engine; returns its manifest. `precision` is what the manifest reports
    (for `best`: int8 with a QDQ model, else fp16 or fp32); the default is settings["precision"]."""
    trt, cuda = require_tensorrt(target)
    device = device_info(cuda)
    check_device(target, device)
    check_version(target, trt.__version__)
    check_engine_path(output)
    trt_logger = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(trt_logger)
    network = builder.create_network(_network_flags(trt, settings))
    parser = trt.OnnxParser(network, trt_logger)
    if not parser.parse_from_file(str(model_path)):
        errors = parser_errors(parser, node_names)
        raise EdgepackError(f"{model_path}: TensorRT's ONNX parser refused it: " + "; ".join(errors or ["no detail"]),
                            hint="simplify it with `edgepack optimize`, or replace the named node's op")
    config = builder.create_builder_config()
    if hasattr(config, "set_memory_pool_limit"):  # TensorRT 8.4+
        config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings["workspace_bytes"])
    else:  # TensorRT 8.2 (JetPack 4.6, Jetson Nano)
        config.max_workspace_size = settings["workspace_bytes"]
    for flag in settings["flags"]:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings["dla_core"] is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings["dla_core"]
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
    return mf.make_manifest(
        backend="tensorrt", target=target, precision=precision or settings["precision"], model_path=model_path,
        artifact=output, versions={"tensorrt": trt.__version__, "jetpack_target": target.jetpack},
        device=device, flags={k: v for k, v in settings.items() if k != "tensorrt_version"},
        build_seconds=seconds, io=io)


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
    flags = 0
    if settings["explicit_batch"]:  # TensorRT 8.x; deprecated (and implied) from 10
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if settings["strongly_typed"]:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
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
