"""edgepack history [--model M] [--target T]: the trend of recorded profile runs."""
from __future__ import annotations


from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(subparsers, "history", "show recorded profile runs and their latency trend")
    parser.add_argument("--model", metavar="M", help="a model file, its name, or a sha256 prefix")
    parser.add_argument("-t", "--target", metavar="T", help="only runs on this target")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="most recent runs shown (default 20)")
    parser.add_argument("--history-db", metavar="FILE", help="profile history database")
    common.add_json(parser)
    return parser


API = "edgepack.commands.history:history"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
