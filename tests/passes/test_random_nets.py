"""optimize on many random pruned CNNs (tests/passes/nets.py:random_pruned_net): every result
passes the checker, keeps its outputs, and a second optimize changes nothing.

    x -> [conv_bn | depthwise | grouped | residual Add/Sub | Concat | SE Mul | Mul/Div | pool
          | ConvTranspose] x 2..4 -> GAP/Flatten/Reshape/ReduceMean/GMP -> Gemm -> Relu -> Gemm/MatMul
"""
from __future__ import annotations

import numpy as np
import pytest

from edgepack.inspection import inspect_model
from edgepack.passes import optimize
from tests.helpers import check, run_ort
from tests.passes.nets import random_pruned_net

SEEDS = range(60)


@pytest.mark.parametrize("seed", SEEDS)
def test_random_pruned_net_keeps_outputs_and_is_idempotent(seed):
    model = random_pruned_net(seed)
    x = np.random.default_rng(seed).standard_normal((3, 3, 8, 8)).astype(np.float32)
    ref = run_ort(model, {"x": x})[0]
    before = inspect_model(model)["params"]
    once = optimize(model)
    check(once)
    got = run_ort(once, {"x": x})[0]
    assert np.abs(got - ref).max() <= 1e-5 * max(np.abs(ref).max(), 1.0)
    stats = inspect_model(once)
    assert stats["params"] <= before
    twice = optimize(once)
    again = inspect_model(twice)
    assert (again["nodes"], again["params"]) == (stats["nodes"], stats["params"])
    np.testing.assert_array_equal(run_ort(twice, {"x": x})[0], got)


@pytest.mark.parametrize("seeds", [pytest.param(SEEDS[:15], id="15-nets"),
                                   pytest.param(SEEDS, id="60-nets", marks=pytest.mark.slow)])
def test_random_nets_do_shrink(seeds):
    """The pass is not a no-op on these nets: nearly all of them lose parameters beyond BN folding
    (the fast run checks 15 of the 60 nets; the slow run all of them)."""
    from edgepack.passes.fold_batchnorm import FoldBatchNormPass

    shrunk = 0
    for seed in seeds:
        folded = FoldBatchNormPass()(random_pruned_net(seed)).model
        shrunk += inspect_model(optimize(random_pruned_net(seed)))["params"] < inspect_model(folded)["params"]
    assert shrunk >= len(seeds) * 3 // 4
