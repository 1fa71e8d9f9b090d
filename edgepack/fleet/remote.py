"""The task that runs on a device: one target's per-target steps (build -> profile -> check),
in a temporary folder, from inputs that came through Ray's object store.

The driver (edgepack.fleet.dispatch) sends a TargetJob: the recipe and its steps with every
local path replaced by a path relative to the task's folder, the contents of those files as
object references, and for each step whether it is shared (ran on the driver), skipped
(unchanged on the driver) or to run here. The task writes the files, runs the steps to run
through the same code as a local run (`edgepack.recipe._run_step`), and returns each step's
status and the files it wrote, with the node that ran it.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import platform
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass
class TargetJob:
    target: str
    recipe: object                      # edgepack.recipe.Recipe, paths relative to the task folder
    steps: list                         # [(Step, kind)], kind: "shared" | "skipped" | "run", in recipe order
    given: dict                         # step id -> {"status", "artifact", "report"} (relative paths) of shared/skipped steps
    files: dict                         # relative path -> ObjectRef of the file's bytes
    history: str | None = None          # relative path of a copy of the driver's history (for check --baseline history)


def node_record() -> dict:
    """Which device ran the task: Ray node id, hostname, address, and what the device is."""
    import ray

    from edgepack.fleet.probe import device_facts
    from edgepack.recipe import versions

    context = ray.get_runtime_context()
    facts = device_facts()
    return {"node_id": context.get_node_id(), "hostname": platform.node(),
            "ip": ray.util.get_node_ip_address(), "versions": versions(),
            "device": {k: facts[k] for k in ("machine", "cpu_model", "cpu_flags", "gpus", "jetson") if k in facts}}


def run_target(job: TargetJob) -> dict:
    """Run the job's steps here; returns {"node", "steps": [{id, status, seconds, note, log, files}], "workdir"}."""
    import ray

    from edgepack.recipe import _command_parsers, _run_step, versions

    work = Path(tempfile.mkdtemp(prefix=f"edgepack-{job.target}-"))
    saved_history = os.environ.get("EDGEPACK_HISTORY")
    try:
        for rel, ref in job.files.items():
            path = work / rel
            if Path(rel).is_absolute() or ".." in Path(rel).parts or not path.resolve().is_relative_to(work.resolve()):
                raise ValueError(f"the driver sent a file outside the task folder: {rel!r}")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(ray.get(ref))
        # profile rows go to the driver's history (it adds them); the device keeps none of its own
        os.environ["EDGEPACK_HISTORY"] = str(work / (job.history or "history.sqlite"))
        recipe = _localize(job.recipe, work)
        out_dir = work / "out"
        folder = out_dir / job.target
        folder.mkdir(parents=True, exist_ok=True)
        parsers, env = _command_parsers(), versions()
        outputs = {("model", None): recipe.model}
        reports: dict = {}
        done: list[dict] = []
        failed = False
        for step, kind in job.steps:
            target = job.target if step.per_target else None
            key = (step.id, target)
            if kind != "run":
                given = job.given.get(step.id, {})
                outputs[key] = (None if given.get("status") == "unavailable" else
                                work / given["artifact"] if given.get("artifact") else False)
                if given.get("report"):
                    reports[key] = work / given["report"]
                continue
            if failed:
                done.append({"id": step.id, "status": "not run", "seconds": 0.0,
                             "note": "an earlier step of this target failed", "log": "", "files": {}})
                continue
            step = _localize_step(step, work)
            before = _listing(folder)
            result = _run_step(step, job.target, recipe, out_dir, parsers, outputs, reports, env, True)
            outputs[key] = (None if result.status == "unavailable" else
                            Path(result.artifact) if result.artifact else False)
            if result.report:
                reports[key] = Path(result.report)
            after = _listing(folder)
            written = sorted(name for name, stamp in after.items()  # temporary and hidden files stay here
                             if before.get(name) != stamp and not name.endswith(".step.json")
                             and not name.startswith("."))
            done.append({"id": step.id, "status": result.status, "seconds": result.seconds, "note": result.note,
                         "log": result.log, "files": {name: (folder / name).read_bytes() for name in written}})
            failed = result.status == "failed"
        return {"node": node_record(), "steps": done, "workdir": str(work)}
    finally:
        if saved_history is None:
            os.environ.pop("EDGEPACK_HISTORY", None)
        else:
            os.environ["EDGEPACK_HISTORY"] = saved_history
        shutil.rmtree(work, ignore_errors=True)


def _listing(folder: Path) -> dict[str, tuple]:
    return {p.name: (p.stat().st_mtime_ns, p.stat().st_size) for p in folder.iterdir() if p.is_file()}


def _under(value, work: Path):
    """A path the driver made relative (marked `@/`) -> absolute in the task folder."""
    if isinstance(value, str) and value.startswith("@/"):
        return str(work / value[2:])
    if isinstance(value, list):
        return [_under(v, work) for v in value]
    return value


def _localize(recipe, work: Path):
    return dataclasses.replace(
        recipe, path=work / "recipe.toml", model=Path(_under(str(recipe.model), work)),
        data=_under(recipe.data, work) if recipe.data else None,
        baseline=Path(_under(str(recipe.baseline), work)) if recipe.baseline else None)


def _localize_step(step, work: Path):
    inputs = tuple(_under(v, work) for v in step.inputs) if step.inputs is not None else None
    return dataclasses.replace(step, inputs=inputs, options={k: _under(v, work) for k, v in step.options.items()})
