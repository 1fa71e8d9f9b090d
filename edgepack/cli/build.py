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
  edgepack build model.onnx --target jetson-agx-thor -o model.engine --precision fp16 --data calib/

TensorRT 11 (JetPack 7: jetson-agx-thor, jetson-agx-orin-jp7) builds strongly typed networks only:
fp16 and best convert the model to float16 in ONNX first (fragile ops stay float32), int8 needs a
QDQ model from `edgepack quantize`. The manifest lists each layer's precision and why.
"""


def register(subparsers):
    parser = common.add_command(subparsers, "build", "build a TensorRT engine or an ONNX Runtime artifact",
                                description=DESCRIPTION)
    common.add_model(parser, help="input ONNX model (float, or QDQ from `edgepack quantize`)")
    common.add_target(parser)
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
                        help="samples (calibration folder, .npz or .npy): ONNX Runtime QDQ models are checked on "
                             "them as built vs their QDQ math (default: random inputs); TensorRT 11 fp16/best "
                             "keeps nodes whose values leave the float16 range on them in float32")
    parser.add_argument("--no-runtime-check", action="store_true", help="skip that check")
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack.backends import build

    artifact = build(args.model, args.target, output=args.output, precision=args.precision, dla=args.dla,
                     sparsity=args.sparsity, shapes=args.shapes, timing_cache=args.timing_cache,
                     workspace_mb=args.workspace_mb, threads=args.threads, data=args.data,
                     runtime_check=not args.no_runtime_check)
    m = artifact.manifest
    files = ", ".join(m.get("files", [m["artifact"]]))
    text = (f"built {files} for {m['target']} ({m['backend']}, {m['precision']}) "
            f"in {m['build_seconds']:.2f} s; manifest: {artifact.manifest_path}")
    check = m.get("runtime_check")
    if check:
        text += (f"\nruntime check: the artifact {'matches' if check['ok'] else 'DIFFERS from'} its QDQ math "
                 f"(SQNR {check['runtime_sqnr_db']:.1f} dB on {check['samples']} {check['data']}; "
                 f"CPU {check['cpu_flags']})")
    common.emit(args, m, text)
    return 0
