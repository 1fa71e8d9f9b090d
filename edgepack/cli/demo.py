"""edgepack demo: the bundled digits example through the pipeline, ending in a summary and a report."""
from __future__ import annotations


from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "demo", "run the whole pipeline on the bundled example model (digits CNN)",
        description="Runs edgepack/examples/digits.recipe.toml (like `edgepack run`): optimize, quantize\n"
                    "to INT8 with real calibration data, build for the CPU, profile FP32 and INT8, compare\n"
                    "on the held-out set; prints a summary table and writes DIR/report.html.")
    common.add_output(parser, "output folder (default: edgepack-demo)", required=False)
    parser.add_argument("--force", action="store_true", help="run every step, even unchanged ones")
    common.add_json(parser)
    return parser


API = "edgepack.demo:run_demo"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
