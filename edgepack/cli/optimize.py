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


API = "edgepack.commands.optimize:optimize"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
