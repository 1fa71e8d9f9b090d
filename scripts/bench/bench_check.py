"""How often does the `edgepack check` gate fail an unchanged model, and how often does it catch a
real slowdown, on a machine loaded at 0, 2x and 4x its cores?

Models: a chain of MatMuls ([32, 128] x [128, 128]), 120 layers (~0.7 ms in ONNX Runtime, 1 thread).
  identical  a copy of the baseline file (the same bytes: an unchanged model rebuilt bit-for-bit)
  equal      the same weights and graph saved with another producer string: another sha256, the
             same computation (a model built again by a pipeline that stamps its files)
  +5% / +10% / +20% time   longer chains, calibrated at the start: the time of the chain grows
             faster than its layer count on this machine (about 1.5x as fast), so the layers
             added for each slowdown come from a measured slope (3 interleaved checks of a 15%
             longer chain); the true ratio of each is printed (median paired ratio of its trials)
Modes, as CI would run the gate:
  profiles   baseline and current profiled separately (two CI jobs, --duration each), then
             `check cur.json --baseline base.json` with its confirmation (an interleaved rerun of
             the two model files named in the profiles, when the first verdict is suspect)
  history    `check cur.json --baseline history` against the last 5 baseline runs (identical only:
             the history holds runs of the same model)
  artifacts  `check CUR.onnx --baseline BASE.onnx`: both timed interleaved in one process from the
             start, a suspect verdict timed interleaved again (the recommended CI pattern)
Loads: busy-looping processes, factor x nproc (0: none added; other users of a shared machine
still count: the load average is printed). Trial kinds are round-robin within a load, so load
from other processes hits them alike. "fail" = the gate exits 1; "caught" = exits 1 on a slowdown.

Usage:  python scripts/bench/bench_check.py             (100 trials per cell, 2100 trials: 1.5-2 h, busy 2 cores)
        python scripts/bench/bench_check.py --quick     (3 trials per cell, shorter: 5.7 min at load 12-19 on 2 cores)
        [--trials N] [--loads 0,2,4] [--duration 1] [--profile-duration 0.5] [--confirm-duration 2]
The 100-trial run's goals (issue 21): identical 0/100 fails at every load (profiles and history),
equal <= 1/100, +10% caught >= 95/100 at 0x and 2x (artifacts), +20% 100/100.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgepack.commands.profile import check  # noqa: E402
from edgepack.profile.history import History  # noqa: E402
from edgepack.profile.profiler import ProfileOptions, profile_model  # noqa: E402
from edgepack.profile.timing import Budget  # noqa: E402

ROWS, WIDTH, BASE_LAYERS = 32, 128, 120
SLOWDOWNS = {"+5% time": 0.05, "+10% time": 0.10, "+20% time": 0.20}


def matmul_chain(layers: int, path: Path, *, seed: int = 0, producer: str = "bench") -> Path:
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
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], producer_name=producer)
    onnx.save(model, path)
    return path


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
        self.procs = [multiprocessing.Process(target=busy, args=(time.time() + 7200,), daemon=True)
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


def calibrate(base: Path, folder: Path, duration: float) -> dict[str, Path]:
    """The chains whose time is 5 / 10 / 20 % over the base's here: slope of time over layers from
    3 interleaved checks of a 15% longer chain (at the load of the moment)."""
    probe_layers = round(BASE_LAYERS * 1.15)
    probe = matmul_chain(probe_layers, folder / "probe.onnx")
    ratios = [check(probe, base, duration=f"{duration}s", confirm=False).report["ratio"] for _ in range(3)]
    # check times both orders (current first, then baseline first): no side is favoured
    slope = max(0.2, (float(np.median(ratios)) - 1.0) / ((probe_layers - BASE_LAYERS) / BASE_LAYERS))
    out = {}
    for name, slowdown in SLOWDOWNS.items():
        layers = BASE_LAYERS + max(1, round(BASE_LAYERS * slowdown / slope))
        out[name] = matmul_chain(layers, folder / f"slower-{layers}.onnx")
        print(f"{name}: {layers} layers (time slope {slope:.2f} per unit of work, probe ratios "
              f"{', '.join(f'{r:.3f}' for r in ratios)})", file=sys.stderr)
    return out


def cells(kinds: list[str]) -> list[tuple[str, str]]:
    """(kind, mode) pairs measured."""
    out = [("identical", "profiles"), ("identical", "history"), ("equal", "profiles"), ("equal", "artifacts")]
    return out + [(k, "artifacts") for k in kinds]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--trials", type=int, default=100, help="trials per cell (kind x mode x load)")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds two artifacts are timed interleaved")
    parser.add_argument("--profile-duration", type=float, default=0.5, help="seconds per separate profile")
    parser.add_argument("--confirm-duration", type=float, default=2.0, help="seconds of a confirming rerun")
    parser.add_argument("--loads", default="0,2,4", help="load factors x nproc (default 0,2,4)")
    parser.add_argument("--slowdowns-in-profiles", action="store_true",
                        help="also time the slowdowns in the profiles mode (first verdict + confirmation)")
    parser.add_argument("--quick", action="store_true",
                        help="3 trials per cell, 0.4 s interleaved, 0.25 s profiles, 0.6 s confirmation (< 5 min)")
    args = parser.parse_args()
    if args.quick:
        args.trials, args.duration, args.profile_duration, args.confirm_duration = 3, 0.4, 0.25, 0.6

    from tqdm import tqdm

    loads = [float(x) for x in args.loads.split(",")]
    kinds = list(SLOWDOWNS)
    measured = cells(kinds) + ([(k, "profiles") for k in kinds] if args.slowdowns_in_profiles else [])
    rows: dict[tuple[str, str, float], list[int]] = {}
    ratios: dict[str, list[float]] = {k: [] for k in ["equal", *kinds]}
    load_rows = []
    with tempfile.TemporaryDirectory() as folder:
        folder = Path(folder)
        base = matmul_chain(BASE_LAYERS, folder / "base.onnx")
        files = {"identical": folder / "identical.onnx",
                 "equal": matmul_chain(BASE_LAYERS, folder / "equal.onnx", producer="bench-rebuilt")}
        shutil.copy(base, files["identical"])
        files.update(calibrate(base, folder, max(0.5, args.duration)))
        options = ProfileOptions(budget=Budget(seconds=args.profile_duration), warmup=Budget(seconds=0.1),
                                 threads=1, layer_runs=0, progress=False)
        db = folder / "history.sqlite"
        confirm = f"{args.confirm_duration}s"
        start = time.time()
        for factor in loads:
            schedule = [cell for _ in range(args.trials) for cell in measured]
            with Load(factor) as load:
                for kind, mode in tqdm(schedule, desc=f"load {factor:g}x cores", unit="trial"):
                    load.sample()
                    if mode == "artifacts":
                        report = check(files[kind], base, duration=f"{args.duration}s", confirm_duration=confirm).report
                    else:
                        baseline = profile_model(base, None, options)
                        current = profile_model(files[kind], None, options)
                        if mode == "history":
                            History(db).add(baseline)
                            report = check(current, "history", history_db=db, confirm_duration=confirm).report
                        else:
                            report = check(current, baseline, force=kind != "identical",
                                           confirm_duration=confirm).report
                    rows.setdefault((kind, mode, factor), []).append(int(bool(report["regression"])))
                    if kind in ratios and report.get("statistic") == "paired blocks":
                        ratios[kind].append(report["ratio"])
                    load.sample()
            load_rows.append((factor, float(np.mean(load.samples)), float(np.max(load.samples))))
        elapsed = time.time() - start
        reference = profile_model(base, None, options)["latency_ms"]

    from edgepack.profile.environment import cpu_flags, cpu_model

    print(f"\nedgepack check: threshold 5%, confidence 0.99, metric p1 (the defaults); artifacts timed interleaved "
          f"{args.duration:g} s, profiles {args.profile_duration:g} s each, confirmation {args.confirm_duration:g} s "
          f"interleaved; base model p1 {reference['p1']:.3f} ms, p50 {reference['p50']:.3f} ms, 1 thread; "
          f"{args.trials} trials per cell, {elapsed:.0f} s on {os.cpu_count()} CPUs")
    print("load average during the trials (mean / max): "
          + ", ".join(f"{f:g}x cores {m:.1f} / {x:.1f}" for f, m, x in load_rows))
    print("true ratio (median paired p1 ratio of the interleaved checks): "
          + ", ".join(f"{k} {np.median(v):.3f}" for k, v in ratios.items() if v))
    header = f"{'kind':<11} {'mode':<10} " + " ".join(f"{f'{f:g}x cores':>13}" for f in loads) + "   goal"
    print(header)
    goals = {"identical": "0 fail at every load", "equal": "<= 1% fail", "+10% time": ">= 95% caught at 0x, 2x",
             "+20% time": "100% caught", "+5% time": "(at the threshold: no goal)"}
    for kind, mode in measured:
        word = "fail" if kind in ("identical", "equal") else "caught"
        cells_text = []
        for factor in loads:
            hits = rows.get((kind, mode, factor), [])
            cells_text.append(f"{sum(hits)}/{len(hits)} {word}" if hits else "-")
        print(f"{kind:<11} {mode:<10} " + " ".join(f"{c:>13}" for c in cells_text) + f"   {goals[kind]}")
    print(f"CPU: {cpu_model()}; flags: {' '.join(cpu_flags() or []) or '?'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
