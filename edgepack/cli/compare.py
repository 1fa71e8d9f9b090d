"""edgepack compare A B --data D: output and per-layer error of B against A."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "compare", "compare two models' outputs (SQNR, cosine, max error, top-1) on data",
        "Runs A and B on the same data and reports, per output and per tensor present in both, the\n"
        "SQNR, cosine similarity and max abs error; top-1 agreement for [N, classes] outputs, and\n"
        "top-1 accuracy of both when the data carries labels (a `labels` array, or a calibration\n"
        "folder whose manifest names an evaluation file with labels).")
    parser.add_argument("model_a", metavar="A", help="reference model (e.g. FP32)")
    parser.add_argument("model_b", metavar="B", help="model to check (e.g. INT8)")
    parser.add_argument("--data", required=True, metavar="D",
                        help="a calibration folder, .npz (FILE.npz:ARRAY[:LABELS] picks the arrays) or .npy")
    parser.add_argument("--limit", type=int, metavar="N", help="use at most N samples")
    parser.add_argument("--labels", default="labels", metavar="KEY|FILE",
                        help="the labels: an array of the --data .npz (default: labels), or another file "
                             "(FILE.npz:ARRAY, FILE.npy); gives top-1 accuracy")
    common.add_preprocess_args(parser)
    parser.add_argument("--no-layers", action="store_true", help="outputs only")
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack import io
    from edgepack.calib.preprocess import Preprocess
    from edgepack.quant.compare import compare_models, format_comparison

    result = compare_models(io.load(args.model_a), io.load(args.model_b), args.data, limit=args.limit,
                            layers=not args.no_layers, label_key=args.labels,
                            preprocess=Preprocess.from_args(args))
    result.update({"a": args.model_a, "b": args.model_b})
    common.emit(args, result, format_comparison(result))
    return 0
