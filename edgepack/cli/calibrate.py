"""edgepack calibrate MODEL --data D -o ranges.json: observe activations, save their ranges."""
from __future__ import annotations

from edgepack.cli import common


def add_calibration_args(parser) -> None:
    parser.add_argument("--data", metavar="D", help="calibration data: " + common.DATA_HELP)
    parser.add_argument("--method", choices=["minmax", "percentile", "entropy", "mse"],
                        help="how a range is chosen from the observed values (default: the target's "
                             "calibration_method; entropy for calibrate)")
    parser.add_argument("--percentile", type=float, default=99.99, metavar="P",
                        help="for --method percentile (default 99.99)")
    parser.add_argument("--limit", type=int, metavar="N", help="use at most N samples")
    common.add_preprocess_args(parser)


def register(subparsers):
    parser = common.add_command(subparsers, "calibrate",
                                "run the model over calibration data and save every activation's range")
    common.add_model(parser)
    add_calibration_args(parser)
    common.add_output(parser, "ranges file (.json)")
    parser.add_argument("--symmetric", action="store_true", help="symmetric ranges [-T, T] (TensorRT)")
    parser.add_argument("--tensorrt-cache", metavar="FILE",
                        help="also write a TensorRT calibration cache, for TensorRT <= 10 implicit INT8 "
                             "quantization (IInt8Calibrator); TensorRT 11 has no calibrators: use `edgepack "
                             "quantize` for a Q/DQ model instead")
    parser.add_argument("-t", "--target", metavar="T",
                        help="with --tensorrt-cache: the TensorRT target it is for (its TensorRT version "
                             "sets the cache header; default TensorRT 8.6.1)")
    common.add_json(parser)
    return parser


API = "edgepack.commands.calibrate:calibrate"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
