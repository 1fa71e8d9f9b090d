"""TensorRT backend: engines built with the TensorRT Python API, run with pycuda buffers.

TensorRT and pycuda are imported inside functions: this module imports on any machine, and what
needs no GPU (the builder settings a target implies, manifests, version checks) is plain Python.
An engine is specific to the GPU, the TensorRT version and the build flags, so it is built on
the device itself (or a machine with the same GPU and TensorRT).
"""
from __future__ import annotations

import logging
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from edgepack.backends.manifest import (check_engine_compatible, edgepack_version, model_sha256, read_manifest,
                                        write_manifest)
from edgepack.io import write_atomic
from edgepack.errors import EdgepackError
from edgepack.targets import Target

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class ShapeProfile:
    """An optimization profile for one dynamic input: min / opt / max shapes."""

    name: str
    min: tuple[int, ...]
    opt: tuple[int, ...]
    max: tuple[int, ...]


@dataclass(frozen=True)
class BuilderSettings:
    precision: str                    # int8 | fp16 | fp32
    flags: tuple[str, ...]            # trt.BuilderFlag names
    strongly_typed: bool
    workspace_bytes: int
    dla_core: int | None
    profiles: tuple[ShapeProfile, ...] = field(default=())


def parse_shapes(text: str | None) -> tuple[ShapeProfile, ...]:
    """`name:1x3x224x224/8x3x224x224/32x3x224x224[,name2:...]` (min/opt/max)."""
    if not text:
        return ()
    profiles = []
    for part in text.split(","):
        try:
            name, spec = part.rsplit(":", 1)
            dims = [tuple(int(d) for d in s.split("x")) for s in spec.split("/")]
        except ValueError:
            raise EdgepackError(f"--shapes: cannot read '{part}'",
                                hint="use NAME:MINxDIMS/OPTxDIMS/MAXxDIMS, e.g. input:1x3x32x32/8x3x32x32/32x3x32x32") from None
        if len(dims) == 1:
            dims = dims * 3
        if len(dims) != 3 or len({len(d) for d in dims}) != 1:
            raise EdgepackError(f"--shapes: '{part}' needs min/opt/max shapes of the same rank")
        if any(a > b for a, b in zip(dims[0], dims[1])) or any(a > b for a, b in zip(dims[1], dims[2])):
            raise EdgepackError(f"--shapes: '{part}' must satisfy min <= opt <= max in every dim")
        profiles.append(ShapeProfile(name, *dims))
    return tuple(profiles)


def builder_settings(target: Target, *, precision: str = "best", model_has_qdq: bool = False,
                     dla: int | None = None, sparsity: bool | None = None, shapes: tuple[ShapeProfile, ...] = (),
                     tensorrt_major: int = 10) -> BuilderSettings:
    """What a build for `target` asks of TensorRT. Pure: testable without TensorRT.

    best: INT8 when the model has Q/DQ and the target has fast INT8, else FP16 where supported.
    Explicit quantization (a QDQ model) builds a strongly typed network on TensorRT 10+, where the
    Q/DQ nodes alone decide precision; older TensorRT needs the INT8 flag (plus FP16 for the layers
    left in float).
    """
    if precision == "best":
        if model_has_qdq and "int8" in target.precisions:
            precision = "int8"
        else:
            precision = "fp16" if "fp16" in target.precisions else "fp32"
    if precision not in target.precisions:
        raise EdgepackError(f"target '{target.name}' does not support {precision}",
                            hint=f"use --precision {' or '.join(target.precisions)}")
    if precision == "int8" and not model_has_qdq:
        raise EdgepackError("--precision int8 needs a QDQ model (explicit quantization)",
                            hint="run `edgepack quantize` first, or build with --precision fp16")
    flags: list[str] = []
    strongly_typed = precision == "int8" and tensorrt_major >= 10
    if not strongly_typed:
        if precision in ("int8", "fp16") and "fp16" in target.precisions:
            flags.append("FP16")
        if precision == "int8":
            flags.append("INT8")
    if sparsity is None:
        sparsity = target.sparsity
    if sparsity and not target.sparsity:
        raise EdgepackError(f"target '{target.name}' has no 2:4 sparse tensor cores", hint="drop --sparsity")
    if sparsity:
        flags.append("SPARSE_WEIGHTS")
    if dla is not None:
        if target.dla_cores == 0:
            raise EdgepackError(f"target '{target.name}' has no DLA", hint="drop --dla")
        if not 0 <= dla < target.dla_cores:
            raise EdgepackError(f"--dla {dla}: target '{target.name}' has DLA cores 0..{target.dla_cores - 1}")
        if precision == "fp32":
            raise EdgepackError("DLA runs FP16 or INT8 only", hint="use --precision fp16 or int8 with --dla")
        flags.append("GPU_FALLBACK")
    return BuilderSettings(precision, tuple(flags), strongly_typed, target.workspace_mb << 20, dla, tuple(shapes))


