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
    parser.add_argument("--data", metavar="D", help="samples for the output error (default: random inputs): "
                        + common.DATA_HELP)
    common.add_preprocess_args(parser)
    common.add_target(parser, required=False)
    parser.add_argument("--bias-correction", action="store_true",
                        help="with --data: shift each pruned layer's bias by the mean output change it caused")
    parser.add_argument("--refit", metavar="DATA",
                        help="refit the kept weights of every layer by least squares against the original "
                             "model's layer outputs on DATA (no training); reports accuracy before/after")
    common.add_json(parser)
    return parser


API = "edgepack.commands.prune:prune"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
