"""edgepack build MODEL --target T -o OUT: a TensorRT engine or an ONNX Runtime artifact."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "build", "build a TensorRT engine (NVIDIA targets) or an ONNX Runtime artifact (CPU targets)",
        "TensorRT targets: parses the (QDQ) ONNX model with TensorRT's parser and builds an engine for\n"
        "this GPU: run it on the target device. CPU targets: ORT graph optimizations applied offline,\n"
        "saved as .onnx and .ort. Both write <OUT>.manifest.json (model sha256, target, versions, flags).")
    common.add_model(parser)
    common.add_target(parser)
    common.add_output(parser, "engine (.engine/.plan) or optimized model (.onnx; the .ort goes beside it)")
    parser.add_argument("--precision", choices=["best", "int8", "fp16", "fp32"], default="best",
                        help="best: int8 for a QDQ model where the target has it, else fp16, else fp32")
    parser.add_argument("--dla", type=int, metavar="N", help="run on DLA core N, with GPU fallback")
    parser.add_argument("--sparsity", action=argparse_bool(), default=None,
                        help="2:4 sparse weights (default: on where the target supports it)")
    parser.add_argument("--shapes", metavar="SPEC", help="dynamic inputs: NAME:MIN/OPT/MAX, e.g. "
                        "input:1x3x224x224/8x3x224x224/32x3x224x224")
    parser.add_argument("--timing-cache", metavar="FILE", help="TensorRT timing cache to load and update")
    common.add_json(parser)
    return parser


def argparse_bool():
    import argparse

    return argparse.BooleanOptionalAction


def run(args) -> int:
    from edgepack.backends import build

    artifact = build(args.model, target=args.target, output=args.output, precision=args.precision, dla=args.dla,
                     sparsity=args.sparsity, shapes=args.shapes, timing_cache=args.timing_cache)
    m = artifact.manifest
    text = (f"built {m['backend']} artifact for {m['target']} ({m['precision']}) in {m['build_seconds']:.2f} s: "
            f"{artifact.path}\nmanifest: {artifact.path}.manifest.json")
    common.emit(args, m, text)
    return 0
