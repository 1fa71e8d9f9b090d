"""A recipe across a fleet: the host-independent steps here, each target's steps on its device.

    edgepack run RECIPE --targets a,b --cluster ADDRESS

1. Targets that no device advertises fail at once, named (`no device in the fleet offers X
   (have: ...)`); when none is offered, nothing runs.
2. The steps that run once for all targets (optimize, prune, quantize, ...) run here, through
   run_recipe, with its cache.
3. For each target, its per-target steps are planned here, in this machine's paths: a step whose
   manifest matches (same inputs, options, versions) and whose inputs did not change is skipped,
   as in a local run. The others go, as one Ray task needing `edgepack-target:<name>`, to a device
   of that kind, with the files they read put in the object store (no shared file system).
   Targets run in parallel, one task per target.
4. The files each step wrote come back into DIR/<target>/ (written atomically, the device's
   temporary paths in logs and JSON reports replaced by this machine's), with a manifest that
   records the device (Ray node id, hostname, versions). Profile results go into this
   machine's history, so one store holds every device's results.

A device lost mid-task: Ray runs the task once more on another device of that kind
(max_retries=1); with no other device of that kind, the target fails after GRACE_S, named.
A failed target does not stop the others; the run ends with one error naming the failed ones.
"""
from __future__ import annotations

import dataclasses
import logging
import os
import sys
import time
from pathlib import Path

from edgepack.errors import EdgepackError, first_line
from edgepack.fleet import DEVICE_RESOURCE, resource
from edgepack.fleet.cluster import connect, exclusive_targets, no_device_error, offered_targets
from edgepack.fleet.untrusted import HostileReply, check_reply, declared_names, open_folder_nofollow, write_under

logger = logging.getLogger(__name__)

GRACE_S = 10.0  # how long a queued target may wait with no device of its kind alive
FLEET_SCHEMA = "edgepack.fleet.run/1"


class _Shipper:
    """Local files -> paths relative to the task folder (`in/<n>/<name>`), contents in the object store."""

    def __init__(self, ray):
        self.ray, self.rel, self.files = ray, {}, {}

    def ship(self, path: Path) -> str:
        path = Path(path).resolve()
        if str(path) in self.rel:
            return self.rel[str(path)]
        base = f"in/{len(self.rel)}"
        rel = f"{base}/{path.name}"
        if path.is_dir():
            for file in sorted(p for p in path.rglob("*") if p.is_file()):
                self.files[f"{rel}/{file.relative_to(path).as_posix()}"] = self.ray.put(file.read_bytes())
        else:
            self.files[rel] = self.ray.put(path.read_bytes())
            for extra in _external_data(path):
                self.files[f"{base}/{extra}"] = self.ray.put((path.parent / extra).read_bytes())
        self.rel[str(path)] = rel
        return rel

    def marked(self, path) -> str:
        return "@/" + self.ship(Path(path))

    def remote_to_local(self, work: str) -> list[tuple[str, str]]:
        """(path in the task folder, local path), longest first, for rewriting text outputs."""
        pairs = [(f"{work}/{rel}", local) for local, rel in self.rel.items()]
        return sorted(pairs, key=lambda p: -len(p[0]))


def _external_data(path: Path) -> list[str]:
    """Files an .onnx model keeps its weights in (relative to the model)."""
    if path.suffix != ".onnx":
        return []
    try:
        import onnx

        model = onnx.load(str(path), load_external_data=False)
    except Exception:
        return []
    found = set()
    for tensor in model.graph.initializer:
        for entry in tensor.external_data:
            if entry.key == "location" and (path.parent / entry.value).is_file():
                found.add(entry.value)
    return sorted(found)


def run_on_fleet(recipe, out_dir: str | Path, cluster: str, *, force: bool = False,
                 grace_s: float = GRACE_S) -> list:
    """Run `recipe` with its per-target steps on the fleet at `cluster`; returns the StepResults
    in the order of a local run. Raises EdgepackError naming the targets that failed.
    grace_s: how long a target may wait while no alive device offers it (its device was lost)."""
    from edgepack.recipe import run_recipe

    out_dir = Path(out_dir)
    if not any(s.per_target for s in recipe.steps):
        return run_recipe(recipe, out_dir, force=force)
    with connect(cluster) as connection:
        offered = offered_targets()
        missing = [t for t in recipe.targets if t not in offered]
        if len(missing) == len(recipe.targets):
            raise EdgepackError(no_device_error(missing[0], offered),
                                hint=f"join a device with `edgepack fleet join HEAD --target {missing[0]}`"
                                     " (or `ray start ... --resources`); `edgepack fleet status` lists the fleet")
        for target in missing:
            print(f"{target}: failed: {no_device_error(target, offered)}", file=sys.stderr, flush=True)
        shared = dataclasses.replace(recipe, steps=tuple(s for s in recipe.steps if not s.per_target))
        shared_results = run_recipe(shared, out_dir, force=force) if shared.steps else []
        return _run_targets(recipe, out_dir, shared_results, missing, offered, connection.address, force, grace_s)