def require_tensorrt(target: Target):
    """Import TensorRT and pycuda and find a GPU, or stop with one line saying what is missing."""
    where = (f"building for '{target.name}' needs TensorRT and an NVIDIA GPU; the engine must be built on "
             "the target device (or a machine with the same GPU and TensorRT version)")
    try:
        import tensorrt as trt
    except ImportError:
        raise EdgepackError(f"{where}: the 'tensorrt' Python package is not installed",
                            hint="on the device: pip install 'edgepack[tensorrt]' (JetPack ships tensorrt)") from None
    try:
        import pycuda.driver as cuda
    except ImportError:
        raise EdgepackError(f"{where}: pycuda is not installed", hint="pip install 'edgepack[tensorrt]'") from None
    try:
        cuda.init()
        if cuda.Device.count() == 0:
            raise RuntimeError("no CUDA device")
    except Exception as exc:
        raise EdgepackError(f"{where}: no usable GPU ({exc})") from None
    return trt, cuda


def build_engine(model_path: Path, target: Target, output: Path, settings: BuilderSettings,
                 timing_cache: Path | None = None) -> dict:
    trt, cuda = require_tensorrt(target)
    start = time.perf_counter()
    logger_ = trt.Logger(trt.Logger.WARNING)
    builder = trt.Builder(logger_)
    flags = 0
    major = int(trt.__version__.split(".")[0])
    if major < 10:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
    if settings.strongly_typed:
        flags |= 1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED)
    network = builder.create_network(flags)
    parser = trt.OnnxParser(network, logger_)
    if not parser.parse_from_file(str(model_path)):
        errors = []
        for i in range(parser.num_errors):
            err = parser.get_error(i)
            node = err.node_name() if hasattr(err, "node_name") else f"node #{err.node()}"
            errors.append(f"{node}: {err.desc()}")
        raise EdgepackError(f"{model_path}: TensorRT's ONNX parser failed: " + "; ".join(errors[:3]),
                            hint="run `edgepack check-qdq` and `edgepack optimize` first")
    config = builder.create_builder_config()
    config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, settings.workspace_bytes)
    for flag in settings.flags:
        config.set_flag(getattr(trt.BuilderFlag, flag))
    if settings.dla_core is not None:
        config.default_device_type = trt.DeviceType.DLA
        config.DLA_core = settings.dla_core
    dynamic = [network.get_input(i) for i in range(network.num_inputs)
               if any(d < 0 for d in network.get_input(i).shape)]
    if dynamic:
        given = {p.name: p for p in settings.profiles}
        missing = [t.name for t in dynamic if t.name not in given]
        if missing:
            raise EdgepackError(f"input '{missing[0]}' has dynamic dims", hint="give --shapes NAME:MIN/OPT/MAX")
        profile = builder.create_optimization_profile()
        for tensor in dynamic:
            p = given[tensor.name]
            profile.set_shape(tensor.name, p.min, p.opt, p.max)
        config.add_optimization_profile(profile)
    cache_bytes = timing_cache.read_bytes() if timing_cache and timing_cache.is_file() else b""
    cache = config.create_timing_cache(cache_bytes)
    config.set_timing_cache(cache, ignore_mismatch=False)
    serialized = builder.build_serialized_network(network, config)
    if serialized is None:
        raise EdgepackError(f"{model_path}: TensorRT could not build an engine for {target.name}",
                            hint="rerun with --debug to see TensorRT's log")
    write_atomic(output, bytes(serialized))
    if timing_cache:
        write_atomic(timing_cache, bytes(config.get_timing_cache().serialize()))
    device = cuda.Device(0)
    cc = "%d.%d" % device.compute_capability()
    if cc != target.compute_capability:
        logger.warning("this GPU is sm %s; target '%s' is sm %s: the engine runs here, not on the target",
                       cc, target.name, target.compute_capability)
    manifest = {
        "backend": "tensorrt", "target": target.name, "precision": settings.precision,
        "model": str(model_path), "model_sha256": model_sha256(model_path), "artifact": str(output),
        "versions": {"tensorrt": trt.__version__, **edgepack_version()},
        "device": {"name": device.name(), "compute_capability": cc},
        "flags": asdict(settings) | {"profiles": [asdict(p) for p in settings.profiles]},
        "timing_cache": str(timing_cache) if timing_cache else None,
        "build_seconds": round(time.perf_counter() - start, 3),
    }
    write_manifest(output, manifest)
    return manifest


