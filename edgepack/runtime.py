"""Running models in ONNX Runtime on the CPU: sessions, generated inputs, output comparison."""
from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError, first_line


def session(model: ir.Model | str | os.PathLike, *, threads: int = 0, optimize: bool = True,
            lean: bool = False):
    """An ORT CPU session for a model in memory or on disk.

    A model in memory is handed over without copying its weights: the graph goes as bytes with a
    stub per large initializer, and the weights as OrtValues over the arrays onnx-ir already holds
    (memory-mapped for external data). Serializing them into one protobuf would cost two copies,
    and ORT would resolve external data against the current directory instead of the model's folder.
    `lean`: no memory arena or memory pattern, so buffers go back to the system after each run
    (calibration, whose many graph outputs would otherwise keep the arena at its peak).
    """
    import onnxruntime as ort

    quiet_onnxruntime()
    options = ort.SessionOptions()
    options.log_severity_level = ort_log_severity()
    options.intra_op_num_threads = bound_threads(threads)
    if lean:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    if not optimize:  # run the graph as written, weights as given: no fused or prepacked copies
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
        options.add_session_config_entry("session.disable_prepacking", "1")
    keep_alive = None
    if isinstance(model, ir.Model):
        source, keep_alive = _graph_bytes_and_weights(model, options)
    else:
        source = str(model)
    try:
        sess = ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        where = "" if isinstance(model, ir.Model) else f"{model}: "
        raise EdgepackError(f"{where}ONNX Runtime cannot load the model: {first_line(exc)}") from None
    sess._edgepack_weights = keep_alive  # the OrtValues borrow these arrays' memory
    return sess


_LIFTED_DTYPES = {ir.DataType.FLOAT, ir.DataType.FLOAT16, ir.DataType.DOUBLE, ir.DataType.INT8,
                  ir.DataType.UINT8, ir.DataType.INT16, ir.DataType.UINT16, ir.DataType.INT32,
                  ir.DataType.INT64, ir.DataType.UINT32, ir.DataType.UINT64, ir.DataType.BOOL}
_LIFT_MIN_BYTES = 4096
_STUB = "__edgepack_in_memory__"


def _graph_bytes_and_weights(model: ir.Model, options) -> tuple[bytes, list]:
    """The model's protobuf bytes without its large main-graph initializers, which are added to
    `options` as external initializers instead. Tensors left in the protobuf that still point at
    external data are read from the model's folder, not from the current directory."""
    import onnxruntime as ort

    names, values, swapped = [], [], []
    try:
        for value in model.graph.initializers.values():
            name = value.name  # what the protobuf will call it (a renamed value keeps its old dict key)
            tensor = value.const_value
            if tensor is None or tensor.dtype not in _LIFTED_DTYPES or tensor.nbytes < _LIFT_MIN_BYTES:
                continue
            if not value.uses() and not value.is_graph_output():
                continue  # ORT drops unused initializers, then refuses an external one of that name
            array = tensor.numpy()
            if not array.flags.c_contiguous:
                continue
            names.append(name)
            values.append(ort.OrtValue.ortvalue_from_numpy(array))
            swapped.append((value, tensor))
            value.const_value = ir.ExternalTensor(_STUB, 0, tensor.nbytes, tensor.dtype,
                                                  shape=tensor.shape, name=name)
        data = ir.serde.serialize_model(model).SerializeToString()
    finally:
        for value, tensor in swapped:
            value.const_value = tensor
    folders = {os.path.dirname(t.path) for t in _external_tensors(model)}
    if len(folders) == 1:
        options.add_session_config_entry("session.model_external_initializers_file_folder_path",
                                         folders.pop() or ".")
    if names:
        options.add_external_initializers(names, values)
    return data, values


def _external_tensors(model: ir.Model):
    for graph in (model.graph, *model.graph.subgraphs()):
        for value in graph.initializers.values():
            if isinstance(value.const_value, ir.ExternalTensor) and value.const_value.location != _STUB:
                yield value.const_value


# Threads are bounded by the machine: a recipe or target asking for 100000 threads would make ORT
# spawn them all (minutes, then out of memory).
MAX_THREADS = max(1, os.cpu_count() or 1) * 4


def bound_threads(threads: int) -> int:
    """`threads` for ORT (0 = ORT's default), clamped to a few per CPU core."""
    if threads is None or threads <= 0:
        return 0
    return min(int(threads), MAX_THREADS)


_QUIET = False


def ort_log_severity() -> int:
    """ORT's C++ log level for edgepack's: nothing below FATAL (4) unless edgepack's own logging is
    at INFO (-v: warnings, 2) or DEBUG (--debug: everything, 0). An ORT error is raised as a Python
    exception too, which edgepack turns into its own message: the log line would only repeat it
    on stderr, where a library must not write unasked."""
    import logging

    level = logging.getLogger("edgepack").getEffectiveLevel()
    return 0 if level <= logging.DEBUG else 2 if level <= logging.INFO else 4