def _run_targets(recipe, out_dir: Path, shared_results, missing, offered, address, force, grace_s) -> list:
    import ray

    from edgepack.recipe import StepResult, _command_parsers, versions

    parsers, env = _command_parsers(), versions()
    shared = {r.id: r for r in shared_results}
    per_target = [s for s in recipe.steps if s.per_target]
    results: dict[str, dict[str, StepResult]] = {}
    failures: dict[str, str] = {t: no_device_error(t, offered) for t in missing}
    pending: dict = {}
    shippers: dict = {}
    devices: dict[str, dict] = {}
    declared: dict[str, dict[str, set[str]]] = {}  # target -> step id -> the file names it may return
    task = ray.remote(_remote_entry)
    exclusive = exclusive_targets()
    for target in recipe.targets:
        if target in missing:
            results[target] = {s.id: StepResult(s.id, s.command, target, "failed" if i == 0 else "not run",
                                                note=failures[target] if i == 0 else "")
                               for i, s in enumerate(per_target)}
            continue
        kinds, skipped, refs, declared[target] = _plan_target(recipe, target, out_dir, parsers, env, shared, force)
        results[target] = skipped
        if not any(kind == "run" for _, kind in kinds):
            _print_target(target, [skipped[s.id] for s in per_target], None)
            continue
        shipper = _Shipper(ray)
        job = _job(recipe, target, kinds, shared, skipped, refs, shipper, out_dir)
        # one device of the kind per task; no CPU reserved (a device runs one edgepack task at a time)
        needs = {resource(target): 1, **({DEVICE_RESOURCE: 1} if target in exclusive else {})}
        options = {"resources": needs, "num_cpus": 0, "max_retries": 1, "retry_exceptions": False}
        pending[task.options(**options).remote(job)] = target
        shippers[target] = shipper
    waiting_since: dict[str, float] = {}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1, timeout=1.0)
        for ref in ready:
            target = pending.pop(ref)
            try:
                reply = ray.get(ref)
            except ray.exceptions.RayTaskError as exc:  # an error inside the task
                failures[target] = first_line(exc.cause if getattr(exc, "cause", None) else exc)
                reply = None
            except ray.exceptions.RayError as exc:      # the device or its worker was lost, twice
                failures[target] = (f"the device running it was lost ({type(exc).__name__}), "
                                    "also on the retry")
                reply = None
            if reply is not None:
                try:  # nothing a device sends is trusted: checked whole before a byte is written
                    reply = check_reply(reply, declared[target])
                except HostileReply as exc:
                    failures[target], reply = str(exc), None
            if reply is None:
                _mark_failed(results[target], per_target, target=target, note=failures[target])
                _print_target(target, [results[target][s.id] for s in per_target], None)
                continue
            devices[target] = reply["node"]
            try:
                failure = _take_back(recipe, target, out_dir, parsers, env, shared, results[target], reply,
                                     shippers[target])
            except EdgepackError as exc:  # e.g. the target's folder is a symbolic link
                failure = str(exc)
                _mark_failed(results[target], per_target, target=target, note=failure)
            if failure:
                failures[target] = failure
            _print_target(target, [results[target][s.id] for s in per_target], reply["node"])
        if pending:
            now, alive = time.monotonic(), offered_targets()
            for ref, target in list(pending.items()):
                if target in alive:
                    waiting_since.pop(target, None)
                    continue
                since = waiting_since.setdefault(target, now)
                if now - since >= grace_s:
                    ray.cancel(ref, force=True)
                    del pending[ref]
                    failures[target] = ("the device running it left the fleet and "
                                        + no_device_error(target, alive))
                    _mark_failed(results[target], per_target, target=target, note=failures[target])
                    _print_target(target, [results[target][s.id] for s in per_target], None)
    ordered = []
    for step in recipe.steps:
        if not step.per_target:
            if step.id in shared:
                ordered.append(shared[step.id])
            continue
        ordered += [results[t][step.id] for t in recipe.targets if step.id in results[t]]
    _write_run(recipe, out_dir, ordered, env, address, devices, failures)
    if failures:
        done = [t for t in recipe.targets if t not in failures]
        raise EdgepackError("; ".join(f"target {t} failed: {why}" for t, why in failures.items()),
                            hint=(f"targets {', '.join(done)} finished; " if done else "")
                                 + f"results and logs are in {out_dir}")
    return ordered


