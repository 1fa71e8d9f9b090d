"""edgepack report: one self-contained HTML page for a run folder."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "report", "write an HTML report (one self-contained file) of a run folder",
        description="Summary, pipeline steps with sizes and times, accuracy, latency distributions,\n"
                    "per-layer sensitivity/error and time, environment: from the output folder of\n"
                    "`edgepack run` or `edgepack demo`. Charts are inline SVG; no network is needed to view it.")
    parser.add_argument("folder", metavar="DIR", help="output folder of `edgepack run` (holds run.json)")
    common.add_output(parser, "HTML file to write (e.g. report.html)")
    return parser


API = "edgepack.commands.report:report_run"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
