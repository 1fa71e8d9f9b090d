"""How often does the `edgepack check` gate cry wolf, and how often does it catch a real slowdown,
on a quiet machine and on one loaded at 2x its cores?

Models: a chain of MatMuls ([32, 256] x [256, 256]), 40 layers (~1 ms in ONNX Runtime, 1 thread).
  A/A     the same chain with other random weights (another file and sha256, the same work):
          what a pull request that changes the model but not its cost looks like to the gate;
  +10%    44 layers: 10% more work.
Each trial profiles the baseline, then the current model, each in a fresh session (two CI jobs),
and runs the check (threshold 5%, confidence 0.99, metric p1: the check's defaults):
  separate  the check's first verdict alone (the gate before confirmation);
  gate      `check` as it runs now: when the first check flags a slowdown or cannot rule one out,
            an interleaved A/B rerun of both model files on the same machine (2 s; paired
            blocks of 10 runs, the same percentile) decides (edgepack/profile/confirm.py).
Loads: 0 (nothing added; other users of a shared machine still count, the load average is
printed) and 2x the cores (2 x nproc busy-looping processes started by this script).
Trial kinds are round-robin, so changing load from other processes hits them alike.

Also measured, side by side in this run: the true slowdown (median ratio of the interleaved
confirmations), and the overhead of the timing loop vs a bare `session.run` loop.

Usage:  python scripts/bench/bench_check.py [--quick] [--trials-aa 100] [--trials 40] [--duration 0.5]
                                            [--loads 0,2]
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

from edgepack.profile.profiler import ProfileOptions, profile_model  # noqa: E402
from edgepack.profile.regression import check_regression  # noqa: E402
from edgepack.profile.timing import Budget, time_runs  # noqa: E402

ROWS, WIDTH, BASE_LAYERS = 32, 256, 40


def matmul_chain(layers: int, path: Path, seed: int = 0) -> Path:
    """x[32,256] -> MatMul(W1) -> ... -> MatMul(W_layers) -> y; W ~ N(0, 1/256) keeps values O(1)."""
    rng = np.random.default_rng(seed)
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


def busy(stop_at: float) -> None:
    while time.time() < stop_at:
        pass


class Load:
    """`factor` x nproc busy-looping processes (none for 0) while the block runs; samples the load average."""

    def __init__(self, factor: float):
        self.factor, self.procs, self.samples = factor, [], []

    def __enter__(self):
        import multiprocessing

        count = int(round(self.factor * (os.cpu_count() or 1)))
        self.procs = [multiprocessing.Process(target=busy, args=(time.time() + 3600,), daemon=True)
                      for _ in range(count)]
        for proc in self.procs:
            proc.start()
        if self.procs:
            time.sleep(5.0)  # let the load average climb before the first trial
        return self

    def sample(self) -> None:
        self.samples.append(os.getloadavg()[0])

    def __exit__(self, *exc):
        for proc in self.procs:
            proc.terminate()
        for proc in self.procs:
            proc.join()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials-aa", type=int, default=100)
    parser.add_argument("--trials", type=int, default=40, help="trials of the +10%% slowdown per load")
    parser.add_argument("--duration", type=float, default=0.5, help="seconds per profile")
    parser.add_argument("--confirm-duration", type=float, default=2.0, help="seconds of the confirming rerun")
    parser.add_argument("--threshold", type=float, default=0.05)
    parser.add_argument("--confidence", type=float, default=0.99)
    parser.add_argument("--loads", default="0,2", help="load factors x nproc (default 0,2)")
    parser.add_argument("--quick", action="store_true", help="30 A/A and 15 slowdown trials per load")
    args = parser.parse_args()
    if args.quick:
        args.trials_aa, args.trials = 30, 15

    from tqdm import tqdm

    from edgepack.profile.confirm import gate

    loads = [float(x) for x in args.loads.split(",")]
    rows = []
    true_ratios: list[float] = []
    with tempfile.TemporaryDirectory() as folder:
        base_model = matmul_chain(BASE_LAYERS, Path(folder) / "base.onnx")
        models = {"A/A": matmul_chain(BASE_LAYERS, Path(folder) / "same-work.onnx", seed=1),
                  "+10% work": matmul_chain(BASE_LAYERS + 4, Path(folder) / "slower.onnx")}
        options = ProfileOptions(budget=Budget(seconds=args.duration), warmup=Budget(seconds=0.1),
                                 threads=1, layer_runs=0, progress=False)
        start = time.time()
        for factor in loads:
            wanted = {"A/A": args.trials_aa, "+10% work": args.trials}
            schedule = []
            for i in range(max(wanted.values())):
                schedule += [name for name in wanted if i < wanted[name]]
            outcome = {name: {"separate": 0, "gate": 0, "n": 0} for name in wanted}
            with Load(factor) as load:
                for name in tqdm(schedule, desc=f"load {factor:g}x cores", unit="trial"):
                    load.sample()
                    baseline = profile_model(base_model, None, options)
                    current = profile_model(models[name], None, options)
                    report = check_regression(current, baseline, threshold=args.threshold,
                                              confidence=args.confidence, metric="p1", n_resamples=1000, force=True)
                    first = report["regression"]
                    report = gate(report, current, [baseline], confirm=None, duration=args.confirm_duration,
                                  force=True)
                    if report["confirm"].get("ran") and name != "A/A":
                        true_ratios.append(report["confirm"]["report"]["ratio"])
                    outcome[name]["n"] += 1
                    outcome[name]["separate"] += bool(first)
                    outcome[name]["gate"] += bool(report["regression"])
                    load.sample()
            rows.append((factor, float(np.mean(load.samples)), float(np.max(load.samples)), outcome))
        elapsed = time.time() - start
        loop_ratio, reported_ratio = overhead(base_model)
        base = profile_model(base_model, None, options)["latency_ms"]

    print(f"\nedgepack check: threshold {args.threshold:.0%}, confidence {args.confidence}, metric p1, "
          f"{args.duration:g} s per profile, 1 thread, confirmation {args.confirm_duration:g} s interleaved (paired p1 blocks); "
          f"base model p1 {base['p1']:.3f} ms, p50 {base['p50']:.3f} ms; {elapsed:.0f} s of trials on "
          f"{os.cpu_count()} CPUs")
    if true_ratios:
        print(f"true slowdown of '+10% work': median interleaved ratio {np.median(true_ratios):.3f} "
              f"over {len(true_ratios)} confirmations")
    print(f"{'added load':<11} {'load avg':>9} {'max':>5}  {'A/A false alarms':>24}  {'+10% slowdown caught':>26}")
    print(f"{'':<11} {'':>9} {'':>5}  {'separate':>11} {'gate':>12}  {'separate':>12} {'gate':>13}")
    for factor, mean_load, max_load, outcome in rows:
        aa, slow = outcome["A/A"], outcome["+10% work"]

        def cell(hit, n):
            return f"{hit}/{n} {hit / n:>5.1%}" if n else "-"
        print(f"{f'{factor:g}x cores':<11} {mean_load:>9.1f} {max_load:>5.1f}  {cell(aa['separate'], aa['n']):>11} "
              f"{cell(aa['gate'], aa['n']):>12}  {cell(slow['separate'], slow['n']):>12} {cell(slow['gate'], slow['n']):>13}")
    print("goal: gate A/A false alarms <= 1%, +10% caught >= 95%, at load 2x the cores")
    print(f"\ntiming-loop overhead vs a bare session.run loop (interleaved ABBA, {base['p50']:.2f} ms model): "
          f"wall per run x{loop_ratio:.4f} ({(loop_ratio - 1) * 100:+.2f}%), "
          f"reported mean latency x{reported_ratio:.4f} ({(reported_ratio - 1) * 100:+.2f}%)")
    flags = sorted({f for f in Path("/proc/cpuinfo").read_text().split() if f in
                    ("avx512_vnni", "avx_vnni", "avx512f", "avx2")}) if Path("/proc/cpuinfo").exists() else []
    print(f"CPU flags: {' '.join(flags) or '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
