"""edgepack optimize MODEL -o OUT: simplify, fold BatchNorm, fold pruned channels; outputs unchanged."""
from __future__ import annotations

from edgepack.cli import common

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
    from edgepack.passes.pipeline import build_pipeline, compare_outputs, run_timed
    from edgepack.targets import load_target

    from pathlib import Path

    if Path(args.output).resolve() == Path(args.model).resolve():
        raise EdgepackError(f"-o {args.output} is the input model; edgepack never overwrites an input",
                            hint="write the optimized model to another file")
    target = load_target(args.target) if args.target else None
    before = summary(inspect_model(io.load(args.model), args.model))
    feeds = runtime.random_feeds(runtime.session(args.model), batch=2)
    model = io.load(args.model)
    result = run_timed(build_pipeline(target, simplify=not args.no_simplify), model)
    error = compare_outputs(args.model, result.model, feeds)
    if not error <= args.tolerance:
        raise EdgepackError(
            f"{args.model}: optimized outputs differ by {error:.3g} (relative), over --tolerance {args.tolerance}",
            hint="nothing was written; rerun with --no-simplify, and please report the model")
    io.save(result.model, args.output)
    after = summary(inspect_model(io.load(args.output), args.output))
    report = {"schema": SCHEMA, "model": args.model, "output": args.output, "before": before, "after": after,
              "passes": [vars(r) for r in result.passes], "max_abs_error": error}
    common.emit(args, report, format_report(report))
    return 0


def format_report(report: dict) -> str:
    b, a = report["before"], report["after"]
    lines = [f"{'':<10} {'before':>14} {'after':>14} {'ratio':>7}"]
    for key in ("nodes", "params", "macs", "size_bytes"):
        ratio = a[key] / b[key] if b[key] else 1.0
        lines.append(f"{key:<10} {b[key]:>14,} {a[key]:>14,} {ratio:>7.3f}")
    lines.append("passes    " + ", ".join(f"{p['name']}{'*' if p['modified'] else ''} {p['seconds']:.2f}s"
                                         for p in report["passes"]) + "   (* changed the graph)")
    lines.append(f"max output change {report['max_abs_error']:.2e} (relative); wrote {report['output']}")
    return "\n".join(lines)
