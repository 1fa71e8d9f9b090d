"""edgepack profile ARTIFACT --target T: latency percentiles, throughput, per-layer times, environment."""
from __future__ import annotations

from edgepack.cli import common
from edgepack.errors import UsageError

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
    common.add_target(parser)
    budget = parser.add_mutually_exclusive_group()
    budget.add_argument("--runs", metavar="N", help="timed runs (default: --duration 3s)")
    budget.add_argument("--duration", metavar="S", help="time for this long: 3s, 500ms (at least 10 runs)")
    parser.add_argument("--warmup", metavar="N|S", default="200ms",
                        help="warm-up runs (200) or time (200ms, the default, as trtexec)")
    parser.add_argument("--batch", type=int, metavar="B", help="batch size for a dynamic first dimension")
    parser.add_argument("--threads", type=int, metavar="K",
                        help="intra-op threads, pinned (default: the target's, else 1)")
    parser.add_argument("--affinity", metavar="CPUS", help="pin to these CPUs: 0 or 0,1 or 2-3")
    parser.add_argument("--data", metavar="D", help="inputs from a calibration folder, .npz (FILE.npz:ARRAY) "
                        "or .npy (first batch; preprocessed by the flags below)")
    parser.add_argument("--shapes", metavar="SPEC", help="shapes of inputs with dynamic dims: input:1x3x224x224,...")
    parser.add_argument("--vs", metavar="B", help="a second artifact timed interleaved with the first; "
                        "the check compares the first (current) with B (baseline)")
    parser.add_argument("--top", type=int, default=10, metavar="N", help="layers in the per-layer table")
    parser.add_argument("--layer-runs", type=int, default=20, metavar="N",
                        help="profiled runs for the per-layer table (0: skip)")
    parser.add_argument("--history-db", metavar="FILE", help="profile history database")
    parser.add_argument("--no-history", action="store_true", help="do not record this run in the history")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    common.add_preprocess_args(parser)
    common.add_json(parser)
    return parser


def parse_cpus(text: str) -> list[int]:
    cpus = set()
    try:
        for part in text.split(","):
            low, _, high = part.partition("-")
            cpus.update(range(int(low), int(high or low) + 1))
    except ValueError:
        raise UsageError(f"--affinity {text!r}: not a CPU list", hint="write --affinity 0 or 0,1 or 0-3") from None
    return sorted(cpus)


def run(args) -> int:
    from edgepack.profile.history import History
    from edgepack.profile.profiler import ProfileOptions, format_profile, parse_shapes, profile_model, profile_pair
    from edgepack.profile.regression import check_regression, format_check
    from edgepack.profile.timing import DEFAULT_BUDGET_TEXT, Budget

    budget = Budget.parse(args.runs, "--runs") if args.runs else Budget.parse(args.duration or DEFAULT_BUDGET_TEXT, "--duration")
    if args.runs and budget.runs is None:
        raise UsageError(f"--runs {args.runs}: a number of runs", hint=f"for a duration use --duration {args.runs}")
    if args.duration and budget.seconds is None:
        raise UsageError(f"--duration {args.duration}: a duration needs a unit", hint=f"--duration {args.duration}s")
    if args.batch is not None and args.batch < 1:
        raise UsageError(f"--batch {args.batch}: must be 1 or more", hint="for example --batch 8")
    options = ProfileOptions(budget=budget, warmup=Budget.parse(args.warmup, "--warmup"), batch=args.batch,
                             threads=args.threads, data=common.data_arg(args), shapes=parse_shapes(args.shapes),
                             layer_runs=max(0, args.layer_runs), progress=not (args.no_progress or args.quiet))
    affinity = parse_cpus(args.affinity) if args.affinity else None
    if args.vs:
        result, baseline = profile_pair(args.model, args.vs, args.target, options, affinity=affinity)
        comparison = check_regression(result, baseline, force=True, metric="p50")  # interleaved: load hits both alike
        result["vs"] = {k: v for k, v in baseline.items() if k != "environment"}
        result["comparison"] = comparison
        text = (format_profile(result, args.top) + "\n\nvs " + baseline["model"]["name"] + "\n"
                + format_profile(baseline, args.top) + "\n\n" + format_check(comparison))
    else:
        result = profile_model(args.model, args.target, options, affinity=affinity)
        text = format_profile(result, args.top)
        baseline = None
    if not args.no_history:
        store = History(args.history_db)
        for item in ([result, baseline] if args.vs else [result]):
            store.add(item)
        text += f"\nrecorded in {store.path}"
    common.emit(args, result, text)
    return 0