class TensorRTRunner:
    """Runs a built engine: pinned host buffers, device buffers, one CUDA stream.

    with TensorRTRunner(path) as r: outputs = r.infer({"input": x}); host_ms, gpu_ms = r.time_once()
    Host latency includes the copies to and from the GPU; GPU compute time is measured with CUDA
    events around the enqueue alone (as trtexec defines them).
    """

    def __init__(self, engine_path: str | Path, target: Target | None = None):
        self.path = Path(engine_path)
        self.manifest = read_manifest(self.path)
        from edgepack.targets import load_target

        self.trt, self.cuda = require_tensorrt(target or load_target(self.manifest["target"]))
        trt, cuda = self.trt, self.cuda
        self.context_cuda = cuda.Device(0).make_context()
        device = cuda.Device(0)
        check_engine_compatible(self.manifest, tensorrt_version=trt.__version__, device_name=device.name(),
                                compute_capability="%d.%d" % device.compute_capability(), artifact=self.path)
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(self.path.read_bytes())
        if self.engine is None:
            raise EdgepackError(f"{self.path}: TensorRT could not load the engine")
        self.context = self.engine.create_execution_context()
        self.stream = cuda.Stream()
        self.v10 = hasattr(self.engine, "num_io_tensors")
        self.io = self._io_tensors()
        self.buffers: dict[str, tuple] = {}

    def _io_tensors(self) -> list[tuple[str, bool, np.dtype, tuple]]:
        trt, e = self.trt, self.engine
        if self.v10:
            names = [e.get_tensor_name(i) for i in range(e.num_io_tensors)]
            return [(n, e.get_tensor_mode(n) == trt.TensorIOMode.INPUT, np.dtype(trt.nptype(e.get_tensor_dtype(n))),
                     tuple(e.get_tensor_shape(n))) for n in names]
        return [(e.get_binding_name(i), e.binding_is_input(i), np.dtype(trt.nptype(e.get_binding_dtype(i))),
                 tuple(e.get_binding_shape(i))) for i in range(e.num_bindings)]

    @property
    def inputs(self):
        return [(n, s, d) for n, is_in, d, s in self.io if is_in]

    @property
    def outputs(self):
        return [(n, s, d) for n, is_in, d, s in self.io if not is_in]

    def _prepare(self, feeds: dict[str, np.ndarray]) -> None:
        cuda = self.cuda
        for index, (name, is_input, dtype, _) in enumerate(self.io):
            if not is_input:
                continue
            if name not in feeds:
                raise EdgepackError(f"{self.path}: no data for engine input '{name}'")
            shape = feeds[name].shape
            if self.v10:
                self.context.set_input_shape(name, shape)
            else:
                self.context.set_binding_shape(index, shape)
        for index, (name, is_input, dtype, _) in enumerate(self.io):
            shape = tuple(self.context.get_tensor_shape(name) if self.v10 else self.context.get_binding_shape(index))
            if name not in self.buffers or self.buffers[name][0].shape != shape:
                host = cuda.pagelocked_empty(shape, dtype)
                self.buffers[name] = (host, cuda.mem_alloc(max(host.nbytes, 1)))
            if self.v10:
                self.context.set_tensor_address(name, int(self.buffers[name][1]))
            if is_input:
                np.copyto(self.buffers[name][0], feeds[name].astype(dtype, copy=False))

    def _enqueue(self) -> None:
        if self.v10:
            self.context.execute_async_v3(stream_handle=self.stream.handle)
        else:
            bindings = [int(self.buffers[n][1]) for n, *_ in self.io]
            self.context.execute_async_v2(bindings=bindings, stream_handle=self.stream.handle)

    def time_once(self, feeds: dict[str, np.ndarray] | None = None) -> tuple[float, float]:
        """(host latency ms: H2D + compute + D2H, GPU compute ms from CUDA events)."""
        cuda = self.cuda
        if feeds is not None or not self.buffers:
            self._prepare(feeds or self.random_feeds())
        start_evt, end_evt = cuda.Event(), cuda.Event()
        t0 = time.perf_counter()
        for name, is_input, *_ in self.io:
            if is_input:
                cuda.memcpy_htod_async(self.buffers[name][1], self.buffers[name][0], self.stream)
        start_evt.record(self.stream)
        self._enqueue()
        end_evt.record(self.stream)
        for name, is_input, *_ in self.io:
            if not is_input:
                cuda.memcpy_dtoh_async(self.buffers[name][0], self.buffers[name][1], self.stream)
        self.stream.synchronize()
        host_ms = (time.perf_counter() - t0) * 1e3
        return host_ms, start_evt.time_till(end_evt)

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        self._prepare(feeds)
        self.time_once()
        return {n: self.buffers[n][0].copy() for n, is_input, *_ in self.io if not is_input}

    run = infer

    def random_feeds(self, batch: int = 1) -> dict[str, np.ndarray]:
        rng = np.random.default_rng(0)
        return {n: rng.standard_normal([batch if d < 0 else d for d in s]).astype(dt) for n, s, dt in self.inputs}

    def attach_profiler(self, profiler) -> None:
        """A tensorrt.IProfiler: TensorRT calls its report_layer_time(layer, ms) per layer per run."""
        self.context.profiler = profiler

    def close(self) -> None:
        self.buffers.clear()
        self.context = self.engine = None
        self.context_cuda.pop()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
