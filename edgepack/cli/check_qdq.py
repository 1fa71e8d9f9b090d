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


def run(args) -> int:
    from edgepack import io
    from edgepack.quant.check_qdq import grouped, qdq_findings
    from edgepack.quant.origin import target_mismatch
    from edgepack.targets import load_target

    target = load_target(args.target)
    model = io.load(args.model)
    findings = qdq_findings(model, target)
    problems = [str(f) for f in findings]
    cause = target_mismatch(model, target) if findings else None
    groups = grouped(findings)
    if findings:
        lines = [f"{args.model}: {len(findings)} problem(s) for {target.name}, {len(groups)} rule(s)"]
        if cause:
            lines.append(f"cause: {cause}; re-quantize with -t {target.name}")
        lines += [f"  {count:>5} x {rule} (first: {node})" for rule, count, node in groups]
        if args.verbose:
            lines += ["", *problems]
        else:
            lines.append("(-v lists every node)")
        text = "\n".join(lines)
    else:
        text = f"{args.model}: follows the {target.name} QDQ rules"
    common.emit(args, {"ok": not problems, "target": target.name, "problems": problems,
                       "rules": [{"rule": r, "count": c, "first": n} for r, c, n in groups],
                       "cause": cause}, text)
    return 1 if problems else 0
