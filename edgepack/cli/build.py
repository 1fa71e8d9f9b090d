"""edgepack build: a TensorRT engine or an ONNX Runtime artifact for one hardware target."""
from __future__ import annotations

from edgepack.cli import common

DESCRIPTION = """\
Build MODEL for a hardware target.

TensorRT targets (Jetson boards, NVIDIA GPUs): an engine (.engine/.plan), built on the device
itself (or a machine with the same GPU and TensorRT version): engines do not move between GPUs
or TensorRT versions. ONNX Runtime targets (CPUs): the model with ORT's graph optimizations
applied offline (.onnx), plus the same in ORT format (.ort) for ORT's mobile/edge runtime.
Both write <OUT>.manifest.json: model sha256, target, precision, versions, device, flags.

examples:
  edgepack build model.qdq.onnx --target jetson-orin-nano -o model.engine --precision int8
  edgepack build model.onnx --target jetson-orin-nx -o model.engine --precision fp16 --dla 0
  edgepack build model.onnx --target nvidia-gpu -o model.plan --shapes input:1x3x224x224/8x3x224x224/32x3x224x224
  edgepack build model.onnx --target x86-cpu -o model.opt.onnx      # also writes model.opt.ort
"""


def register(subparsers):
    parser = common.add_command(subparsers, "build", "build a TensorRT engine or an ONNX Runtime artifact",
                                description=DESCRIPTION)
    common.add_model(parser, help="input ONNX model (float, or QDQ from `edgepack quantize`)")
    common.add_target(parser, recorded=True)
    common.add_output(parser, help="artifact: .engine/.plan (TensorRT) or .onnx/.ort (ONNX Runtime)")
    parser.add_argument("--precision", default="best", choices=["int8", "fp16", "fp32", "best"],
                        help="int8 needs a QDQ model; best: the fastest the target and model allow (default)")
    parser.add_argument("--dla", type=int, metavar="N", help="TensorRT: run on DLA core N, GPU fallback on")
    sparsity = parser.add_mutually_exclusive_group()
    sparsity.add_argument("--sparsity", dest="sparsity", action="store_true", default=None,
                          help="TensorRT: use 2:4 sparse weights (default: on where the target has it)")
    sparsity.add_argument("--no-sparsity", dest="sparsity", action="store_false")
    parser.add_argument("--shapes", metavar="SPEC",
                        help="TensorRT optimization profile: NAME:MIN/OPT/MAX[,NAME:...], dims joined by x "
                             "(default: dynamic dims = 1)")
    parser.add_argument("--timing-cache", metavar="FILE",
                        help="TensorRT timing cache: read if it exists, updated after the build")
    parser.add_argument("--workspace-mb", type=int, metavar="MB",
                        help="TensorRT workspace limit (default: the target's workspace_mb)")
    parser.add_argument("--threads", type=int, metavar="N",
                        help="ONNX Runtime intra-op threads recorded for the artifact (default: the target's)")
    parser.add_argument("--data", metavar="D",
                        help="samples (" + common.DATA_HELP + "; the preprocessing recorded in a quantized "
                             "model is used when no flag is given): ONNX Runtime QDQ models are checked on "
                             "them as built vs their QDQ math (default: random inputs); TensorRT 11 fp16/best "
                             "keeps nodes whose values leave the float16 range on them in float32")
    common.add_preprocess_args(parser)
    parser.add_argument("--no-runtime-check", action="store_true",
                        help="skip the runtime check of ONNX Runtime QDQ artifacts")
    parser.add_argument("--no-speed-check", action="store_true",
                        help="skip timing an ONNX Runtime QDQ artifact against its float twin (INT8 vs FP32 "
                             "verdict, interleaved, batch 1) and the warning when INT8 is not faster")
    common.add_json(parser)
    return parser


API = "edgepack.backends:build"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
