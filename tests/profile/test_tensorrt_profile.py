"""Profiling a real TensorRT engine: needs TensorRT, pycuda and an NVIDIA GPU (skipped elsewhere)."""
from __future__ import annotations

import pytest

from edgepack.profile.profiler import ProfileOptions, profile_model
from edgepack.profile.timing import Budget
from tests.backends.test_tensorrt_gpu import _gpu_ready


pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not _gpu_ready(), reason="needs TensorRT and an NVIDIA GPU")]


def test_profile_engine_host_vs_gpu_and_layers(tmp_path):
    import edgepack
    from edgepack.resources import example_model

    engine = tmp_path / "digits.engine"
    edgepack.build(example_model(), "nvidia-gpu", output=engine, precision="fp32",
                   shapes="input:1x1x8x8/4x1x8x8/16x1x8x8")
    result = profile_model(engine, "nvidia-gpu", ProfileOptions(budget=Budget(runs=200), warmup=Budget(runs=20),
                                                               batch=4, layer_runs=10, progress=False))
    assert result["backend"] == "tensorrt" and result["runs"] == 200 and result["batch"] == 4
    assert len(result["gpu_samples_ms"]) == 200
    # host latency includes the copies: never below GPU compute time
    assert result["latency_ms"]["p50"] >= result["gpu_compute_ms"]["p50"] > 0
    assert result["layers"] and sum(r["percent"] for r in result["layers"]) == pytest.approx(100.0)
