"""edgepack check CURRENT.json --baseline BASELINE.json|history: a latency gate for CI."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from edgepack.cli import common
from edgepack.errors import UsageError

METRICS = ("p1", "p5", "p10", "p50", "p90", "p95", "p99")
EPILOG = """\
exit codes: 1 only when CURRENT is slower than the baseline both significantly (the bootstrap
interval of the ratio lies above 1) and by more than --threshold, and a confirming rerun on this
device agrees; 0 otherwise; 2 on bad input, and when the model, target, batch or power mode
(governor, nvpmodel, jetson_clocks) differ (unless --force).

confirmation (default where the model files are here): a flagged slowdown is timed again,
baseline and current interleaved in one process (or, for the same model, the current profiled
again), so that load from other jobs hits both alike; the load before/after is recorded.

examples:
  edgepack check run.json --baseline main.json --threshold 5% --metric p50
  edgepack check run.json --baseline history     (the recent runs of the same model and target)"""


def register(subparsers):
    parser = common.add_command(
        subparsers, "check", "fail (exit 1) when a profile run is significantly slower than a baseline")
    parser.epilog = EPILOG
    parser.add_argument("current", metavar="CURRENT.json", help="result of `edgepack profile --json`")
    parser.add_argument("--baseline", required=True, metavar="FILE|history",
                        help="a baseline profile result, or `history` for the recent runs of the same model and target "
                        "on the same kind of device")
    parser.add_argument("--threshold", default="5%", metavar="PCT", help="slowdown tolerated: 5%% (default) or 0.05")
    parser.add_argument("--confidence", type=float, default=0.99, metavar="C", help="confidence level (default 0.99)")
    parser.add_argument("--metric", default="p1", choices=METRICS,
                        help="latency percentile compared (default p1: the least disturbed by other load; "
                        "p50/p90/p99 for typical and tail latency on a quiet machine)")
    parser.add_argument("--history-db", metavar="FILE", help="profile history database (for --baseline history)")
    parser.add_argument("--history-runs", type=int, default=5, metavar="N", help="recent runs used as the baseline")
    parser.add_argument("--force", action="store_true",
                        help="compare even if model, target, batch or power mode differ")
    parser.add_argument("--confirm", action=argparse.BooleanOptionalAction, default=None,
                        help="confirm a flagged slowdown by an interleaved A/B rerun on this device "
                        "(default: where the model files recorded in the profiles are here)")
    parser.add_argument("--confirm-duration", default="2s", metavar="S",
                        help="timing budget of the confirming rerun (default 2s)")
    common.add_json(parser)
    return parser


def parse_threshold(text: str) -> float:
    value = text.strip()
    try:
        number = float(value[:-1]) / 100.0 if value.endswith("%") else float(value)
    except ValueError:
        raise UsageError(f"--threshold {text!r}: not a percentage", hint="write --threshold 5% or 0.05") from None
    if number < 0:
        raise UsageError(f"--threshold {text!r}: must not be negative", hint="write --threshold 5%")
    return number


def read_result(path: str) -> dict:
    from edgepack.profile.regression import validate_profile

    file = Path(path)
    try:
        data = json.loads(file.read_text())
    except FileNotFoundError:
        raise UsageError(f"profile result not found: {file}", hint="write it with `edgepack profile ... --json FILE`") from None
    except (OSError, ValueError, UnicodeDecodeError) as exc:
        raise UsageError(f"{file}: not a JSON profile result ({exc})",
                         hint="write it with `edgepack profile ... --json FILE`") from None
    return validate_profile(data, str(file))


def run(args) -> int:
    from edgepack.profile.history import History
    from edgepack.profile.regression import check_regression, format_check, validate_profile

    threshold = parse_threshold(args.threshold)
    current = read_result(args.current)
    if args.baseline == "history":
        store = History(args.history_db)
        from edgepack.profile.environment import device_kind

        device = None if args.force else device_kind(current.get("environment"))
        baseline = store.recent(model_sha256=current["model"]["sha256"], target=current.get("target"),
                                limit=max(1, args.history_runs), exclude_run_id=current.get("id"), device=device)
        if not baseline:
            on = f" on a {device}" if device else ""
            raise UsageError(f"no earlier runs of {current['model']['name']} on target {current.get('target')}{on} "
                             f"in {store.path}", hint="profile the baseline first (on the same kind of device), "
                             "or pass --baseline FILE")
        baseline = [validate_profile(b, f"{store.path} (run {b.get('id')})") for b in baseline]
    else:
        baseline = read_result(args.baseline)
    report = check_regression(current, baseline, threshold=threshold, confidence=args.confidence,
                              metric=args.metric, force=args.force)
    from edgepack.profile.confirm import gate
    from edgepack.profile.timing import Budget

    duration = Budget.parse(args.confirm_duration, "--confirm-duration")
    if duration.seconds is None:
        raise UsageError(f"--confirm-duration {args.confirm_duration}: a duration needs a unit",
                         hint=f"--confirm-duration {args.confirm_duration}s")
    report = gate(report, current, baseline if isinstance(baseline, list) else [baseline], confirm=args.confirm,
                  duration=duration.seconds, force=args.force, progress=not args.quiet)
    common.emit(args, report, format_check(report))
    return 1 if report["regression"] else 0
