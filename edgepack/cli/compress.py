"""edgepack compress {clip,lowrank,fp16} MODEL -o OUT: weight clipping, SVD factorization, float16."""
from __future__ import annotations

from edgepack.cli import common

SCHEMA = "edgepack.compress/1"


def register(subparsers):
    parser = common.add_command(
        subparsers, "compress", "weight clipping, low-rank factorization or float16 conversion",
        description="Each method writes a new model and reports what it saved (params, nonzeros, MACs, "
                    "size) and what it cost (output error against the original on sample data).")
    methods = parser.add_subparsers(dest="method", metavar="METHOD", required=True)

    clip = _method(methods, "clip", "clip outlier weights per layer to a percentile of |w| or a threshold")
    group = clip.add_mutually_exclusive_group(required=True)
    group.add_argument("--percentile", type=float, metavar="P", help="per layer, clip at this percentile of |w|")
    group.add_argument("--threshold", type=float, metavar="T", help="clip every weight to [-T, T]")

    low = _method(methods, "lowrank", "factorize Gemm/MatMul/1x1 Conv weights by truncated SVD")
    group = low.add_mutually_exclusive_group(required=True)
    group.add_argument("--rank", metavar="R", help="fixed rank, or 'full' (exact; for checking)")
    group.add_argument("--energy", type=float, metavar="E",
                       help="smallest rank keeping this fraction of the spectral energy, e.g. 0.95")
    low.add_argument("--min-saving", type=float, default=0.1, metavar="F",
                     help="factorize a layer only if it saves at least this fraction of its MACs")

    fp16 = _method(methods, "fp16", "float16 weights and compute; fragile ops stay float32")
    fp16.add_argument("--keep-io-float", action="store_true",
                      help="keep float32 graph inputs and outputs (Casts at the edges)")
    fp16.add_argument("--block", nargs="+", default=[], metavar="OPTYPE",
                      help="more op types to keep in float32 (added to the default list)")
    fp16.add_argument("--data-max", type=float, default=65504.0, metavar="X",
                      help="with --data: keep a node in float32 when one of its float inputs or outputs "
                           "reaches |x| > X on the data (default 65504, the float16 maximum; "
                           "Model Optimizer's AutoCast uses 512)")
    return parser


def _method(methods, name: str, help: str):
    parser = common.add_command(methods, name, help)
    common.add_model(parser)
    common.add_output(parser, "compressed ONNX model")
    if name != "fp16":
        parser.add_argument("--include", nargs="+", default=[], metavar="NODE|OPTYPE")
        parser.add_argument("--exclude", nargs="+", default=[], metavar="NODE|OPTYPE")
    parser.add_argument("--data", metavar="D",
                        help="calibration folder, .npz (FILE.npz:ARRAY) or .npy for the output error "
                             "(default: random inputs)")
    common.add_preprocess_args(parser)
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack import io
    from edgepack.cost import format_cost
    from edgepack.errors import UsageError

    model = io.load(args.model)
    if args.method == "clip":
        from edgepack.passes.clip_weights import clip_weights

        out, report = clip_weights(model, percentile=args.percentile, threshold=args.threshold,
                                   include=args.include, exclude=args.exclude, data=common.data_arg(args))
        summary = f"clipped {report['moved']:,} weights in {len(report['layers'])} layers"
    elif args.method == "lowrank":
        from edgepack.passes.lowrank import lowrank

        full = args.rank == "full"
        rank = None
        if args.rank is not None and not full:
            try:
                rank = int(args.rank)
            except ValueError:
                raise UsageError(f"--rank {args.rank}: not an integer", hint="e.g. --rank 32 or --rank full") from None
        out, report = lowrank(model, rank=rank, energy=args.energy, min_saving=args.min_saving,
                              full=full, include=args.include, exclude=args.exclude, data=common.data_arg(args))
        done = [layer for layer in report["layers"] if layer["factorized"]]
        summary = f"factorized {len(done)}/{len(report['layers'])} layers" + "".join(
            f"\n  {layer['node']}: {layer['shape'][0]}x{layer['shape'][1]} -> rank {layer['rank']}, "
            f"{layer['mac_saving']:.0%} fewer MACs" for layer in done)
    else:
        from edgepack.passes.fp16 import DEFAULT_BLOCK, to_fp16

        if args.data_max <= 0:
            raise UsageError(f"--data-max {args.data_max:g}: must be positive")
        out, report = to_fp16(model, keep_io_float=args.keep_io_float,
                              block=(*DEFAULT_BLOCK, *args.block), data=common.data_arg(args),
                              data_max=args.data_max)
        summary = (f"float16: {report['converted_nodes']} nodes converted, "
                   f"{len(report['float32_nodes'])} kept in float32" + "".join(
                       f"\n  {k['node']} ({k['op_type']}): {k['reason']}" for k in report["kept_float32"]))
    io.save(out, args.output)
    report = {"schema": SCHEMA, "method": args.method, "model": args.model, "output": args.output, **report}
    common.emit(args, report, f"{summary}\n-> {args.output}\n{format_cost(report)}")
    return 0
