"""Benchmark: `optimize` over the ONNX node test suite, verified as the suite verifies.

The cases come from the onnx package itself (`onnx.backend.test.case.node.collect_testcases`,
the generator of onnx/backend/test/data/node; the wheel of onnx 1.23 ships the generator, not
the data). A case counts when ONNX Runtime runs the original on the case's inputs; it is kept
when `edgepack.optimize` accepts it and the optimized model gives the same outputs on those
inputs under the suite's rule (`np.testing.assert_allclose(rtol=1e-3, atol=1e-7, equal_nan)`).

    python3 scripts/bench/bench_node_suite.py [--limit N] [--show 20]

Prints the counts, the fraction kept, the first refusals with their reasons, and the CPU flags.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))


def cases(limit: int | None = None):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from onnx.backend.test.case.node import collect_testcases

        found = [c for c in collect_testcases(None) if c.model is not None and c.data_sets]
    return found[:limit] if limit else found


def _ort_outputs(path: Path, inputs: dict):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 4
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, inputs)


def _same(a, b) -> bool:
    if len(a) != len(b):
        return False
    for x, y in zip(a, b):
        if isinstance(x, (list, tuple)) or isinstance(y, (list, tuple)):  # sequence outputs
            if not (isinstance(x, (list, tuple)) and isinstance(y, (list, tuple)) and _same(list(x), list(y))):
                return False
            continue
        if x is None or y is None:  # optional outputs
            if x is not y:
                return False
            continue
        x, y = np.asarray(x), np.asarray(y)
        if x.shape != y.shape:
            return False
        if x.dtype.kind in "fc":
            try:
                np.testing.assert_allclose(x, y, rtol=1e-3, atol=1e-7, equal_nan=True)
            except AssertionError:
                return False
        elif not np.array_equal(x, y):
            return False
    return True


def measure(limit: int | None = None) -> dict:
    """{"cases", "runnable", "kept", "refused": [(name, why)]}."""
    import onnx

    import edgepack
    from edgepack.errors import EdgepackError

    for name in ("edgepack", "onnx_ir", "onnxscript"):  # the library's own diagnostics, not results
        logging.getLogger(name).setLevel(logging.CRITICAL)
    result = {"cases": 0, "runnable": 0, "kept": 0, "refused": []}
    with tempfile.TemporaryDirectory() as tmp:
        for case in cases(limit):
            result["cases"] += 1
            path = Path(tmp) / f"{case.name}.onnx"
            onnx.save(case.model, path)
            names = [i.name for i in case.model.graph.input]
            inputs = {n: v for n, v in zip(names, case.data_sets[0][0])}
            try:
                expected = _ort_outputs(path, inputs)
            except Exception:
                continue  # not ORT-runnable: outside the measure
            result["runnable"] += 1
            try:
                report = edgepack.optimize(path, output=Path(tmp) / f"{case.name}.opt.onnx")
            except EdgepackError as exc:
                result["refused"].append((case.name, str(exc).split(". hint:")[0][:160]))
                continue
            except Exception as exc:  # a bug: counted as refused, with its type
                result["refused"].append((case.name, f"{type(exc).__name__}: {str(exc)[:140]}"))
                continue
            try:
                got = _ort_outputs(Path(report.output), inputs)
            except Exception as exc:
                result["refused"].append((case.name, f"optimized model does not run: {str(exc)[:120]}"))
                continue
            if _same(expected, got):
                result["kept"] += 1
            else:
                result["refused"].append((case.name, "optimized outputs differ on the case's inputs"))
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--limit", type=int, help="only the first N cases")
    parser.add_argument("--show", type=int, default=20, help="refusals listed")
    args = parser.parse_args()
    from edgepack.cpu import int8_summary

    r = measure(args.limit)
    fraction = r["kept"] / r["runnable"] if r["runnable"] else float("nan")
    print(f"{'node test cases':<34} {r['cases']:>6}")
    print(f"{'ONNX Runtime runs the original':<34} {r['runnable']:>6}")
    print(f"{'optimize keeps (same outputs)':<34} {r['kept']:>6}   {fraction:.2%} of the runnable")
    for name, why in r["refused"][: args.show]:
        print(f"  refused {name}: {why}")
    print(f"CPU: {int8_summary()}")


if __name__ == "__main__":
    main()
