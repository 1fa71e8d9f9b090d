"""edgepack check-qdq MODEL --target T: does a QDQ model follow the target's rules?"""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "check-qdq", "check a QDQ model against a target's quantization rules",
        "TensorRT: int8 only with zero point 0, finite positive scales, per-channel axis and scale count\n"
        "right, every QuantizeLinear followed by DequantizeLinear, no QOperator ops (QLinearConv...).\n"
        "Exit 1 when a rule is broken.")
    common.add_model(parser)
    common.add_target(parser)
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack import io
    from edgepack.quant.check_qdq import check_qdq
    from edgepack.targets import load_target

    target = load_target(args.target)
    problems = check_qdq(io.load(args.model), target)
    text = "\n".join([f"{args.model}: {len(problems)} problem(s) for {target.name}", *problems]) if problems \
        else f"{args.model}: follows the {target.name} QDQ rules"
    common.emit(args, {"ok": not problems, "target": target.name, "problems": problems}, text)
    return 1 if problems else 0
