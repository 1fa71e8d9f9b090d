"""edgepack calibrate MODEL --data D -o ranges.json: observe activations, save their ranges."""
from __future__ import annotations

from edgepack.cli import common


def add_calibration_args(parser) -> None:
    parser.add_argument("--data", metavar="D", help="calibration data: a calibration folder, .npz "
                        "(FILE.npz:ARRAY picks an array) or .npy")
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
    parser.add_argument("--target", "-t", metavar="T",
                        help="with --tensorrt-cache: the TensorRT target it is for (its TensorRT version "
                             "sets the cache header; default TensorRT 8.6.1)")
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack import io
    from edgepack.calib import calibrate
    from edgepack.calib.preprocess import Preprocess
    from edgepack.errors import UsageError

    if not args.data:
        raise UsageError("calibrate needs --data", hint="pass a calibration folder, .npz or .npy")
    tensorrt_version = _cache_tensorrt_version(args)  # refuse a cache TensorRT cannot use before calibrating
    model = io.load(args.model)
    ranges = calibrate(model, args.data, method=args.method or "entropy", percentile=args.percentile,
                       limit=args.limit, symmetric=args.symmetric, progress=not args.quiet,
                       preprocess=Preprocess.from_args(args))
    ranges.save(args.output)
    if args.tensorrt_cache:
        ranges.to_tensorrt_cache(args.tensorrt_cache, tensorrt_version=tensorrt_version)
    common.emit(args, ranges.to_json(),
                f"{len(ranges.tensors)} tensor ranges from {ranges.samples} samples ({ranges.method}) -> {args.output}")
    return 0


def _cache_tensorrt_version(args) -> str:
    from edgepack.calib.ranges import tensorrt_cache_header
    from edgepack.errors import EdgepackError
    from edgepack.targets import load_target

    if args.target is None or not args.tensorrt_cache:  # a recipe passes its target to every step
        return "8.6.1"
    target = load_target(args.target)
    if not target.is_tensorrt:
        raise EdgepackError(f"--tensorrt-cache: target '{target.name}' uses {target.backend}, not TensorRT",
                            hint="leave out --tensorrt-cache; `edgepack quantize` makes the model for it")
    if not target.allows().get("int8_calibrator"):
        try:
            tensorrt_cache_header(target.tensorrt_version)
        except EdgepackError as exc:
            raise EdgepackError(f"--tensorrt-cache for target '{target.name}': {exc.message}",
                                hint=f"run `edgepack quantize MODEL --target {target.name} --data ...` (or "
                                     "--ranges with the ranges file this command writes): TensorRT 11 builds the "
                                     "Q/DQ model, strongly typed") from None
    return target.tensorrt_version
