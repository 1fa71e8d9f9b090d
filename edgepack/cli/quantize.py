"""edgepack quantize MODEL --data D --target T -o OUT: QDQ post-training quantization."""
from __future__ import annotations

from edgepack.cli import common
from edgepack.cli.calibrate import add_calibration_args

SCHEMA = "edgepack.quantize/1"


def register(subparsers):
    parser = common.add_command(
        subparsers, "quantize", "insert QuantizeLinear/DequantizeLinear from calibration data (INT8 PTQ)",
        "Calibrate (or reuse --ranges), then insert Q/DQ nodes where the target's runtime fuses them:\n"
        "TensorRT targets get symmetric INT8 with zero point 0; ONNX Runtime CPU targets get the form\n"
        "ORT turns into its integer kernels. The result is checked against the target's rules.")
    common.add_model(parser)
    add_calibration_args(parser)
    common.add_target(parser)
    common.add_output(parser, "quantized model")
    parser.add_argument("--ranges", metavar="FILE", help="ranges from `edgepack calibrate` (skips calibration)")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="NODE|OPTYPE",
                        help="nodes (by name) or op types to keep in float")
    parser.add_argument("--per-tensor", action="store_true", help="one weight scale per tensor, not per channel")
    parser.add_argument("--smoothquant", type=float, metavar="ALPHA",
                        help="migrate activation outliers into the weights before calibrating "
                             "(SmoothQuant, alpha 0..1, 0.5 usual; transformers)")
    parser.add_argument("--no-bias-correction", action="store_true",
                        help="keep biases as they are (default: subtract the mean output shift that "
                             "weight rounding causes, from the calibrated input means)")
    mixed = parser.add_argument_group("mixed precision")
    mixed.add_argument("--sensitivity", action="store_true",
                       help="quantize one layer at a time and report each layer's output SQNR")
    mixed.add_argument("--max-error", type=float, metavar="DB",
                       help="keep the most sensitive layers float until the output error is at most "
                            "-DB dB relative to the signal (i.e. output SQNR >= DB)")
    mixed.add_argument("--min-agreement", type=float, metavar="F",
                       help="keep sensitive layers float until top-1 agreement with float is >= F (0..1)")
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack import io
    from edgepack.calib import Ranges, calibrate
    from edgepack.errors import EdgepackError, UsageError
    from edgepack.quant.check_qdq import check_qdq
    from edgepack.graph import copy_model
    from edgepack.quant.prepare import prepare
    from edgepack.quant.qdq import QuantPolicy, insert_qdq, tensors_to_calibrate
    from edgepack.quant.sensitivity import keep_sensitive_float, layer_sensitivity
    from edgepack.quant.smoothquant import smooth
    from edgepack.quant.validate import prepare_opset, validate_quantized
    from edgepack.targets import load_target

    target = load_target(args.target)
    if "int8" not in target.precisions:
        raise EdgepackError(f"target '{target.name}' has no fast INT8",
                            hint="build it with --precision fp16 instead of quantizing")
    if not args.data and not args.ranges:
        raise UsageError("quantize needs --data or --ranges", hint="pass a calibration folder, .npz or .npy")
    mixed = args.sensitivity or args.max_error is not None or args.min_agreement is not None
    if mixed and not args.data:
        raise UsageError("--sensitivity/--max-error/--min-agreement need --data to measure the error")
    policy = QuantPolicy.for_target(target, per_tensor=args.per_tensor,
                                    bias_correction=not args.no_bias_correction)
    model = io.load(args.model)
    prepare(model)
    policy = prepare_opset(model, policy)  # per-channel Q/DQ needs opset 13
    if args.smoothquant is not None:
        if not args.data or args.ranges:
            raise UsageError("--smoothquant needs --data and no --ranges",
                             hint="it changes the activations, so it measures and calibrates them itself")
        smooth(model, args.data, alpha=args.smoothquant, limit=args.limit)
    ranges = Ranges.load(args.ranges) if args.ranges else calibrate(
        copy_model(model), args.data, method=args.method, percentile=args.percentile, limit=args.limit,
        symmetric=policy.symmetric_activations, progress=not args.quiet,
        only=tensors_to_calibrate(model, policy))
    sensitivity, sqnr = None, None
    if mixed:
        sensitivity = layer_sensitivity(model, ranges, policy, args.data, progress=not args.quiet)
    if args.max_error is not None or args.min_agreement is not None:
        result, sqnr, _ = keep_sensitive_float(model, ranges, policy, args.data, sensitivity,
                                               min_sqnr_db=args.max_error, min_agreement=args.min_agreement,
                                               exclude=set(args.exclude))
    else:
        result = insert_qdq(model, ranges, policy, exclude=set(args.exclude))
    problems = check_qdq(result.model, target)
    if problems:
        raise EdgepackError(f"quantized model breaks {len(problems)} {target.name} rule(s); first: {problems[0]}",
                            hint="nothing was written; please report the model")
    validate_quantized(result.model)  # checker + ONNX Runtime load, before anything is written
    io.save(result.model, args.output)
    report = {"schema": SCHEMA, "target": target.name, "method": ranges.method, "output": args.output,
              "quantized_nodes": result.quantized, "float_nodes": [n for n, _ in result.skipped],
              "float_reasons": dict(result.skipped), "sensitivity": sensitivity, "output_sqnr_db": sqnr,
              "check_qdq": {"ok": not problems, "problems": problems}}
    common.emit(args, report, format_report(report))
    return 0


def format_report(report: dict) -> str:
    lines = [f"{len(report['quantized_nodes'])} nodes quantized for {report['target']} "
             f"({report['method']} ranges), {len(report['float_nodes'])} left in float; "
             f"check-qdq: {'ok' if report['check_qdq']['ok'] else 'FAILED'}"]
    for node, why in report["float_reasons"].items():
        lines.append(f"  float: {node} ({why})")
    if report["sensitivity"]:
        lines += ["", f"{'most sensitive layers':<40} {'op':<10} {'SQNR dB':>9}"]
        lines += [f"{r['node'][:40]:<40} {r['op_type']:<10} {r['sqnr_db']:>9.2f}" for r in report["sensitivity"][:10]]
    if report["output_sqnr_db"] is not None:
        lines.append(f"output SQNR {report['output_sqnr_db']:.2f} dB")
    lines.append(f"wrote {report['output']}")
    return "\n".join(lines)
