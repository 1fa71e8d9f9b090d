"""Benchmark: optimize on a CNN with 50% of its channels pruned. Params, MACs and ONNX Runtime CPU
latency (p50) before and after, measured side by side (interleaved rounds) in one run.

    python3 scripts/bench/bench_optimize.py [--rounds 30]
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgepack import runtime  # noqa: E402
from edgepack.inspection import inspect_model  # noqa: E402
from edgepack.passes import optimize  # noqa: E402
from tests.passes.nets import NetBuilder  # noqa: E402


def pruned_cnn(width: int = 64, layers: int = 6, size: int = 32):
    """x[N,3,size,size] -> (conv_bn 3x3 + Relu) x layers -> GAP -> Gemm(10); every other conv has
    half its filters pruned, so every conv loses half its input or half its output channels."""
    b = NetBuilder(0)
    y, cin = "x", 3
    for i in range(layers):
        y = b.conv_bn(y, cin, width, 3, pruned=range(0, width, 2) if i % 2 == 0 else ())
        cin = width
    y = b.node("Flatten", [b.node("GlobalAveragePool", [y])])
    return b.model(["N", 3, size, size], b.gemm(y, width, 10), ["N", 10])


def p50_interleaved(sessions, feeds, rounds: int, per_round: int = 10) -> list[float]:
    times = [[] for _ in sessions]
    for s in sessions:  # warm-up
        for _ in range(5):
            s.run(None, feeds)
    for _ in range(rounds):
        for i, s in enumerate(sessions):
            for _ in range(per_round):
                start = time.perf_counter()
                s.run(None, feeds)
                times[i].append(time.perf_counter() - start)
    return [float(np.median(t)) * 1e3 for t in times]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=30)
    args = parser.parse_args()
    before = pruned_cnn()
    b_stats = inspect_model(before)
    start = time.perf_counter()
    after = optimize(pruned_cnn())
    seconds = time.perf_counter() - start
    a_stats = inspect_model(after)
    feeds = {"x": np.random.default_rng(0).standard_normal((1, 3, 32, 32)).astype(np.float32)}
    rows = []
    for threads in (1, 2):
        sessions = [runtime.session(before, threads=threads), runtime.session(after, threads=threads)]
        err = runtime.max_abs_error(sessions[0].run(None, feeds), sessions[1].run(None, feeds))
        p50 = p50_interleaved(sessions, feeds, args.rounds)
        rows.append((threads, p50, err))
    print(f"CNN, 6 conv layers of 64 channels on 32x32, half the filters of every other layer pruned; "
          f"optimize took {seconds:.2f} s")
    print(f"{'':<22} {'before':>12} {'after':>12} {'ratio':>8}")
    for key in ("params", "macs"):
        print(f"{key:<22} {b_stats[key]:>12,} {a_stats[key]:>12,} {b_stats[key] / a_stats[key]:>7.2f}x")
    for threads, (pb, pa), err in rows:
        print(f"{f'p50 ms, {threads} thread(s)':<22} {pb:>12.3f} {pa:>12.3f} {pb / pa:>7.2f}x   "
              f"(max abs output diff {err:.1e})")


if __name__ == "__main__":
    main()
