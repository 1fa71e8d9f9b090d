"""edgepack run: a recipe (model, targets, data, ordered steps) through the pipeline, with a cache."""
from __future__ import annotations


from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(
        subparsers, "run", "run a recipe: the steps of a .toml file, skipping unchanged ones",
        description="Run the steps of a recipe (.toml) in order through the edgepack commands. Each step\n"
                    "writes its artifact, its JSON report and a manifest (<step>.step.json: inputs' sha256,\n"
                    "options, versions, seconds) into the output folder; a step whose inputs and options\n"
                    "did not change is skipped. build/profile/check run once per target (sub-folders).")
    parser.add_argument("recipe", metavar="RECIPE", help="recipe file (.toml)")
    common.add_output(parser, "output folder (default: ./<recipe name>-out)", required=False)
    parser.add_argument("--targets", metavar="A,B,C",
                        help="targets for the per-target steps, replacing the recipe's `targets`")
    parser.add_argument("--cluster", metavar="ADDRESS|auto",
                        help="run each target's build/profile/check on a device of the Ray fleet at ADDRESS "
                        "(HEAD:6379; auto: the cluster on this machine, else a local one); see docs/fleet.md")
    parser.add_argument("--force", action="store_true", help="run every step, even unchanged ones")
    parser.add_argument("--report", metavar="HTML", help="also write the HTML report of the run")
    parser.add_argument("--allow-outside", action="store_true",
                        help="let the recipe write files outside -o DIR (tensorrt_cache, history_db, ...); "
                             "refused by default, since a recipe may come from someone else")
    common.add_json(parser)
    return parser


API = "edgepack.commands.run:run"  # the library function this command calls (and `edgepack run` too)


def run(args) -> int:
    return common.run_api(args, API)
