"""edgepack inspect MODEL: ops, shapes, parameters, MACs, weight sparsity, quantizable nodes."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "inspect", "show a model's ops, parameters, MACs, sparsity and quantizable nodes")
    common.add_model(parser)
    common.add_json(parser)
    parser.add_argument("--top", type=int, default=30, metavar="N", help="layers shown in the table")
    parser.add_argument("--no-check", action="store_true", help="skip the ONNX checker")
    return parser


def run(args) -> int:
    from edgepack import io
    from edgepack.inspection import format_report, inspect_model

    model = io.load(args.model, check=not args.no_check)
    report = inspect_model(model, args.model)
    common.emit(args, report, format_report(report, top=args.top))
    return 0