def _remote_entry(job):
    from edgepack.fleet.remote import run_target

    return run_target(job)


def _record(outputs, reports, key, result) -> None:
    outputs[key] = (None if result.status == "unavailable" else
                    Path(result.artifact) if result.artifact else False)
    if result.report:
        reports[key] = Path(result.report)


def _plan_target(recipe, target, out_dir, parsers, env, shared, force):
    """Which per-target steps are unchanged here (skipped) and which run on the device.
    Returns ([(step, kind)], {id: StepResult of skipped steps}, {id: input refs})."""
    from edgepack.recipe import _plan_step

    outputs, reports = {("model", None): recipe.model}, {}
    kinds, skipped, refs, to_run, declared = [], {}, {}, set(), {}
    for step in recipe.steps:
        if not step.per_target:
            if step.id in shared:
                _record(outputs, reports, (step.id, None), shared[step.id])
            kinds.append((step, "shared"))
            continue
        result, plan = _plan_step(step, target, recipe, out_dir, parsers, outputs, reports, env)
        refs[step.id] = list(result.inputs)
        declared[step.id] = declared_names(plan, step.id) if plan is not None else {f"{step.id}.log"}
        previous = plan.previous() if plan is not None and not force and not (to_run & set(result.inputs)) else None
        if previous:
            result.status, result.note = "skipped", f"unchanged (took {previous.get('seconds', 0):.2f}s)"
            skipped[step.id] = result
            kinds.append((step, "skipped"))
        else:
            if plan is not None:
                result.status = "done"  # as planned; the device says what happened
            to_run.add(step.id)
            kinds.append((step, "run"))
        _record(outputs, reports, (step.id, target), result)
    return kinds, skipped, refs, declared


def _job(recipe, target, kinds, shared, skipped, refs, shipper, out_dir):
    from edgepack.fleet.remote import TargetJob

    run_steps = [s for s, kind in kinds if kind == "run"]
    needed = {ref for s in run_steps for ref in refs.get(s.id, [])}
    given = {}
    for step, kind in kinds:
        source = shared.get(step.id) if kind == "shared" else skipped.get(step.id) if kind == "skipped" else None
        if source is None:
            continue
        entry = {"status": source.status, "artifact": None, "report": None}
        if step.id in needed:
            if source.artifact and Path(source.artifact).is_file():
                entry["artifact"] = shipper.ship(Path(source.artifact))
            if source.report and Path(source.report).is_file():
                entry["report"] = shipper.ship(Path(source.report))
        else:
            entry["artifact"] = f"absent/{step.id}" if source.artifact else None
            entry["report"] = f"absent/{step.id}.json" if source.report else None
        given[step.id] = entry
    model = shipper.marked(recipe.model) if "model" in needed else "@/absent/model.onnx"
    remote_recipe = dataclasses.replace(
        recipe, model=Path(model), data=shipper.marked(recipe.data) if recipe.data else None,
        baseline=Path(shipper.marked(recipe.baseline)) if recipe.baseline and Path(recipe.baseline).exists() else None)
    remote_steps = []
    history = None
    for step, kind in kinds:
        if kind == "run":
            inputs = (tuple(_ship_ref(r, recipe, shipper) for r in step.inputs)
                      if step.inputs is not None else None)
            options = {k: _ship_value(v, shipper) for k, v in step.options.items()}
            if step.command == "check" and options.get("baseline") == "history":
                from edgepack.profile.history import History

                store = History(step.options.get("history_db"))
                if store.path.is_file():
                    history = shipper.ship(store.path)
            step = dataclasses.replace(step, inputs=inputs, options=options)
        remote_steps.append((step, kind))
    return TargetJob(target, remote_recipe, remote_steps, given, shipper.files, history)


def _ship_ref(ref: str, recipe, shipper) -> str:
    from edgepack.recipe import _expand

    if ref == "model" or any(ref == s.id for s in recipe.steps):
        return ref
    return shipper.marked(_expand(ref, recipe.path.parent))


def _ship_value(value, shipper):
    if isinstance(value, list):
        return [_ship_value(v, shipper) for v in value]
    if isinstance(value, str) and ("/" in value or Path(value).suffix) and Path(value).exists():
        return shipper.marked(value)
    return value


