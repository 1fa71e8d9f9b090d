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


DISPLAY = ("top",)  # options that only change the printed text
API = "edgepack.commands.inspect:inspect"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API, DISPLAY)
