"""How often does `edgepack check` cry wolf, and how often does it catch a real slowdown?

Models: a chain of MatMuls ([32, 256] x [256, 256]), 40 layers (~1 ms in ONNX Runtime, 1 thread);
the "slower" models have 5%, 10%, 20% more layers, so proportionally more work. Two modes:
  separate     baseline profiled, then current, each in a fresh session (as two CI jobs would);
  interleaved  `profile CURRENT --vs BASELINE`: one process, blocks of runs in ABBA order.
Each trial runs the check (threshold 5%, confidence 0.99, metric p1 by default). Trial kinds are
round-robin, so changing load from other processes hits them alike.

Also measured, side by side in this run:
  - the true slowdown of each variant: the median ratio over the interleaved trials;
  - the overhead of the timing loop vs a bare `session.run` loop, interleaved blocks.

Usage:  python scripts/bench/bench_check.py [--trials-aa 100] [--trials 30] [--duration 0.5] [--metric p1]
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgepack.profile.profiler import ProfileOptions, profile_model, profile_pair  # noqa: E402
from edgepack.profile.regression import check_regression  # noqa: E402
from edgepack.profile.timing import Budget, time_runs  # noqa: E402

ROWS, WIDTH, BASE_LAYERS = 32, 256, 40


def matmul_chain(layers: int, path: Path) -> Path:
    """x[32,256] -> MatMul(W1) -> ... -> MatMul(W_layers) -> y; W ~ N(0, 1/256) keeps values O(1)."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], "x"
    for i in range(layers):
        w = (rng.standard_normal((WIDTH, WIDTH)) / np.sqrt(WIDTH)).astype(np.float32)
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        out = "y" if i == layers - 1 else f"h{i}"
        nodes.append(helper.make_node("MatMul", [prev, f"w{i}"], [out], name=f"mm{i}"))
        prev = out
    graph = helper.make_graph(nodes, "chain", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [ROWS, WIDTH])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [ROWS, WIDTH])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.save(model, path)
    return path


def overhead(path: Path, rounds: int = 40, block: int = 50) -> tuple[float, float]:
    """(timing-loop wall per run / bare loop per run, reported mean latency / bare loop per run)."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    feeds = {"x": np.random.default_rng(0).standard_normal((ROWS, WIDTH)).astype(np.float32)}
    run = session.run
    for _ in range(block):
        run(None, feeds)
    bare, loop_wall, reported = [], [], []

    def time_bare():
        t0 = time.perf_counter()
        for _ in range(block):
            run(None, feeds)
        bare.append((time.perf_counter() - t0) / block)

    def time_loop():
        t0 = time.perf_counter()
        samples = time_runs(lambda: run(None, feeds), Budget(runs=block), progress=False)
        loop_wall.append((time.perf_counter() - t0) / block)
        reported.append(np.mean(samples) / 1000.0)

    for i in range(rounds):  # ABBA: neither loop always goes first
        for step in ((time_bare, time_loop) if i % 2 == 0 else (time_loop, time_bare)):
            step()
    bare = np.array(bare)  # paired per round: the two loops ran back to back
    return float(np.median(np.array(loop_wall) / bare)), float(np.median(np.array(reported) / bare))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials-aa", type=int, default=100)
    parser.add_argument("--trials", type=int, default=30, help="trials per slowdown")
    parser.add_argument("--duration", type=float, default=0.5, help="seconds per profile")
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--confidence", type=float, default=0.99)
    parser.add_argument("--metric", default="p1")
    parser.add_argument("--modes", default="separate,interleaved")
    args = parser.parse_args()

    from tqdm import tqdm

    modes = args.modes.split(",")
    with tempfile.TemporaryDirectory() as folder:
        extra = {"A/A": 0, "+5% work": 2, "+10% work": 4, "+20% work": 8}
        models = {name: matmul_chain(BASE_LAYERS + n, Path(folder) / f"chain{BASE_LAYERS + n}.onnx")
                  for name, n in extra.items()}
        options = ProfileOptions(budget=Budget(seconds=args.duration), warmup=Budget(seconds=0.1),
                                 threads=1, layer_runs=0, progress=False)

        def trial(mode: str, name: str) -> dict:
            if mode == "separate":   # two CI jobs: baseline first, then current, fresh sessions
                baseline = profile_model(models["A/A"], None, options)
                current = profile_model(models[name], None, options)
            else:                    # profile CURRENT --vs BASELINE: one process, ABBA blocks
                current, baseline = profile_pair(models[name], models["A/A"], None, options)
            report = check_regression(current, baseline, threshold=args.threshold, confidence=args.confidence,
                                      metric=args.metric, n_resamples=1000, force=True)
            return report

        wanted = {name: (args.trials_aa if name == "A/A" else args.trials) for name in extra}
        outcomes = {(mode, name): [] for mode in modes for name in extra}
        true_ratios: dict[str, list] = {name: [] for name in extra}
        schedule = []
        for i in range(max(wanted.values())):
            schedule += [(mode, name) for name in extra for mode in modes if i < wanted[name]]
        start = time.time()
        for mode, name in tqdm(schedule, desc="trials", unit="trial"):
            report = trial(mode, name)
            outcomes[mode, name].append((report["regression"], report["ratio"]))
            if mode == "interleaved":
                true_ratios[name].append(report["ratio"])
        elapsed = time.time() - start
        loop_ratio, reported_ratio = overhead(models["A/A"])
        base = profile_model(models["A/A"], None, options)["latency_ms"]

    print(f"\nedgepack check: threshold {args.threshold:.0%}, confidence {args.confidence}, metric {args.metric}, "
          f"{args.duration:g} s per profile, 1 thread; base model p1 {base['p1']:.3f} ms, "
          f"p50 {base['p50']:.3f} ms; {elapsed:.0f} s of trials; load average {os.getloadavg()[0]:.1f}")
    print("true slowdown: median over the interleaved trials of the measured ratio (same process, ABBA blocks)")
    print(f"{'mode':<12} {'scenario':<10} {'true slowdown':>14} {'trials':>7} {'exit 1':>7} {'rate':>7}  "
          f"{'ratio p5..p95 (median)':<24}")
    for (mode, name), results in outcomes.items():
        flagged = sum(r for r, _ in results)
        ratios = np.array([x for _, x in results])
        true = f"{(np.median(true_ratios[name]) - 1) * 100:+.1f}%" if true_ratios[name] else "?"
        label = "false alarm" if name == "A/A" else "detection"
        print(f"{mode:<12} {name:<10} {true:>14} {len(results):>7} {flagged:>7} {flagged / len(results):>7.1%}  "
              f"{np.percentile(ratios, 5):.3f}..{np.percentile(ratios, 95):.3f} ({np.median(ratios):.3f})  {label}")
    print(f"\ntiming-loop overhead vs a bare session.run loop (interleaved ABBA, {base['p50']:.2f} ms model): "
          f"wall per run x{loop_ratio:.4f} ({(loop_ratio - 1) * 100:+.2f}%), "
          f"reported mean latency x{reported_ratio:.4f} ({(reported_ratio - 1) * 100:+.2f}%)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
