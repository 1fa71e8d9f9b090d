"""Refit after pruning (passes/refit.py) on real data: the MNIST CNN from ../shared, real digits.

80 % of its weights pruned (element-wise; its channel groups touch ops channel pruning leaves whole), then refitted by least squares on 256 digits against
the float model: on 256 other digits its logits are closer to the original's than before the refit.
"""
from __future__ import annotations

import gzip

import numpy as np

from edgepack import io, runtime
from edgepack.commands.prune import prune as prune_command
from edgepack.graph import const_array
from edgepack.passes.prune import prune
from edgepack.passes.refit import refit
from tests.helpers import SHARED_DATA, SHARED_MODELS, check, requires_shared

pytestmark = requires_shared


def _digits() -> np.ndarray:
    with gzip.open(SHARED_DATA / "mnist" / "t10k-images-idx3-ubyte.gz") as f:
        return np.frombuffer(f.read(), np.uint8, offset=16).reshape(-1, 1, 28, 28).astype(np.float32)


def _error(model, original, x) -> float:
    got = runtime.session(model).run(None, {"Input3": x})[0]
    want = runtime.session(original).run(None, {"Input3": x})[0]
    return float(np.mean((got - want) ** 2) / np.var(want))


def test_refit_lowers_pruned_output_error_on_held_out_data():
    digits = _digits()
    original = io.load(SHARED_MODELS / "mnist_cntk_fp32.onnx")
    pruned, _ = prune(original, sparsity=0.8, granularity="element")
    held_out = digits[-256:]
    before = _error(pruned, original, held_out)
    report = refit(pruned, original, [{"Input3": digits[i:i + 64]} for i in range(0, 256, 64)])
    after = _error(pruned, original, held_out)
    assert report["layers"] and after < 0.7 * before, (before, after)
    weights = [const_array(n.inputs[1]) for n in pruned.graph if n.op_type in ("Conv", "MatMul")]
    weights = [w for w in weights if w is not None]
    assert all(np.mean(w == 0) >= 0.79 for w in weights)  # the pruned weights stay zero
    check(pruned)


def test_prune_command_reports_refit(tmp_path):
    data = tmp_path / "digits.npz"
    np.savez(data, Input3=_digits()[:128])
    report = prune_command(SHARED_MODELS / "mnist_cntk_fp32.onnx", tmp_path / "out.onnx", sparsity=0.8,
                           granularity="element", refit=str(data))
    refit_details = report.to_json()["refit"]
    assert refit_details["after"]["sqnr_db"] > refit_details["before"]["sqnr_db"]
    assert "refit:" in report.text()
