"""The recipe cache, measured: the demo recipe run cold, re-run unchanged (every step skipped),
re-run with --force, and one changed option (quantize method: quantize and what follows rerun),
side by side in one process. Prints a table; asserts nothing.

    python scripts/bench/bench_recipe.py
"""
from __future__ import annotations

import contextlib
import io
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from edgepack.demo import DEMO_RECIPE  # noqa: E402
from edgepack.recipe import load_recipe, run_recipe  # noqa: E402
from edgepack.report.html import write_report  # noqa: E402


def timed(recipe_path: Path, out: Path, **options) -> tuple[float, int, int]:
    start = time.perf_counter()
    with contextlib.redirect_stderr(io.StringIO()):
        results = run_recipe(load_recipe(recipe_path), out, **options)
    seconds = time.perf_counter() - start
    return seconds, sum(r.status == "done" for r in results), sum(r.status == "skipped" for r in results)


def main() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        changed = Path(tmp) / "changed.recipe.toml"
        text = DEMO_RECIPE.read_text().replace('method = "entropy"', 'method = "percentile"')
        changed.write_text(text.replace('model = "digits_cnn.onnx"', f'model = "{DEMO_RECIPE.parent / "digits_cnn.onnx"}"'))
        rows = [("cold (empty folder)", *timed(DEMO_RECIPE, out)),
                ("unchanged re-run", *timed(DEMO_RECIPE, out)),
                ("--force", *timed(DEMO_RECIPE, out, force=True)),
                ("quantize method changed", *timed(changed, out))]
        start = time.perf_counter()
        write_report(out, Path(tmp) / "report.html")
        report_seconds = time.perf_counter() - start
    cold = rows[0][1]
    print(f"{'demo recipe (7 steps)':<26} {'seconds':>8} {'vs cold':>8} {'ran':>4} {'skipped':>8}")
    for name, seconds, done, skipped in rows:
        print(f"{name:<26} {seconds:8.3f} {seconds / cold:8.3f} {done:>4} {skipped:>8}")
    print(f"{'report (HTML, 8 charts)':<26} {report_seconds:8.3f} {report_seconds / cold:8.3f}")


if __name__ == "__main__":
    main()