def quiet_onnxruntime() -> None:
    """ORT's C++ logger writes warnings to stderr before any session exists: see ort_log_severity."""
    global _QUIET
    if _QUIET:
        return
    import onnxruntime as ort

    ort.set_default_logger_severity(ort_log_severity())
    _QUIET = True


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
          "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def model_input_specs(model: ir.Model) -> list[tuple[str, list, type]]:
    """`input_specs` read from the graph itself, without building a session."""
    specs = []
    for value in model.graph.inputs:
        if value.is_initializer():
            continue
        dtype = value.dtype.numpy() if value.dtype is not None else np.float32
        shape = [d if isinstance(d, int) else str(d) for d in value.shape] if value.shape is not None else []
        specs.append((value.name, shape, np.dtype(dtype).type))
    return specs


def input_specs(sess) -> list[tuple[str, list, type]]:
    return [(i.name, list(i.shape), _NUMPY.get(i.type, np.float32)) for i in sess.get_inputs()]


MAX_FEED_BYTES = 1 << 30


def random_feeds(sess, *, batch: int = 1, dims: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs drawn from N(0, 1) (ints from 0..9): the first dynamic dim is `batch`, others from
    `dims` by symbol name. `sess` is an ORT session or an `ir.Model`."""
    rng = np.random.default_rng(seed)
    feeds = {}
    specs = model_input_specs(sess) if isinstance(sess, ir.Model) else input_specs(sess)
    for name, shape, dtype in specs:
        concrete = []
        for i, d in enumerate(shape):
            if isinstance(d, int) and d >= 0:
                concrete.append(d)
            elif dims and isinstance(d, str) and d in dims:
                concrete.append(dims[d])
            elif i == 0:
                concrete.append(batch)
            else:
                raise EdgepackError(f"input '{name}' has dynamic dim '{d}' at axis {i}",
                                    hint="give its size with --shapes NAME:D0xD1x...")
        if int(np.prod(concrete, dtype=np.float64)) * np.dtype(dtype).itemsize > MAX_FEED_BYTES:
            raise EdgepackError(f"input '{name}' of shape {concrete} is too large for test inputs "
                                f"(over {MAX_FEED_BYTES >> 20} MiB)", hint="check the model's input shape")
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        elif dtype is np.bool_:
            feeds[name] = rng.integers(0, 2, concrete).astype(bool)
        else:
            feeds[name] = rng.integers(0, 10, concrete).astype(dtype)
    return feeds


def run(sess, names, feeds: dict[str, np.ndarray], *, where: str = "") -> list[np.ndarray]:
    """`sess.run`, with ORT's errors for inputs the model cannot take as one `error:` line."""
    try:
        return sess.run(names, feeds)
    except Exception as exc:  # ORT raises InvalidArgument, Fail, RuntimeException...
        text = first_line(exc)
        hint = None
        if "invalid dimensions" in text.lower():
            hint = ("the data's shape does not fit the model's inputs (a model exported with a fixed "
                    "batch of 1 takes one sample at a time)")
        prefix = f"{where}: " if where else ""
        raise EdgepackError(f"{prefix}ONNX Runtime cannot run the model on this data: {text}", hint=hint) from None


def run_and_free(model: ir.Model | str | os.PathLike, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    """Outputs of `model` on `feeds` in a session that is gone (and its memory returned) after."""
    import gc

    sess = session(model, optimize=False)
    try:
        return run(sess, None, feeds)
    finally:
        del sess
        gc.collect()
        trim_memory()


def trim_memory() -> None:
    """Give freed heap memory back to the OS (glibc keeps it otherwise, and it counts as RSS)."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def max_abs_error(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    """Largest |a - b| over all outputs, compared as ONNX's node tests compare (equal_nan): NaN
    where `a` has NaN, and the same infinity, are equal; NaN or inf against anything else is an
    error of inf."""
    worst = 0.0
    for x, y in zip(_flat(a), _flat(b)):
        if x is None or not x.size:
            continue
        x64, y64 = np.atleast_1d(x).astype(np.float64), np.atleast_1d(y).astype(np.float64)
        with np.errstate(invalid="ignore"):
            diff = np.abs(x64 - y64)
        same = (x64 == y64) | (np.isnan(x64) & np.isnan(y64))
        diff[same] = 0.0
        if np.isnan(diff).any():
            return float("inf")
        worst = max(worst, float(diff.max()))
    return worst


def _flat(outputs) -> list:
    """Outputs with sequence outputs (lists of arrays) spread out, None (an empty optional) kept."""
    flat = []
    for o in outputs:
        if isinstance(o, (list, tuple)):
            flat += _flat(o)
        else:
            flat.append(None if o is None else np.asarray(o))
    return flat


def same_structure(a: list, b: list) -> bool:
    """The same number of outputs, sequences of the same lengths, arrays of the same shapes."""
    fa, fb = _flat(a), _flat(b)
    return len(a) == len(b) and len(fa) == len(fb) and all(
        (x is None) == (y is None) and (x is None or x.shape == y.shape) for x, y in zip(fa, fb))


def output_scale(outputs: list[np.ndarray]) -> float:
    """The largest finite |output| (1 when there is none): the scale a relative error divides by
    (an infinite output must not make every error relative zero)."""
    scales = []
    for o in _flat(outputs):
        if o is None or o.dtype.kind not in "biuf":
            continue
        values = np.abs(o.astype(np.float64, copy=False)).reshape(-1) if o.size else np.zeros(0)
        finite = values[np.isfinite(values)]
        scales.append(float(finite.max()) if finite.size else 0.0)
    return max(scales, default=0.0) or 1.0
