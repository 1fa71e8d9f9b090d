"""edgepack prune MODEL -o OUT --sparsity S: magnitude pruning (element, 2:4 or whole channels)."""
from __future__ import annotations

from edgepack.cli import common

SCHEMA = "edgepack.prune/1"


def register(subparsers):
    parser = common.add_command(
        subparsers, "prune", "set the smallest weights to zero: element-wise, 2:4 structured, or channels",
        description="Magnitude pruning of Conv/Gemm/MatMul weights. 'channel' zeroes whole output "
                    "channels (jointly across residual Adds) and then removes them from the graph.")
    common.add_model(parser)
    common.add_output(parser, "pruned ONNX model")
    parser.add_argument("--sparsity", type=float, metavar="S",
                        help="fraction of weights (element) or channels (channel) to remove; "
                             "not needed for 2:4 (always half)")
    parser.add_argument("--granularity", choices=["element", "2:4", "channel"], default="element")
    parser.add_argument("--global", dest="scope", action="store_const", const="global", default="layer",
                        help="element: one magnitude threshold for all layers instead of per layer")
    parser.add_argument("--norm", choices=["l1", "l2"], default="l1", help="channel ranking norm")
    parser.add_argument("--include", nargs="+", default=[], metavar="NODE|OPTYPE",
                        help="prune only these nodes / op types")
    parser.add_argument("--exclude", nargs="+", default=[], metavar="NODE|OPTYPE",
                        help="leave these nodes / op types as they are")
    parser.add_argument("--no-fold", action="store_true",
                        help="channel: keep the zeroed channels instead of removing them")
    parser.add_argument("--data", metavar="D", help="calibration folder, .npz (FILE.npz:ARRAY) or .npy for the output error "
                        "(default: random inputs)")
    common.add_target(parser, required=False)
    parser.add_argument("--bias-correction", action="store_true",
                        help="with --data: shift each pruned layer's bias by the mean output change it caused")
    common.add_preprocess_args(parser)
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack import io
    from edgepack.cost import format_cost
    from edgepack.errors import UsageError
    from edgepack.passes.prune import prune

    if args.sparsity is None and args.granularity != "2:4":
        raise UsageError(f"--granularity {args.granularity} needs --sparsity", hint="e.g. --sparsity 0.5")
    if args.bias_correction and not args.data:
        raise UsageError("--bias-correction needs sample data", hint="pass --data D")
    target = None
    if args.target:
        from edgepack.targets import load_target

        target = load_target(args.target)
        if args.granularity == "2:4" and not target.sparsity:
            common.stderr(f"warning: target '{target.name}' does not run 2:4 sparse weights faster "
                          "(sparsity = false): the zeros will only save space after compression")
    model = io.load(args.model)
    pruned, report = prune(model, sparsity=0.5 if args.sparsity is None else args.sparsity, granularity=args.granularity,
                           scope=args.scope, norm=args.norm, include=args.include,
                           exclude=args.exclude, fold=not args.no_fold, data=common.data_arg(args),
                           bias_correction=args.bias_correction)
    io.save(pruned, args.output)
    report = {"schema": SCHEMA, "model": args.model, "output": args.output,
              "target": target.name if target else None,
              "target_sparsity": target.sparsity if target else None, **report}
    changed = sum(layer["modified"] for layer in report["layers"])
    text = (f"pruned {changed}/{len(report['layers'])} layers ({args.granularity}) -> {args.output}\n"
            + format_cost(report))
    common.emit(args, report, text)
    return 0
