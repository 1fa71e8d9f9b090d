"""Running models in ONNX Runtime on the CPU: sessions, generated inputs, output comparison."""
from __future__ import annotations

import os

import numpy as np
import onnx_ir as ir

from edgepack.errors import EdgepackError, first_line


def session(model: ir.Model | str | os.PathLike, *, threads: int = 0, optimize: bool = True,
            lean: bool = False):
    """An ORT CPU session for a model in memory or on disk (a path keeps external data mapped).
    `lean`: no memory arena or memory pattern, so buffers go back to the system after each run
    (calibration, whose many graph outputs would otherwise keep the arena at its peak)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = threads
    if lean:
        options.enable_cpu_mem_arena = False
        options.enable_mem_pattern = False
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = str(model)
    if isinstance(model, ir.Model):
        from edgepack.io import external_base_dir

        source = ir.serde.serialize_model(model).SerializeToString()
        base = external_base_dir(model)
        if base is not None:  # ORT reads a byte model's external data relative to this, else the working folder
            options.add_session_config_entry("session.model_external_initializers_file_folder_path", base)
    try:
        return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])
    except Exception as exc:
        where = "" if isinstance(model, ir.Model) else f"{model}: "
        raise EdgepackError(f"{where}ONNX Runtime cannot load the model: {first_line(exc)}") from None


_NUMPY = {"tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
          "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8,
          "tensor(uint8)": np.uint8, "tensor(bool)": np.bool_}


def input_specs(sess) -> list[tuple[str, list, type]]:
    return [(i.name, list(i.shape), _NUMPY.get(i.type, np.float32)) for i in sess.get_inputs()]


def random_feeds(sess, *, batch: int = 1, dims: dict[str, int] | None = None, seed: int = 0) -> dict[str, np.ndarray]:
    """Inputs drawn from N(0, 1) (ints from 0..9): the first dynamic dim is `batch`, others from
    `dims` by symbol name."""
    rng = np.random.default_rng(seed)
    feeds = {}
    for name, shape, dtype in input_specs(sess):
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
        if np.issubdtype(dtype, np.floating):
            feeds[name] = rng.standard_normal(concrete).astype(dtype)
        elif dtype is np.bool_:
            feeds[name] = rng.integers(0, 2, concrete).astype(bool)
        else:
            feeds[name] = rng.integers(0, 10, concrete).astype(dtype)
    return feeds


def max_abs_error(a: list[np.ndarray], b: list[np.ndarray]) -> float:
    return max((float(np.max(np.abs(x.astype(np.float64) - y.astype(np.float64)))) if x.size else 0.0)
               for x, y in zip(a, b))


def output_scale(outputs: list[np.ndarray]) -> float:
    return max((float(np.max(np.abs(o))) if o.size else 0.0) for o in outputs) or 1.0
