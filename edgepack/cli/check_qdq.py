"""edgepack check-qdq MODEL --target T: does a QDQ model follow the target's rules?"""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "check-qdq", "check a QDQ model against a target's quantization rules",
        "TensorRT: int8 only with zero point 0, finite positive scales, per-channel axis and scale count\n"
        "right, every QuantizeLinear followed by DequantizeLinear, no QOperator ops (QLinearConv...).\n"
        "Findings are grouped: one line per rule with its count and first node (-v lists every node),\n"
        "and the cause when the model was quantized for another target. Exit 1 when a rule is broken.")
    common.add_model(parser)
    common.add_target(parser)
    common.add_json(parser)
    return parser


API = "edgepack.commands.check_qdq:check_qdq"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API, display=("verbose",))
