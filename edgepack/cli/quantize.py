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
    parser.add_argument("--smoothquant", type=_alpha, default="auto", metavar="ALPHA|auto|off",
                        help="migrate activation outliers into the weights before calibrating "
                             "(SmoothQuant, alpha 0..1; default auto: alpha 0.8 where an activation "
                             "has outlier channels; off: never)")
    parser.add_argument("--no-bias-correction", action="store_true",
                        help="keep biases as they are (default: subtract the mean output shift that "
                             "weight rounding causes, from the calibrated input means)")
    parser.add_argument("--rounding", default="auto", metavar="METHOD",
                        help="fit the INT8 weights to the float model's layer outputs on --data after Q/DQ "
                             "insertion: nearest (none), clip (per-channel range search), adaround (learned "
                             "up/down rounding), bias (bias correction against the quantized upstream), block "
                             "(a residual block's last layer fitted to the block's output), a '+' list "
                             "(clip+block), all, or auto (default: adaround on TensorRT targets and 7-bit-weight "
                             "CPU targets, where it measured better; nearest elsewhere; see docs/quantization.md)")
    parser.add_argument("--no-runtime-check", action="store_true",
                        help="skip running the result as ONNX Runtime runs it (fused INT8 kernels) against its "
                             "QDQ math; the check catches CPUs whose int8 arithmetic saturates")
    parser.add_argument("--no-equalize", action="store_true",
                        help="skip channel equalization around depthwise convs (an exact rewrite that lets one "
                             "activation scale serve every channel; on by default when calibrating)")
    low = parser.add_argument_group("INT4 weight-only and FP8")
    low.add_argument("--weights", choices=("int8", "int4", "fp8"), default="int8",
                     help="int8: W8A8 (default); int4: weight-only INT4 MatMuls in the target's encoding "
                          "(TensorRT: blocked DequantizeLinear; ONNX Runtime: MatMulNBits); fp8: E4M3 Q/DQ "
                          "on weights and activations (GPUs of compute capability 8.9+)")
    low.add_argument("--algorithm", choices=("rtn", "gptq", "awq", "awq-gptq"), default="awq-gptq",
                     help="how INT4 codes are chosen: round to nearest, GPTQ (Hessian error compensation), "
                          "AWQ (activation-aware scaling + clip search) or AWQ's scaling with GPTQ rounding; "
                          "all but rtn need --data")
    low.add_argument("--block-size", type=int, metavar="B",
                     help="INT4 block along the reduction axis (default: 128 for TensorRT, 32 for ONNX Runtime)")
    speed = parser.add_argument_group("speed (ONNX Runtime targets)")
    speed.add_argument("--placement", choices=("measured", "rules"),
                       help="measured (default with --data on ONNX Runtime targets): a layer whose INT8 kernel is "
                            "slower than its float kernel on this CPU stays float; rules: placement rules only "
                            "(TensorRT targets always)")
    speed.add_argument("--no-speed-check", action="store_true",
                       help="skip timing the result against the float model (interleaved, batch 1) and the "
                            "warning when INT8 is not faster")
    speed.add_argument("--if-slower", choices=("warn", "error", "float"), default="warn",
                       help="when the INT8 result is slower than FP32 here: warn (default), error (exit 1, "
                            "nothing written: a CI gate), or float (write the float model instead)")
    speed.add_argument("--threads", type=int, default=1, metavar="N",
                       help="threads for the timings (default 1; 0: all cores)")
    speed.add_argument("--explain", action="store_true",
                       help="print every layer's choice (INT8 or float) with its measured reason")
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


def _alpha(text: str):
    """'auto', 'off' (None) or an alpha 0..1."""
    if text in ("auto", "off"):
        return None if text == "off" else text
    try:
        return float(text)
    except ValueError:
        import argparse

        raise argparse.ArgumentTypeError(f"expected a number 0..1, auto or off, got {text!r}") from None


DISPLAY = ("explain",)  # options that only change the printed text
API = "edgepack.quant.quantize:quantize"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API, DISPLAY)
