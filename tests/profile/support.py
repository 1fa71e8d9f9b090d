"""Shared by the profile/check/history tests: tiny models on disk and synthetic profile results."""
from __future__ import annotations

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper


def matmul_relu(path, *, batch="N", width=16, layers=2, seed=0):
    """x[batch, width] -> MatMul(W0) -> Relu -> MatMul(W1) -> Relu ... -> y, nodes named mm<i>/relu<i>.

        x --MatMul(W0)--> h0 --Relu--> r0 --MatMul(W1)--> h1 --Relu--> y
    """
    rng = np.random.default_rng(seed)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((width, width)) / np.sqrt(width)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"r{i}"
        nodes += [helper.make_node("MatMul", [prev, f"w{i}"], [f"h{i}"], name=f"mm{i}"),
                  helper.make_node("Relu", [f"h{i}"], [out], name=f"relu{i}")]
        prev = out
    graph = helper.make_graph(nodes, "g", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, width])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, width])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model, full_check=True)
    onnx.save(model, path)
    return path


def synthetic_result(samples, *, sha="a" * 64, target="x86-cpu", batch=1, run_id=None):
    """A minimal edgepack.profile/1 result around given timings."""
    from edgepack.profile.stats import summarize

    samples = [float(s) for s in samples]
    return {"schema": "edgepack.profile/1", "id": run_id or f"run-{np.random.default_rng().integers(1 << 30)}",
            "created": "2026-01-01T00:00:00+00:00",
            "model": {"path": "m.onnx", "name": "m.onnx", "sha256": sha}, "target": target,
            "backend": "onnxruntime", "batch": batch, "threads": 1, "runs": len(samples),
            "latency_ms": summarize(samples), "throughput_per_s": 1.0, "samples_ms": samples,
            "outliers": 0, "layers": []}


def noisy_timings(n, median_ms, seed, *, drift=0.0):
    """Latency-like timings: log-normal jitter, an AR(1) slow component (autocorrelation) and
    rare large outliers (preemptions)."""
    rng = np.random.default_rng(seed)
    slow = np.zeros(n)
    for i in range(1, n):
        slow[i] = 0.95 * slow[i - 1] + rng.normal(0, 0.01)
    x = median_ms * np.exp(rng.normal(0, 0.03, n) + slow) * (1 + drift)
    spikes = rng.random(n) < 0.01
    x[spikes] *= rng.uniform(2, 10, spikes.sum())
    return x
