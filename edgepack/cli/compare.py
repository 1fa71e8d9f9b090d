"""edgepack compare A B --data D: output and per-layer error of B against A."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "compare", "compare two models' outputs (SQNR, cosine, max error, top-1) on data",
        "Runs A and B on the same data, each as its runtime runs it (B's INT8 kernels fused as ONNX\n"
        "Runtime deploys them, or its exact QDQ math for TensorRT targets), and reports per output the\n"
        "SQNR, cosine similarity, max abs error and top-1 agreement, and top-1 accuracy of both when\n"
        "the data carries labels (a `labels` array, or a calibration folder whose manifest names an\n"
        "evaluation file with labels). Per-layer errors come from separate instrumented runs, with\n"
        "tensors paired by what they compute.")
    parser.add_argument("a", metavar="A", help="reference model (e.g. FP32)")
    parser.add_argument("b", metavar="B", help="model to check (e.g. INT8)")
    parser.add_argument("--data", required=True, metavar="D",
                        help=common.DATA_HELP)
    parser.add_argument("--limit", type=int, metavar="N", help="use at most N samples")
    parser.add_argument("--labels", default="labels", metavar="KEY|FILE",
                        help="the labels: an array of the --data .npz (default: labels), or another file "
                             "(FILE.npz:ARRAY, FILE.npy, or for an image folder FILE.csv of name,label rows; "
                             "an image folder's labels.csv or sub-folder per class is found by itself); "
                             "gives top-1 accuracy")
    common.add_preprocess_args(parser)
    parser.add_argument("--no-layers", action="store_true", help="outputs only")
    parser.add_argument("-t", "--target", metavar="T",
                        help="the target B is for: TensorRT targets run B as its exact QDQ math (the proxy "
                             "for TensorRT), ONNX Runtime targets as ORT deploys it; default: the target "
                             "recorded in B by `quantize`, else as ORT deploys it")
    parser.add_argument("--runtime", dest="runtime_name", choices=["ort", "qdq-math"],
                        help="how to run B: ort (all optimizations, fused INT8 kernels, as deployed) or "
                             "qdq-math (optimizations off); default: from --target, else ort")
    common.add_json(parser)
    return parser


API = "edgepack.quant.compare:compare"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
