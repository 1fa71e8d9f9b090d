"""Timing a TensorRT engine through edgepack.backends.tensorrt.TensorRTRunner.

Host latency (enqueue to outputs back on the host, with H2D and D2H copies) and GPU compute time
(CUDA events around the kernels) are both recorded per run, as trtexec defines them. Per-layer
times come from a tensorrt.IProfiler attached in a separate pass after the timed runs, because
the profiler synchronizes after every layer.
"""
from __future__ import annotations

from collections import defaultdict

from edgepack.errors import EdgepackError


def open_runner(path: str):
    try:
        import tensorrt  # noqa: F401
        from edgepack.backends.tensorrt import TensorRTRunner
    except ImportError as exc:
        raise EdgepackError(f"{path}: profiling a TensorRT engine needs TensorRT ({exc})",
                            hint="run on a machine with TensorRT (pip install tensorrt on x86, JetPack on Jetson)") from None
    return TensorRTRunner(path)


def layer_profiler():
    """A tensorrt.IProfiler that sums each layer's time over the runs it sees."""
    import tensorrt as trt

    class LayerTimes(trt.IProfiler):
        def __init__(self):
            trt.IProfiler.__init__(self)
            self.total_ms = defaultdict(float)
            self.runs = 0

        def report_layer_time(self, layer_name, ms):
            self.total_ms[layer_name] += ms

    return LayerTimes()


def layer_rows(profiler, runs: int) -> list[dict]:
    overall = sum(profiler.total_ms.values()) or 1.0
    rows = [{"name": name, "op_type": "TensorRT", "time_ms": ms / max(runs, 1), "percent": 100.0 * ms / overall}
            for name, ms in profiler.total_ms.items()]
    return sorted(rows, key=lambda r: -r["time_ms"])
