"""edgepack profile ARTIFACT --target T: latency percentiles, throughput, per-layer times, environment."""
from __future__ import annotations

from edgepack.cli import common

EPILOG = """\
examples:
  edgepack profile model.onnx --target x86-cpu --duration 5s --json run.json
  edgepack profile model.engine --target jetson-orin-nano --runs 1000 --warmup 500ms
  edgepack profile new.onnx --vs old.onnx --target x86-cpu     (interleaved A/B in one process)

Results are appended to the profile history (--history-db, $EDGEPACK_HISTORY, or
~/.cache/edgepack/history.sqlite) unless --no-history."""


def register(subparsers):
    parser = common.add_command(
        subparsers, "profile", "time an ONNX model or TensorRT engine: latency percentiles and per-layer times")
    parser.epilog = EPILOG
    common.add_model(parser, help="ONNX model / ORT artifact, or TensorRT engine (.engine, .plan)")
    common.add_target(parser, recorded=True)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--runs", metavar="N", help="timed runs (default: --duration 3s)")
    budget.add_argument("--duration", metavar="S", help="time for this long: 3s, 500ms (at least 10 runs)")
    parser.add_argument("--warmup", metavar="N|S", default="200ms",
                        help="warm-up runs (200) or time (200ms, the default, as trtexec)")
    parser.add_argument("--batch", type=int, metavar="B", help="batch size for a dynamic first dimension")
    parser.add_argument("--threads", type=int, metavar="K",
                        help="intra-op threads, pinned (default: the target's, else 1)")
    parser.add_argument("--affinity", metavar="CPUS", help="pin to these CPUs: 0 or 0,1 or 2-3")
    parser.add_argument("--data", metavar="D", help="inputs (the first batch) from " + common.DATA_HELP)
    common.add_preprocess_args(parser)
    parser.add_argument("--shapes", metavar="SPEC", help="shapes of inputs with dynamic dims: input:1x3x224x224,...")
    parser.add_argument("--vs", metavar="B", help="a second artifact timed interleaved with the first; "
                        "the check compares the first (current) with B (baseline)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="layers in the per-layer table")
    parser.add_argument("--layer-runs", type=int, default=20, metavar="N",
                        help="profiled runs for the per-layer table (0: skip)")
    parser.add_argument("--history-db", metavar="FILE", help="profile history database")
    parser.add_argument("--no-history", action="store_true", help="do not record this run in the history")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_json(parser)
    return parser


DISPLAY = ("top",)  # options that only change the printed text
API = "edgepack.commands.profile:profile_artifact"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API, DISPLAY)
