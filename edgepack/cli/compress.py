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
    low.add_argument("--refit", metavar="DATA",
                     help="refit each factorized layer's second factor (and every layer after it) by least "
                          "squares against the original model's layer outputs on DATA")
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
                        help="samples for the output error (default: random inputs): " + common.DATA_HELP)
    common.add_preprocess_args(parser)
    common.add_json(parser)
    return parser


API = "edgepack.commands.compress:compress"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
