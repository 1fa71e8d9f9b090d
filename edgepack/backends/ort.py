"""The ONNX Runtime backend: graph optimizations applied offline, saved as ONNX and as ORT format.

ORT's optimizer runs once at build time instead of at every session start on the device:
the optimized `.onnx` loads with any ONNX Runtime, the `.ort` file (flatbuffers) with ORT's
minimal mobile/edge build too.

The `.onnx` is optimized at level `extended`, not `all`: `all` adds the NCHWc layout, whose block
size is the build machine's vector width (8 floats with AVX2, 16 with AVX-512), and ORT applies
it again when the `.onnx` loads on the device. An `.ort` file gets no more graph optimizations
when it loads, so it is saved at `all`, with the NCHWc layout only when this machine's block size
is the target's (measured: resnet20 runs 1.8x slower without it, scripts/bench/bench_build_ort.py).
"""
from __future__ import annotations

import logging
import os
import platform
import time
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from edgepack.backends import manifest as mf
from edgepack.backends.common import publish, staging
from edgepack.runtime import bound_threads
from edgepack.errors import EdgepackError, first_line

logger = logging.getLogger(__name__)

OPTIMIZATION_LEVEL = "extended"
_ORT_FORMAT_LIMIT = 2**31 - 2**26  # flatbuffers (ORT format) cannot hold more; neither can protobuf


def output_paths(output: str | os.PathLike) -> tuple[Path, Path]:
    """(artifact, companion): `-o X.onnx` also writes X.ort, `-o X.ort` also writes X.onnx."""
    output = Path(output)
    if output.suffix not in (".onnx", ".ort"):
        raise EdgepackError(f"-o {output}: an ONNX Runtime artifact ends in .onnx or .ort",
                            hint=f"use -o {output.with_suffix('.onnx')}")
    return output, output.with_suffix(".ort" if output.suffix == ".onnx" else ".onnx")


def providers_for(target) -> list[str]:
    import onnxruntime as ort

    available = ort.get_available_providers()
    chosen = [p for p in target.execution_providers if p in available]
    missing = [p for p in target.execution_providers if p not in available]
    if missing:
        logger.warning("execution providers %s are not in this ONNX Runtime; optimizing with %s",
                       ", ".join(missing), ", ".join(chosen or ["CPUExecutionProvider"]))
    return chosen or ["CPUExecutionProvider"]


_NCHWC_BLOCK = {"avx2": 8, "avx512": 16, "avx512-vnni": 16}  # floats per SIMD register


def nchwc_block(target, cpu_flags: set[str] | None = None) -> int | None:
    """The NCHWc block size to bake into the target's `.ort`: this machine's, if it is the target's."""
    want = _NCHWC_BLOCK.get(target.cpu_isa or "")
    if want is None or platform.machine().lower() not in ("x86_64", "amd64"):
        return None
    if cpu_flags is None:
        from edgepack.cpu import cpu_flags as host_flags

        cpu_flags = host_flags()
    have = 16 if "avx512f" in cpu_flags else 8 if "avx2" in cpu_flags else None
    return want if have == want else None




