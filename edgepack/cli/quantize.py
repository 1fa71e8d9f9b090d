"""edgepack quantize MODEL --data D --target T -o OUT: QDQ post-training quantization."""
from __future__ import annotations

from edgepack.cli import common
from edgepack.cli.calibrate import add_calibration_args


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
    parser.add_argument("--rounding", default="auto", metavar="METHOD",
                        help="fit the INT8 weights to the float model's layer outputs on --data after Q/DQ "
                             "insertion: nearest (none), clip (per-channel range search), adaround (learned "
                             "up/down rounding), bias (bias correction against the quantized upstream), a "
                             "'+' list (clip+bias), all, or auto (default: the measured default per target; "
                             "see docs/quantization.md)")
    parser.add_argument("--no-runtime-check", action="store_true",
                        help="skip running the result as ONNX Runtime runs it (fused INT8 kernels) against its "
                             "QDQ math; the check catches CPUs whose int8 arithmetic saturates")
    parser.add_argument("--no-equalize", action="store_true",
                        help="skip channel equalization around depthwise convs (an exact rewrite that lets one "
                             "activation scale serve every channel; on by default when calibrating)")
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


API = "edgepack.quant.quantize:quantize"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
