"""edgepack check CURRENT --baseline BASELINE: a latency gate for CI (two artifacts, or two profile results)."""
from __future__ import annotations

import argparse

from edgepack.cli import common
from edgepack.commands.profile import METRICS

EPILOG = """\
verdicts: slower / faster / same, with the ratio current/baseline, its interval and the metric.
exit codes: 1 only when CURRENT is slower than the baseline both significantly (the bootstrap
interval of the ratio lies above 1) and by more than --threshold, and a confirming interleaved
rerun on this device agrees; 0 otherwise; 2 on bad input (timings that are not finite, or above
one hour per run, included), and when the model, target, batch or power mode (governor,
nvpmodel, jetson_clocks) differ (unless --force). The same artifact (sha256 of the model and its
weights) run by the same software is always "same": a difference measured is the machine's.

two artifacts (recommended for CI): both are timed here, interleaved in alternating blocks in one
process for --duration, so that load from other jobs hits both alike; a suspect result is timed
interleaved again (--confirm-duration) and both runs' pairs decide.
two profile results: a suspect result is confirmed by an interleaved rerun of the two model files
the profiles name, where they are here; where they are not, the verdict says it is unconfirmed.

examples:
  edgepack check new.onnx --baseline main.onnx --target x86-cpu      (interleaved, recommended)
  edgepack check run.json --baseline main.json --threshold 5% --metric p50
  edgepack check run.json --baseline history     (the recent runs of the same model and target)"""


def register(subparsers):
    parser = common.add_command(
        subparsers, "check", "fail (exit 1) when an artifact or a profile run is significantly slower than a baseline")
    parser.epilog = EPILOG
    parser.add_argument("current", metavar="CURRENT",
                        help="an artifact (.onnx, .ort: timed here against the baseline artifact, interleaved), "
                        "or the result of `edgepack profile --json`")
    parser.add_argument("--baseline", required=True, metavar="FILE|history|vs",
                        help="the baseline artifact, a baseline profile result, `history` for the recent runs "
                        "of the same model and target on the same kind of device, or `vs`: the model CURRENT "
                        "was timed against with `profile --vs` (interleaved in one process)")
    parser.add_argument("-t", "--target", metavar="T",
                        help="target whose execution providers and threads time two artifacts (default: ORT CPU, 1 thread)")
    parser.add_argument("--duration", default="3s", metavar="S",
                        help="how long two artifacts are timed, interleaved (default 3s)")
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


API = "edgepack.commands.profile:check"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