def session_options(*, threads: int = 0, optimized_path: Path | None = None, ort_format: bool = False,
                    weights_nbytes: int = 0, external_data: bool = False):
    """`external_data`: the input keeps weights in a data file; the optimized model then gets its
    own data file beside it (ORT would otherwise keep pointing at the input's, relative to the
    output's folder)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    options.intra_op_num_threads = bound_threads(threads)
    if optimized_path is not None:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
        options.optimized_model_filepath = str(optimized_path)
        if ort_format:
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            options.add_session_config_entry("session.save_model_format", "ORT")
        elif weights_nbytes > _ORT_FORMAT_LIMIT or external_data:
            # an input's external data file stays beside the input: the artifact gets its own
            options.add_session_config_entry("session.optimized_model_external_initializers_file_name",
                                             optimized_path.name + ".data")
            options.add_session_config_entry(
                "session.optimized_model_external_initializers_min_size_in_bytes", "1024")
    return options


def build(model_path: Path, output: Path, target, *, precision: str, threads: int | None = None,
          weights_nbytes: int = 0, external_data: bool = False) -> dict[str, Any]:
    """Optimize `model_path` for `target` and write the artifact, its companion and the manifest."""
    import onnxruntime as ort

    artifact, companion = output_paths(output)
    threads = target.threads if threads is None else threads
    providers = providers_for(target)
    block = nchwc_block(target)
    start = time.perf_counter()
    written: dict[Path, Path] = {}
    with staging(artifact) as tmp:
        for path in (artifact, companion):
            as_ort = path.suffix == ".ort"
            if as_ort and weights_nbytes > _ORT_FORMAT_LIMIT:
                logger.warning("weights exceed 2 GB: no ORT format file (%s) written", path.name)
                continue
            staged = tmp / path.name
            options = session_options(threads=threads, optimized_path=staged, ort_format=as_ort,
                                      weights_nbytes=weights_nbytes, external_data=external_data)
            disabled = ["NchwcTransformer"] if as_ort and block is None else []
            try:
                ort.InferenceSession(str(model_path), options, providers=providers, disabled_optimizers=disabled)
            except Exception as exc:  # ORT reports unsupported ops and bad graphs as one of several types
                raise EdgepackError(f"{model_path}: ONNX Runtime cannot load it ({first_line(exc)})",
                                    hint="check the model with `edgepack inspect`") from None
            written[staged] = path
            data = tmp / (path.name + ".data")
            if data.exists():
                written[data] = path.with_name(data.name)
        seconds = time.perf_counter() - start
        runner = OrtRunner(tmp / artifact.name, threads=threads)  # loads before anything is published
        io = {"inputs": [t.summary() for t in runner.inputs], "outputs": [t.summary() for t in runner.outputs]}
        runner.close()
        for staged, final in written.items():
            publish(staged, final)
    return mf.make_manifest(
        backend="onnxruntime", target=target, precision=precision, model_path=model_path,
        artifact=artifact, versions={"onnxruntime": ort.__version__}, device=cpu_info(target),
        flags={"graph_optimization_level": OPTIMIZATION_LEVEL, "execution_providers": providers,
               "threads": threads, "ort_format": companion.name if companion.suffix == ".ort" else artifact.name,
               "ort_format_optimization_level": "all", "ort_format_nchwc_block": block},
        build_seconds=seconds, files=sorted(p.name for p in written.values()), io=io)


def cpu_info(target) -> dict[str, Any]:
    return {"machine": platform.machine(), "processor": platform.processor() or None,
            "target_isa": target.cpu_isa, "cpu_count": os.cpu_count()}


class TensorInfo(NamedTuple):
    """Name, shape (None for a dynamic dim) and NumPy dtype of an input or output."""

    name: str
    shape: tuple
    dtype: np.dtype

    def summary(self) -> dict[str, Any]:
        return {"name": self.name, "shape": [d if isinstance(d, int) else None for d in self.shape],
                "dtype": np.dtype(self.dtype).name}


class OrtRunner:
    """Runs an ONNX Runtime artifact (.onnx or .ort) on the CPU; a context manager like TensorRTRunner."""

    def __init__(self, path: str | os.PathLike, *, threads: int = 0):
        from edgepack.runtime import session

        self.path = Path(path)
        self._session = session(self.path, threads=threads)
        self.inputs = [_info(v) for v in self._session.get_inputs()]
        self.outputs = [_info(v) for v in self._session.get_outputs()]

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        names = [o.name for o in self.outputs]
        return dict(zip(names, self._session.run(names, _checked_feeds(self.inputs, feeds))))

    run = infer

    def close(self) -> None:
        self._session = None

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def _info(node_arg) -> TensorInfo:
    shape = tuple(d if isinstance(d, int) else None for d in (node_arg.shape or ()))
    from edgepack.runtime import _NUMPY

    return TensorInfo(node_arg.name, shape, np.dtype(_NUMPY.get(node_arg.type, np.float32)))


def _checked_feeds(inputs: list[TensorInfo], feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Feeds cast to each input's dtype; a missing or unknown input name is an error naming it."""
    known = {t.name: t for t in inputs}
    unknown = set(feeds) - set(known)
    missing = set(known) - set(feeds)
    if unknown or missing:
        raise EdgepackError(
            f"inputs do not match the artifact: missing {sorted(missing)}, unknown {sorted(unknown)}",
            hint=f"the artifact takes: {', '.join(known)}")
    return {name: np.ascontiguousarray(feeds[name], dtype=known[name].dtype) for name in known}
