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
    from edgepack import io, runtime
    from edgepack.errors import EdgepackError
    from edgepack.inspection import inspect_model
    from edgepack.passes import verify
    from edgepack.passes.pipeline import build_pipeline, run_timed
    from edgepack.targets import load_target

    target = load_target(args.target) if args.target else None
    model = io.load(args.model)
    before = summary(inspect_model(model, args.model))
    try:
        feeds = runtime.random_feeds(runtime.session(args.model), batch=2)
    except EdgepackError as exc:  # custom ops (e.g. TensorRT plugins): optimize, but say it is unchecked
        logger.warning("outputs not verified: %s", exc)
        feeds = None
    result = run_timed(build_pipeline(target, simplify=not args.no_simplify), model)
    error = None
    in_memory = io.weights_nbytes(result.model) < io.EXTERNAL_DATA_THRESHOLD
    if feeds is not None and in_memory:  # check before writing anything
        error = verify.max_abs_error(args.model, result.model, feeds, relative=True)
        _refuse_if_changed(args, error)
    io.save(result.model, args.output)
    if feeds is not None and not in_memory:  # over 2 GB: ORT reads it from the file
        error = verify.max_abs_error(args.model, args.output, feeds, relative=True)
        _refuse_if_changed(args, error, written=True)
    after = summary(inspect_model(io.load(args.output), args.output))
    report = {"schema": SCHEMA, "model": args.model, "output": args.output, "before": before, "after": after,
              "passes": [vars(r) for r in result.passes], "max_abs_error": error}
    common.emit(args, report, format_report(report))
    return 0


def _refuse_if_changed(args, error: float, written: bool = False) -> None:
    from pathlib import Path

    from edgepack.errors import EdgepackError

    if error <= args.tolerance:
        return
    if written:
        for path in (Path(args.output), Path(args.output + ".data")):
            path.unlink(missing_ok=True)
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
