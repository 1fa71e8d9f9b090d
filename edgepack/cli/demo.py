"""edgepack demo: the bundled digits example through the pipeline, ending in a summary."""
from __future__ import annotations

from pathlib import Path

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "demo", "run the whole pipeline on the bundled example model (digits CNN)")
    common.add_output(parser, "output folder", required=False)
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack.demo import format_summary, run_demo

    result = run_demo(Path(args.output or "edgepack-demo"))
    common.emit(args, result, format_summary(result))
    return 0
