"""`optimize` over the ONNX node test suite (the cases the onnx package generates): at least
99.5 % of the graphs ONNX Runtime runs are kept, with the same outputs under the suite's own rule
(NaN equals NaN). The measure itself: scripts/bench/bench_node_suite.py."""
from __future__ import annotations

import importlib.util

import pytest

from tests.helpers import REPO


@pytest.mark.slow
def test_optimize_keeps_the_node_suite():
    spec = importlib.util.spec_from_file_location("bench_node_suite", REPO / "scripts/bench/bench_node_suite.py")
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    result = bench.measure()
    assert result["runnable"] > 1000
    kept = result["kept"] / result["runnable"]
    assert kept >= 0.995, f"{kept:.2%} kept; first refusals: {result['refused'][:10]}"
