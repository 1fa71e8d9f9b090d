"""profile_model / profile_pair on tiny models in ONNX Runtime, per-node times, history store."""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.errors import EdgepackError, UsageError
from edgepack.profile.environment import sha256_of
from edgepack.profile.history import History, sparkline
from edgepack.profile.ort_profile import layer_times
from edgepack.profile.profiler import ProfileOptions, make_feeds, parse_shapes, profile_model, profile_pair
from edgepack.profile.timing import Budget
from tests.helpers import SHARED_MODELS, requires_shared, run_ort
from tests.profile.support import matmul_relu, synthetic_result

FAST = ProfileOptions(budget=Budget(runs=50), warmup=Budget(runs=3), layer_runs=5, progress=False)


def test_profile_tiny_model(tmp_path):
    # x[N,16] -> mm0 -> relu0 -> mm1 -> relu1 -> y
    path = matmul_relu(tmp_path / "tiny.onnx")
    before = sha256_of(path)
    result = profile_model(path, "x86-cpu", FAST)
    assert result["schema"] == "edgepack.profile/1"
    assert result["runs"] == 50 == len(result["samples_ms"]) and result["warmup"] == 3
    assert result["model"]["sha256"] == before == sha256_of(path)  # input untouched
    assert result["target"] == "x86-cpu" and result["backend"] == "onnxruntime" and result["threads"] == 1
    lat = result["latency_ms"]
    assert 0 < lat["min"] <= lat["p50"] <= lat["p90"] <= lat["p95"] <= lat["p99"] <= lat["max"]
    assert lat["p50"] == pytest.approx(np.median(result["samples_ms"]))
    assert result["throughput_per_s"] == pytest.approx(1000 * 50 / sum(result["samples_ms"]), rel=1e-3)
    # ORT fuses MatMul+Relu or not; either way every layer row is a node of this graph (or a fusion)
    names = {row["name"] for row in result["layers"]}
    assert names and all(any(n in name for n in ("mm0", "mm1", "relu0", "relu1")) for name in names)
    assert sum(row["percent"] for row in result["layers"]) == pytest.approx(100.0)
    env = result["environment"]
    assert env["cpu_count"] >= 1 and env["threads"] == 1 and env["versions"]["onnxruntime"]


def test_profile_batch_threads_and_data(tmp_path):
    path = matmul_relu(tmp_path / "tiny.onnx")
    data = tmp_path / "data.npz"
    x = np.random.default_rng(0).standard_normal((6, 16)).astype(np.float32)
    np.savez(data, x=x)
    options = ProfileOptions(budget=Budget(runs=20), warmup=Budget(runs=1), batch=4, threads=2,
                             data=str(data), layer_runs=0, progress=False)
    result = profile_model(path, "x86-cpu", options)
    assert result["batch"] == 4 and result["threads"] == 2 and result["layers"] == []
    feeds, batch = make_feeds([("x", ["N", 16], np.dtype(np.float32))], options)
    assert batch == 4 and np.array_equal(feeds["x"], x[:4])
    run_ort(str(path), feeds)  # the feeds fit the model


def test_make_feeds_shapes_and_errors():
    inputs = [("x", ["N", "T", 8], np.dtype(np.float32)), ("ids", [1, 5], np.dtype(np.int64))]
    with pytest.raises(UsageError, match="--shapes x:"):
        make_feeds(inputs, ProfileOptions())
    feeds, batch = make_feeds(inputs, ProfileOptions(shapes=parse_shapes("x:2x7x8")))
    assert feeds["x"].shape == (2, 7, 8) and feeds["ids"].shape == (1, 5) and feeds["ids"].dtype == np.int64
    assert batch == 2
    with pytest.raises(UsageError, match="fixed batch"):
        make_feeds(inputs, ProfileOptions(batch=3, shapes=parse_shapes("x:3x7x8")))
    with pytest.raises(UsageError, match="not inputs"):
        make_feeds(inputs, ProfileOptions(shapes=parse_shapes("y:1x2")))
    with pytest.raises(UsageError):
        parse_shapes("x=1x2")