def _take_back(recipe, target, out_dir, parsers, env, shared, results, reply, shipper) -> str | None:
    """Write the device's files (a checked reply: untrusted.check_reply) into DIR/<target>/, never
    through a symbolic link; re-plan each step here and write its manifest.
    Returns why the target failed, or None."""
    from edgepack.recipe import _plan_step, _produced, _target_folder, write_manifest

    folder = out_dir / _target_folder(target)
    os.close(open_folder_nofollow(out_dir, (folder.name,)))  # a link at DIR or DIR/<target>: refused
    work = reply["workdir"]
    pairs = shipper.remote_to_local(work) + [(f"{work}/out/{target}", str(folder)), (f"{work}/out", str(out_dir))]
    records = {r["id"]: r for r in reply["steps"]}
    node = reply["node"]
    device = {"node_id": node["node_id"], "hostname": node["hostname"], "ip": node["ip"],
              "versions": node["versions"], "device": node["device"]}
    outputs, reports = {("model", None): recipe.model}, {}
    failure = None
    for step in recipe.steps:
        if not step.per_target:
            if step.id in shared:
                _record(outputs, reports, (step.id, None), shared[step.id])
            continue
        record = records.get(step.id)
        if record is None:  # skipped here: its local files stand
            _record(outputs, reports, (step.id, target), results[step.id])
            continue
        for name, data in record["files"].items():
            if name.endswith((".json", ".log", ".txt", ".html")):
                text = data.decode("utf-8", errors="replace")
                for remote, local in pairs:
                    text = text.replace(remote, local)
                data = text.encode()
            write_under(out_dir, (folder.name,), name, data)
        result, plan = _plan_step(step, target, recipe, out_dir, parsers, outputs, reports, env)
        result.status, result.seconds, result.log = record["status"], record["seconds"], record["log"]
        result.note = record["note"] or (f"on {node['hostname']} ({node['node_id'][:8]})" if record["status"] == "done" else "")
        if plan is not None:
            unreturned = [p.name for p in _produced(plan) if p.name not in record["files"]]
            if result.status == "done" and unreturned:
                result.status, result.note = "failed", f"the device did not return {unreturned[0]}"
            if result.status == "done":
                write_manifest(plan, step, target, env, result.seconds, extra={"device": device})
                _add_history(step, plan)
            else:
                plan.manifest_path.unlink(missing_ok=True)
        if result.status == "failed" and failure is None:
            failure = f"step '{step.id}' failed on {node['hostname']}: {result.note}"
        results[step.id] = result
        _record(outputs, reports, (step.id, target), result)
    return failure


def _add_history(step, plan) -> None:
    """A profile result from a device goes into this machine's history (one store for the fleet)."""
    import json

    if step.command != "profile" or step.options.get("no_history") or plan.report is None:
        return
    try:
        data = json.loads(Path(plan.report).read_text())
    except (OSError, ValueError):
        return
    from edgepack.profile.history import History

    if not isinstance(data, dict):
        return
    for item in (data, data.get("vs")) if isinstance(data.get("vs"), dict) and "latency_ms" in data["vs"] else (data,):
        if item.get("schema") == "edgepack.profile/1":
            try:  # a device's report: a malformed one is left out of the history, with a warning
                History(step.options.get("history_db")).add(item)
            except (EdgepackError, TypeError, ValueError, KeyError, AttributeError) as exc:
                logger.warning("profile %s from the device not added to the history: %s", plan.report,
                               first_line(exc))


def _mark_failed(results, per_target, *, target, note) -> None:
    from edgepack.recipe import StepResult

    first = True
    for step in per_target:
        current = results.get(step.id)
        if current is not None and current.status == "skipped":
            continue
        results[step.id] = StepResult(step.id, step.command, target, "failed" if first else "not run",
                                      note=note if first else "")
        first = False


def _print_target(target, results, node) -> None:
    where = f" on {node['hostname']} ({node['node_id'][:8]})" if node else ""
    print(f"{target}{where}:", file=sys.stderr)
    for r in results:
        label = f"  {r.id}"
        print(f"{label:<40} {r.status:<12} {r.seconds:7.2f}s  {r.note}", file=sys.stderr)
        if r.log:
            sys.stderr.write(r.log if r.log.endswith("\n") else r.log + "\n")
    sys.stderr.flush()


def _write_run(recipe, out_dir, ordered, env, address, devices, failures) -> None:
    from edgepack.recipe import RUN_SCHEMA, _write_json

    _write_json(out_dir / "run.json", {
        "schema": RUN_SCHEMA, "recipe": str(recipe.path), "recipe_sha256": recipe.sha256,
        "model": str(recipe.model), "model_size_bytes": recipe.model.stat().st_size,
        "targets": list(recipe.targets),
        "baseline": str(recipe.baseline) if recipe.baseline else None,
        "versions": env, "steps": [r.as_dict() for r in ordered],
        "fleet": {"schema": FLEET_SCHEMA, "cluster": address,
                  "devices": {t: {k: d[k] for k in ("node_id", "hostname", "ip")} for t, d in devices.items()},
                  "failed": failures}})
