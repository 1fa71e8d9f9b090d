"""Benchmark: what an ONNX Runtime build buys on the CPU. For each model, the input .onnx, the
built (offline-optimized) .onnx and the .ort file, measured side by side in one run: session
start-up time (where offline optimization saves work on the device), p50 latency (interleaved
rounds), and file size, with ratios to the input model.

    python3 scripts/bench/bench_build_ort.py [--target x86-cpu] [--rounds 20]
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import edgepack  # noqa: E402
from edgepack.resources import example_model  # noqa: E402
from edgepack.runtime import random_feeds, session  # noqa: E402

SHARED = Path(__file__).resolve().parents[3] / "shared" / "models"


def models() -> list[tuple[str, Path, int]]:
    found = [("digits_cnn (bundled)", example_model(), 64)]
    for name, batch in (("mnist_cntk_fp32.onnx", 64), ("resnet20_cifar10.onnx", 16)):
        if (SHARED / name).is_file():
            found.append((name, SHARED / name, batch))
    return found


def startup_ms(path: Path, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        session(path, threads=1)
        times.append((time.perf_counter() - start) * 1e3)
    return float(np.median(times))


def p50_interleaved(paths: list[Path], feeds, rounds: int, per_round: int = 10) -> list[float]:
    sessions = [session(p, threads=1) for p in paths]
    for s in sessions:
        for _ in range(3):
            s.run(None, feeds)
    times = [[] for _ in sessions]
    for _ in range(rounds):
        for s, bucket in zip(sessions, times):
            start = time.perf_counter()
            for _ in range(per_round):
                s.run(None, feeds)
            bucket.append((time.perf_counter() - start) * 1e3 / per_round)
    return [float(np.median(t)) for t in times]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--target", default="x86-cpu")
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--startups", type=int, default=15)
    args = parser.parse_args()
    rows = [f"{'model':<24} {'file':<10} {'start-up ms':>11} {'x':>6} {'p50 ms':>8} {'x':>6} {'nodes':>6} {'KiB':>7}"]
    with tempfile.TemporaryDirectory() as tmp:
        for label, src, batch in models():
            out = Path(tmp) / (src.stem + ".built.onnx")
            edgepack.build(src, args.target, output=out)
            paths = [src, out, out.with_suffix(".ort")]
            feeds = random_feeds(session(src), batch=batch)
            starts = [startup_ms(p, args.startups) for p in paths]
            p50s = p50_interleaved(paths, feeds, args.rounds)
            nodes = [len(list(edgepack.load(p, check=False).graph)) if p.suffix == ".onnx" else None
                     for p in paths]
            for name, path, st, p50, n in zip(("input", "built", "built.ort"), paths, starts, p50s, nodes):
                rows.append(f"{label:<24} {name:<10} {st:>11.2f} {st / starts[0]:>6.2f} {p50:>8.3f} "
                            f"{p50 / p50s[0]:>6.2f} {n if n is not None else '-':>6} {path.stat().st_size / 1024:>7.1f}")
    print(f"target {args.target}, 1 intra-op thread, batch as listed in models(); x = ratio to the input model")
    print("\n".join(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
