"""edgepack calibrate MODEL --data D -o ranges.json: observe activations, save their ranges."""
from __future__ import annotations

from edgepack.cli import common


def add_calibration_args(parser) -> None:
    parser.add_argument("--data", metavar="D", help="calibration data: a calibration folder, .npz "
                        "(FILE.npz:ARRAY picks an array) or .npy")
    parser.add_argument("--method", choices=["minmax", "percentile", "entropy", "mse"], default="entropy",
                        help="how a range is chosen from the observed values (default: entropy)")
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
                        help="also write a TensorRT calibration cache (implicit INT8 mode)")
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack import io
    from edgepack.calib import calibrate
    from edgepack.calib.preprocess import Preprocess
    from edgepack.errors import UsageError

    if not args.data:
        raise UsageError("calibrate needs --data", hint="pass a calibration folder, .npz or .npy")
    model = io.load(args.model)
    ranges = calibrate(model, args.data, method=args.method, percentile=args.percentile, limit=args.limit,
                       symmetric=args.symmetric, progress=not args.quiet, preprocess=Preprocess.from_args(args))
    ranges.save(args.output)
    if args.tensorrt_cache:
        ranges.to_tensorrt_cache(args.tensorrt_cache)
    common.emit(args, ranges.to_json(),
                f"{len(ranges.tensors)} tensor ranges from {ranges.samples} samples ({ranges.method}) -> {args.output}")
    return 0
