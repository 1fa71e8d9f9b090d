"""edgepack targets: list the hardware targets and what each supports."""
from __future__ import annotations

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(subparsers, "targets", "list hardware targets (targets/*.toml)")
    parser.add_argument("target", nargs="?", metavar="T", help="show one target (name or .toml path)")
    parser.add_argument("--host", action="store_true",
                        help="say which CPU target fits this machine (from /proc/cpuinfo's int8 flags)")
    common.add_json(parser)
    return parser


API = "edgepack.commands.targets:describe_targets"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