def test_profile_pair_sees_more_work(tmp_path):
    small = matmul_relu(tmp_path / "small.onnx", width=64, layers=2)
    big = matmul_relu(tmp_path / "big.onnx", width=64, layers=16)
    options = ProfileOptions(budget=Budget(runs=200), warmup=Budget(runs=10), layer_runs=0, progress=False)
    a, b = profile_pair(big, small, "x86-cpu", options)
    assert a["runs"] == b["runs"] == 200 and a["interleaved"]
    assert a["latency_ms"]["p50"] > 1.5 * b["latency_ms"]["p50"]


def test_missing_artifact_and_engine_without_tensorrt(tmp_path):
    with pytest.raises(EdgepackError, match="not found"):
        profile_model(tmp_path / "nope.onnx", "x86-cpu", FAST)
    engine = tmp_path / "m.engine"
    engine.write_bytes(b"\0" * 16)
    try:
        import tensorrt  # noqa: F401
    except ImportError:
        with pytest.raises(EdgepackError, match="TensorRT"):
            profile_model(engine, "jetson-orin-nano", FAST)


def test_layer_times_from_ort_trace_events():
    events = [{"cat": "Session", "name": "model_run", "ts": 0, "dur": 50},
              {"cat": "Node", "name": "conv_kernel_time", "ts": 5, "dur": 40, "args": {"op_name": "Conv"}},
              {"cat": "Session", "name": "model_run", "ts": 100, "dur": 20},
              {"cat": "Node", "name": "conv_kernel_time", "ts": 101, "dur": 12, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "conv_fence_before", "ts": 101, "dur": 1, "args": {"op_name": "Conv"}},
              {"cat": "Node", "name": "relu_kernel_time", "ts": 115, "dur": 4, "args": {"op_name": "Relu"}}]
    rows = layer_times(events, runs=1, skip_runs=1)  # the first (warm-up) run is left out
    assert [(r["name"], r["op_type"]) for r in rows] == [("conv", "Conv"), ("relu", "Relu")]
    assert rows[0]["time_ms"] == pytest.approx(0.012) and rows[0]["percent"] == pytest.approx(75.0)


def test_history_add_query_recent(tmp_path):
    store = History(tmp_path / "sub" / "h.sqlite")
    with pytest.raises(EdgepackError, match="no profile history"):
        store.runs()
    rng = np.random.default_rng(0)
    ids = [store.add(synthetic_result(rng.normal(1 + i / 10, 0.01, 50), run_id=f"r{i}")) for i in range(4)]
    store.add(synthetic_result(rng.normal(2, 0.01, 50), sha="c" * 64, target="jetson-orin-nano", run_id="other"))
    assert ids == sorted(ids)
    rows = store.runs(model="a" * 12, target="x86-cpu")
    assert [r["run_id"] for r in rows] == ["r0", "r1", "r2", "r3"]
    assert rows[-1]["p50"] > rows[0]["p50"]
    assert len(store.runs()) == 5 and len(store.runs(limit=2)) == 2
    recent = store.recent(model_sha256="a" * 64, target="x86-cpu", limit=2, exclude_run_id="r3")
    assert [r["id"] for r in recent] == ["r1", "r2"] and len(recent[0]["samples_ms"]) == 50
    assert sparkline([1, 2, 3]) == "▁▄█"


@requires_shared
def test_profile_real_model_resnet20():
    result = profile_model(SHARED_MODELS / "resnet20_cifar10.onnx", "x86-cpu",
                           ProfileOptions(budget=Budget(runs=10), warmup=Budget(runs=1), layer_runs=2,
                                          progress=False))
    assert result["runs"] == 10 and result["latency_ms"]["p50"] > 0
    ops = {row["op_type"] for row in result["layers"]}
    assert any("Conv" in op for op in ops)
