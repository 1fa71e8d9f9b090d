"""edgepack run: a recipe (model, targets, data, ordered steps) through the pipeline, with a cache."""
from __future__ import annotations

from pathlib import Path

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
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack.recipe import format_results, load_recipe, run_recipe

    targets = [t.strip() for t in args.targets.split(",") if t.strip()] if args.targets else None
    recipe = load_recipe(args.recipe, targets=targets)
    name = recipe.path.name.removesuffix(".toml").removesuffix(".recipe")
    out_dir = Path(args.output) if args.output else Path(f"{name}-out")
    if args.cluster:
        from edgepack.fleet.dispatch import run_on_fleet
        results = run_on_fleet(recipe, out_dir, args.cluster, force=args.force)
    else:
        results = run_recipe(recipe, out_dir, force=args.force)
    if args.report:
        from edgepack.report.html import write_report
        write_report(out_dir, args.report)
    data = {"schema": "edgepack.run/1", "recipe": str(recipe.path), "output_dir": str(out_dir),
            "steps": [r.as_dict() for r in results]}
    common.emit(args, data, format_results(results, out_dir))
    return 0
