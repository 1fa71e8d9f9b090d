"""edgepack optimize MODEL -o OUT: simplify, fold BatchNorm, fold pruned channels; outputs unchanged."""
from __future__ import annotations

import logging

from edgepack.cli import common

logger = logging.getLogger(__name__)

SCHEMA = "edgepack.optimize/1"


def register(subparsers):
    parser = common.add_command(
        subparsers, "optimize", "simplify, fold BatchNorm and physically remove pruned channels",
        "Simplify (onnxsim + edgepack's folding), fold BatchNorm into Conv/Gemm/MatMul, and remove\n"
        "channels pruned to zero, shrinking their consumers. Outputs are checked against the input\n"
        "model in ONNX Runtime on random inputs.")
    common.add_model(parser)
    common.add_output(parser, "optimized model")
    common.add_target(parser, required=False)
    parser.add_argument("--no-simplify", action="store_true", help="skip onnxsim")
    parser.add_argument("--tolerance", type=float, default=1e-4, metavar="E",
                        help="largest accepted output change relative to the output scale (default 1e-4)")
    common.add_json(parser)
    return parser


def summary(report: dict) -> dict:
    return {k: report[k] for k in ("nodes", "params", "macs", "size_bytes")}


def run(args) -> int:
    from pathlib import Path

    from edgepack import io, runtime
    from edgepack.errors import EdgepackError
    from edgepack.inspection import inspect_model
    from edgepack.passes.pipeline import build_pipeline, run_timed
    from edgepack.targets import load_target

    if Path(args.output).resolve() == Path(args.model).resolve():
        raise EdgepackError(f"-o {args.output} is the input model; edgepack never overwrites an input",
                            hint="write the optimized model to another file")
    target = load_target(args.target) if args.target else None
    model = io.load(args.model)
    before = summary(inspect_model(model, args.model))
    external = True if io.has_external_data(model) else None  # the output keeps a data file too
    # Memory: onnx-ir holds the weights once (memory-mapped when external). ORT checks the outputs
    # from files (it maps external data too), one session at a time, and mapped pages are released
    # after each step, so the peak stays near one copy of the weights (scripts/bench/
    # bench_optimize_memory.py).
    io.release_weights(model)
    try:
        feeds = runtime.random_feeds(model, batch=2)
        # from the file: ORT maps external data and keeps one copy of embedded weights, where a
        # session from memory would also hold a copy read out of the parsed protobuf
        reference = runtime.run_and_free(args.model, feeds)
    except EdgepackError as exc:  # custom ops (e.g. TensorRT plugins): optimize, but say it is unchecked
        logger.warning("outputs not verified: %s", exc)
        reference = None
    io.release_weights(model)
    result = run_timed(build_pipeline(target, simplify=not args.no_simplify), model)
    del model
    after = summary(inspect_model(result.model))
    error = None

    def check(staged):  # before anything is written where the user can see it
        nonlocal error
        if reference is not None:
            error = _relative_error(reference, runtime.run_and_free(staged if external else result.model, feeds))
            _refuse_if_changed(args, error)

    if not external:
        check(None)  # embedded weights: check in memory, then write
    io.save(result.model, args.output, external_data=external, check=check if external else None, rebase=True)
    after["size_bytes"] = io.files_nbytes(args.output, result.model)
    report = {"schema": SCHEMA, "model": args.model, "output": args.output, "before": before, "after": after,
              "passes": [vars(r) for r in result.passes], "max_abs_error": error}
    common.emit(args, report, format_report(report))
    return 0


def _relative_error(ref, new) -> float:
    from edgepack import runtime

    if len(ref) != len(new) or any(r.shape != n.shape for r, n in zip(ref, new)):
        return float("inf")
    return runtime.max_abs_error(ref, new) / runtime.output_scale(ref)


def _refuse_if_changed(args, error: float) -> None:
    from pathlib import Path

    from edgepack.errors import EdgepackError

    if error <= args.tolerance:
        return
    raise EdgepackError(
        f"{args.model}: optimized outputs differ by {error:.3g} (relative), over --tolerance {args.tolerance}",
        hint="nothing was written; rerun with --no-simplify, and please report the model")


def format_report(report: dict) -> str:
    b, a = report["before"], report["after"]
    lines = [f"{'':<10} {'before':>14} {'after':>14} {'ratio':>7}"]
    for key in ("nodes", "params", "macs", "size_bytes"):
        ratio = a[key] / b[key] if b[key] else 1.0
        lines.append(f"{key:<10} {b[key]:>14,} {a[key]:>14,} {ratio:>7.3f}")
    lines.append("passes    " + ", ".join(f"{p['name']}{'*' if p['modified'] else ''} {p['seconds']:.2f}s"
                                         for p in report["passes"]) + "   (* changed the graph)")
    change = "not verified" if report["max_abs_error"] is None else f"{report['max_abs_error']:.2e} (relative)"
    lines.append(f"max output change {change}; wrote {report['output']}")
    return "\n".join(lines)
