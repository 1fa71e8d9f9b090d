"""`edgepack run`: a recipe's steps in order, unchanged ones skipped."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

from edgepack.commands.result import NOT_JSON, CommandResult


@dataclass
class RunReport(CommandResult):
    """JSON `edgepack.run/1`: the recipe, the output folder and every step's status."""

    SCHEMA = "edgepack.run/1"
    recipe: str
    output_dir: str
    steps: list[dict]
    results: list = field(default_factory=list, repr=False, metadata=NOT_JSON)  # StepResult objects

    def text(self) -> str:
        from edgepack.recipe import format_results

        return format_results(self.results, Path(self.output_dir))


def run(recipe: str | os.PathLike, output: str | os.PathLike | None = None, *,
        targets: str | list[str] | None = None, force: bool = False,
        report: str | os.PathLike | None = None, allow_outside: bool = False,
        cluster: str | None = None) -> RunReport:
    """Run the recipe file into `output` (default ./<recipe name>-out); `targets` ("a,b" or a list)
    replaces the recipe's; `force` runs unchanged steps too; `report` also writes the HTML report;
    `allow_outside` lets the recipe write outside `output`; `cluster` (a Ray address or "auto") runs
    each target's build/profile/check on a device of the fleet (edgepack.fleet).
    The engine is `edgepack.load_recipe` + `edgepack.run_recipe`."""
    from edgepack.recipe import load_recipe, run_recipe

    if isinstance(targets, str):
        targets = [t.strip() for t in targets.split(",") if t.strip()]
    loaded = load_recipe(recipe, targets=targets or None, allow_outside=allow_outside)
    name = loaded.path.name.removesuffix(".toml").removesuffix(".recipe")
    out_dir = Path(output) if output is not None else Path(f"{name}-out")
    if cluster:
        from edgepack.fleet.dispatch import run_on_fleet

        results = run_on_fleet(loaded, out_dir, cluster, force=force)
    else:
        results = run_recipe(loaded, out_dir, force=force, allow_outside=allow_outside)
    if report is not None:
        from edgepack.report.html import write_report

        write_report(out_dir, report)
    return RunReport(str(loaded.path), str(out_dir), [r.as_dict() for r in results], results)
