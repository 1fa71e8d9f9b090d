"""Recipes: a TOML file that names a model, its target(s), its data and ordered steps, run
through the `edgepack` command line with a cache, so an unchanged step is skipped.

    model = "digits_cnn.onnx"             # paths are relative to the recipe file;
    targets = ["x86-cpu"]                 # ${calibration} / ${targets} name the bundled data
    data = "${calibration}/digits/calib.npz"

    [[step]]
    run = "optimize"                      # the command; other keys are its options
    [[step]]
    run = "quantize"
    method = "entropy"
    [[step]]
    id = "profile-fp32"                   # optional name (default: the command)
    run = "profile"
    input = "optimize"                    # a step id, "model", a file, or a list of them

Each step becomes `edgepack <run> INPUT... [-o DIR/<id>.<ext>] [--target T] [--data D]
[--OPTION VALUE...] --json DIR/<id>.json`. Its manifest DIR/<id>.step.json records the inputs'
sha256, options, versions and time; the step is skipped when they have not changed and its
outputs are intact. build/profile/check run once per target, in DIR/<target>/.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import logging
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError
from edgepack.resources import data_dir

try:
    import tomllib
except ModuleNotFoundError:  # Python < 3.11
    import tomli as tomllib

logger = logging.getLogger(__name__)

STEPS = ("optimize", "prune", "compress", "pack", "calibrate", "quantize", "compare", "check-qdq",
         "build", "profile", "check", "inspect")
PER_TARGET = ("build", "profile", "check")
RECIPE_KEYS = {"model", "targets", "data", "baseline", "description", "step"}
STEP_KEYS = {"id", "run", "input", "per_target"}
# Options the engine sets itself; a recipe may not.
ENGINE_OPTIONS = {"output", "json", "help", "debug", "verbose", "quiet", "command", "run"}
STEP_SCHEMA = "edgepack.step/1"
RUN_SCHEMA = "edgepack.run/1"


@dataclass(frozen=True)
class Step:
    id: str
    command: str
    inputs: tuple[str, ...] | None  # step ids, "model" or file paths; None: the default
    options: dict[str, Any]
    per_target: bool


@dataclass(frozen=True)
class Recipe:
    path: Path
    model: Path
    targets: tuple[str, ...]
    data: str | None
    baseline: Path | None
    steps: tuple[Step, ...]
    sha256: str


@dataclass
class StepResult:
    id: str
    command: str
    target: str | None
    status: str  # done | skipped | failed | unavailable
    seconds: float = 0.0
    artifact: str | None = None
    report: str | None = None
    argv: list[str] = field(default_factory=list)
    inputs: list[str] = field(default_factory=list)  # step ids ("model") or file paths
    note: str = ""
    log: str = ""  # the end of a failed step's output, shown after its status line

    def as_dict(self) -> dict:
        size = Path(self.artifact).stat().st_size if self.artifact and Path(self.artifact).is_file() else None
        return {"id": self.id, "command": self.command, "target": self.target, "status": self.status,
                "seconds": round(self.seconds, 4), "artifact": self.artifact, "size_bytes": size,
                "report": self.report, "inputs": self.inputs, "argv": self.argv, "note": self.note}


# ---------------------------------------------------------------- parsing and validation

def _expand(text: str, base: Path) -> Path:
    for name in ("calibration", "targets"):
        text = text.replace("${%s}" % name, str(data_dir(name)))
    path = Path(text).expanduser()
    return path if path.is_absolute() else (base / path)


def _is_path_option(action: argparse.Action) -> bool:
    return action.dest in {"data", "ranges", "baseline", "labels_file"} or (
        action.metavar in {"FILE", "D", "DIR", "PATH"} and action.dest != "json")


def load_recipe(path: str | Path, *, targets: list[str] | None = None) -> Recipe:
    """Parse and check a recipe: every step known, every option accepted by its command."""
    path = Path(path)
    if not path.is_file():
        raise EdgepackError(f"recipe not found: {path}", hint="pass the path of a .toml recipe")
    raw_bytes = path.read_bytes()
    try:
        raw = tomllib.loads(raw_bytes.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgepackError(f"recipe {path}: not valid TOML ({exc})") from None
    base = path.parent
    unknown = sorted(set(raw) - RECIPE_KEYS)
    if unknown:
        raise EdgepackError(f"recipe {path}: unknown key '{unknown[0]}'",
                            hint=f"top-level keys are: {', '.join(sorted(RECIPE_KEYS))}")
    if "model" not in raw:
        raise EdgepackError(f"recipe {path}: no 'model'", hint='add model = "path/to/model.onnx"')
    model = _expand(str(raw["model"]), base)
    if not model.is_file():
        raise EdgepackError(f"recipe {path}: model not found: {model}", hint="paths are relative to the recipe")
    chosen = list(targets) if targets else list(raw.get("targets", []))
    if isinstance(chosen, str):
        chosen = [chosen]
    from edgepack.targets import load_target
    for name in chosen:
        load_target(name)  # refuses an unknown target, naming it
    data = raw.get("data")
    if data is not None:
        data = str(_expand(str(data), base))
        if not Path(data).exists():
            raise EdgepackError(f"recipe {path}: data not found: {data}")
    baseline = _expand(str(raw["baseline"]), base) if raw.get("baseline") else None
    raw_steps = raw.get("step", [])
    if not raw_steps:
        raise EdgepackError(f"recipe {path}: no steps", hint='add [[step]] tables with run = "optimize", ...')

    parsers = _command_parsers()
    steps: list[Step] = []
    seen: set[str] = set()
    for number, table in enumerate(raw_steps, 1):
        command = table.get("run")
        where = f"recipe {path}, step {number}"
        if command is None:
            raise EdgepackError(f"{where}: no 'run'", hint=f'add run = "<step>", one of: {", ".join(STEPS)}')
        if command not in STEPS:
            raise EdgepackError(f"{where}: unknown step '{command}'", hint=f"steps are: {', '.join(STEPS)}")
        step_id = str(table.get("id", command))
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", step_id):
            raise EdgepackError(f"{where}: id '{step_id}' is not a plain name",
                                hint="use letters, digits, '.', '_' and '-' (it names the step's files)")
        if not isinstance(table.get("per_target", False), bool):
            raise EdgepackError(f"{where} ('{step_id}'): per_target must be true or false")
        if step_id in seen or step_id == "model":
            raise EdgepackError(f"{where}: duplicate step id '{step_id}'", hint="give each step a distinct id = ...")
        seen.add(step_id)
        inputs = table.get("input")
        if inputs is not None:
            inputs = (inputs,) if isinstance(inputs, str) else tuple(map(str, inputs))
            for ref in inputs:
                if ref not in seen - {step_id} and ref != "model" and not _expand(ref, base).exists():
                    raise EdgepackError(f"{where} ('{step_id}'): input '{ref}' is neither an earlier step, "
                                        "'model' nor an existing file")
        options = {k: v for k, v in table.items() if k not in STEP_KEYS}
        if command.replace("-", "_") in parsers:
            options = _check_options(step_id, command, options, parsers[command.replace("-", "_")], base, where)
        per_target = bool(table.get("per_target", command in PER_TARGET))
        steps.append(Step(step_id, command, inputs, options, per_target))
    if any(s.per_target for s in steps) and not chosen:
        raise EdgepackError(f"recipe {path}: steps {', '.join(s.id for s in steps if s.per_target)} need a target",
                            hint='add targets = ["x86-cpu"] or pass --targets')
    return Recipe(path, model, tuple(chosen), data, baseline, tuple(steps),
                  hashlib.sha256(raw_bytes).hexdigest())


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    from edgepack.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name.replace("-", "_"): p for name, p in sub.choices.items()}


def _check_options(step_id, command, options, parser, base, where) -> dict[str, Any]:
    """Options keyed by argparse dest, values checked against the action's kind."""
    actions = {a.dest: a for a in parser._actions if a.option_strings}
    for a in parser._actions:
        for s in a.option_strings:
            if s.startswith("--"):
                actions.setdefault(s[2:].replace("-", "_"), a)
    checked: dict[str, Any] = {}
    for key, value in options.items():
        action = actions.get(key.replace("-", "_"))
        if action is None or action.dest in ENGINE_OPTIONS:
            valid = sorted({a.option_strings[-1].lstrip("-") for a in parser._actions
                            if a.option_strings and a.dest not in ENGINE_OPTIONS})
            raise EdgepackError(f"{where} ('{step_id}'): unknown option '{key}' for `edgepack {command}`",
                                hint=f"its options are: {', '.join(valid)}")
        if action.nargs == 0 and not isinstance(value, bool):
            raise EdgepackError(f"{where} ('{step_id}'): option '{key}' is a switch",
                                hint=f"write {key} = true or false")
        if action.choices and not isinstance(value, list) and str(value) not in map(str, action.choices):
            raise EdgepackError(f"{where} ('{step_id}'): option '{key}' = {value!r} is not one of "
                                f"{', '.join(map(str, action.choices))}")
        if isinstance(value, str) and _is_path_option(action) and (
                _expand(value, base).exists() or "/" in value or Path(value).suffix):
            value = str(_expand(value, base))  # not a keyword such as `--baseline history`
        checked[action.dest] = value
    return checked


def _argv_options(options: dict[str, Any], parser: argparse.ArgumentParser) -> list[str]:
    by_dest = {a.dest: a for a in parser._actions if a.option_strings}
    argv: list[str] = []
    for dest, value in options.items():
        flag = by_dest[dest].option_strings[-1]
        if isinstance(value, bool):
            argv += [flag] if value else []
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


# ---------------------------------------------------------------- hashing and manifests

def sha256_path(path: str | Path) -> str:
    """sha256 of a file (an .onnx model with its external data files), or of a folder's files."""
    from edgepack.backends.manifest import model_sha256, sha256_file

    path = Path(path)
    if path.is_file():
        if path.suffix == ".onnx":
            try:
                return model_sha256(path)
            except Exception:  # not a readable model (yet): its bytes are what changed
                return sha256_file(path)
        return sha256_file(path)
    digest = hashlib.sha256()
    for file in sorted(p for p in path.rglob("*") if p.is_file()):
        digest.update(str(file.relative_to(path)).encode() + b"\0" + bytes.fromhex(sha256_file(file)))
    return digest.hexdigest()


def versions() -> dict[str, str]:
    import numpy
    import onnx
    import onnxruntime

    from edgepack import __version__
    return {"edgepack": __version__, "onnx": onnx.__version__, "onnxruntime": onnxruntime.__version__,
            "numpy": numpy.__version__, "python": sys.version.split()[0]}


def _write_json(path: Path, data: dict) -> None:
    from edgepack.cli.common import write_text_atomic
    write_text_atomic(path, json.dumps(data, indent=2, default=str) + "\n")


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


# ---------------------------------------------------------------- execution

def _extension(command: str, target: str | None) -> str:
    if command == "calibrate":
        return ".json"
    if command == "build" and target:
        from edgepack.targets import load_target
        return ".engine" if load_target(target).backend == "tensorrt" else ".onnx"
    return ".onnx"


def run_recipe(recipe: Recipe, out_dir: str | Path, *, allow_missing: bool = False,
               force: bool = False) -> list[StepResult]:
    """Run the steps in order; a step whose inputs and options are unchanged is skipped.

    allow_missing: a step whose command is not in this installation is reported "unavailable"
    (with the steps that need its output) instead of refusing the recipe.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    parsers = _command_parsers()
    missing = [s for s in recipe.steps if s.command.replace("-", "_") not in parsers]
    if missing and not allow_missing:
        raise EdgepackError(f"recipe {recipe.path}: step '{missing[0].id}' needs `edgepack {missing[0].command}`, "
                            "which this installation does not have",
                            hint="update edgepack, or remove the step from the recipe")
    env = versions()
    outputs: dict[tuple[str, str | None], Path | None | bool] = {("model", None): recipe.model}
    reports: dict[tuple[str, str | None], Path] = {}  # JSON reports: the input of e.g. `check`
    results: list[StepResult] = []
    plan = [(s, t) for s in recipe.steps for t in (recipe.targets if s.per_target else (None,))]
    try:
        for number, (step, target) in enumerate(plan, 1):
            label = f"[{number}/{len(plan)}] {step.id}" + (f" ({target})" if target else "")
            print(f"{label:<40}", end=" ", file=sys.stderr, flush=True)
            result = _run_step(step, target, recipe, out_dir, parsers, outputs, reports, env, force)
            results.append(result)
            # the step's artifact; None: unavailable; False: the step writes no artifact
            outputs[(step.id, target)] = (None if result.status == "unavailable" else
                                          Path(result.artifact) if result.artifact else False)
            if result.report:
                reports[(step.id, target)] = Path(result.report)
            print(f"{result.status:<12} {result.seconds:7.2f}s  {result.note}", file=sys.stderr)
            if result.log:
                sys.stderr.write(result.log if result.log.endswith("\n") else result.log + "\n")
            if result.status == "failed":
                what, _, fix = result.note.partition(". hint: ")
                raise EdgepackError(
                    f"step '{step.id}'" + (f" for target {target}" if target else "") + f" failed: {what}",
                    hint=(f"{fix}; " if fix else "") + f"earlier steps' artifacts are kept in {out_dir}")
    finally:
        _write_json(out_dir / "run.json", {
            "schema": RUN_SCHEMA, "recipe": str(recipe.path), "recipe_sha256": recipe.sha256,
            "model": str(recipe.model), "model_size_bytes": recipe.model.stat().st_size,
            "targets": list(recipe.targets),
            "baseline": str(recipe.baseline) if recipe.baseline else None,
            "versions": env, "steps": [r.as_dict() for r in results]})
    return results


def _input_refs(step, target, outputs, positionals: int) -> list[str]:
    """Default: the most recent output (of this target or shared); two-input commands
    (compare) get the recipe's model first."""
    if step.inputs is not None:
        return list(step.inputs)
    latest = [k for k in outputs if k[1] in (None, target) and outputs[k] is not False][-1][0]
    return ["model", latest] if positionals == 2 else [latest]


def _resolve_inputs(refs, step, target, recipe, outputs, reports) -> list[Path] | str:
    """The step's input files (a step's artifact, else its JSON report), or a string saying
    which earlier step is unavailable."""
    paths: list[Path] = []
    for ref in refs:
        key = (ref, target) if (ref, target) in outputs else (ref, None)
        if key in outputs:
            if outputs[key] is None:
                return f"needs '{ref}', which is unavailable"
            if outputs[key] is False and key in reports:
                paths.append(reports[key])
                continue
            if outputs[key] is False:
                raise EdgepackError(f"recipe {recipe.path}: step '{step.id}' takes the output of '{ref}', "
                                    "which writes no artifact", hint="set input = an earlier model-writing step")
            paths.append(outputs[key])
        elif any(k[0] == ref for k in outputs):
            raise EdgepackError(f"recipe {recipe.path}: step '{step.id}' runs once for all targets, "
                                f"but its input '{ref}' runs per target",
                                hint=f"set per_target = true on '{step.id}'")
        else:
            paths.append(_expand(ref, recipe.path.parent))
    return paths


@dataclass
class StepPlan:
    """A step ready to run: its command line, outputs and cache key (inputs' sha256 included)."""
    argv: list[str]
    folder: Path
    artifact: Path | None
    report: Path | None
    options: dict[str, Any]
    hashed: dict[str, str]
    key: str
    manifest_path: Path

    def previous(self) -> dict | None:
        """The step's manifest, if its key matches and its outputs are intact (the step can be skipped)."""
        previous = _read_json(self.manifest_path)
        if previous and previous.get("key") == self.key and all(
                Path(p).is_file() and sha256_path(p) == h for p, h in previous.get("outputs", {}).items()):
            return previous
        return None


def _run_step(step, target, recipe, out_dir, parsers, outputs, reports, env, force) -> StepResult:
    result, plan = _plan_step(step, target, recipe, out_dir, parsers, outputs, reports, env)
    if plan is None:
        return result
    previous = None if force else plan.previous()
    if previous:
        result.status, result.note = "skipped", f"unchanged (took {previous.get('seconds', 0):.2f}s)"
        return result
    plan.manifest_path.unlink(missing_ok=True)
    argv, folder, artifact, report = plan.argv, plan.folder, plan.artifact, plan.report
    from edgepack.cli import main
    start = time.perf_counter()
    # the command's own output goes to DIR/<id>.log (and to stderr with -v); a failure shows it
    capture = _Tee(sys.stderr if logger.isEnabledFor(logging.INFO) else None, step.id)
    with contextlib.redirect_stdout(capture), contextlib.redirect_stderr(capture):
        code = main(argv)
    result.seconds = time.perf_counter() - start
    from edgepack.cli.common import write_text_atomic
    write_text_atomic(folder / f"{step.id}.log", capture.text)
    if code != 0:
        if capture.stream is None:
            result.log = capture.renamed(capture.text[-4000:])
        errors = [line for line in capture.text.splitlines() if line.startswith("error:")]
        result.status = "failed"
        result.note = errors[-1][len("error: "):] if errors else f"exit code {code}"
        return result
    produced = [p for p in (artifact, report) if p is not None]
    absent = [str(p) for p in produced if not p.is_file()]
    if absent:
        result.status, result.note = "failed", f"did not write {absent[0]}"
        return result
    result.status = "done"
    write_manifest(plan, step, target, env, result.seconds)
    return result


def write_manifest(plan: StepPlan, step: Step, target: str | None, env: dict, seconds: float,
                   extra: dict | None = None) -> None:
    """DIR/<id>.step.json: what a later run compares to skip the step (`extra`: e.g. the device)."""
    produced = [p for p in (plan.artifact, plan.report) if p is not None]
    _write_json(plan.manifest_path, {
        "schema": STEP_SCHEMA, "id": step.id, "command": step.command, "target": target,
        "argv": plan.argv, "options": plan.options, "inputs": plan.hashed,
        "outputs": {str(p): sha256_path(p) for p in produced}, "versions": env,
        "seconds": seconds, "key": plan.key, **(extra or {})})


def _plan_step(step, target, recipe, out_dir, parsers, outputs, reports, env) -> tuple[StepResult, StepPlan | None]:
    """The step's result so far and its plan; no plan when it cannot run (its result says why)."""
    result = StepResult(step.id, step.command, target, "unavailable")
    parser = parsers.get(step.command.replace("-", "_"))
    if parser is None:
        result.note = f"`edgepack {step.command}` is not in this installation"
        return result, None
    dests = {a.dest for a in parser._actions}
    positionals = [a for a in parser._actions if not a.option_strings]
    result.inputs = _input_refs(step, target, outputs, len(positionals))
    inputs = _resolve_inputs(result.inputs, step, target, recipe, outputs, reports)
    if isinstance(inputs, str):
        result.note = inputs
        return result, None
    folder = out_dir / target if target else out_dir
    folder.mkdir(parents=True, exist_ok=True)
    if len(inputs) != len(positionals):
        raise EdgepackError(f"recipe {recipe.path}: step '{step.id}' has {len(inputs)} input(s), "
                            f"`edgepack {step.command}` takes {len(positionals)}",
                            hint=f'set input = [...] with {len(positionals)} entries')
    argv = [step.command, *map(str, inputs)]
    artifact = report = None
    if "output" in dests:
        artifact = folder / f"{step.id}{_extension(step.command, target)}"
        argv += ["-o", str(artifact)]
    options = dict(step.options)
    if "target" in dests and "target" not in options and (target or recipe.targets):
        options["target"] = target or recipe.targets[0]
    if "data" in dests and "data" not in options and recipe.data:
        options["data"] = recipe.data
    argv += _argv_options(options, parser)
    if "json" in dests:
        report = folder / f"{step.id}.json"
        argv += ["--json", str(report)]
    result.argv, result.artifact = argv, str(artifact) if artifact else None
    result.report = str(report) if report else None

    hashed = {str(p): sha256_path(p) for p in inputs}
    hashed.update({str(v): sha256_path(v) for k, v in options.items()
                   if isinstance(v, str) and k != "target" and Path(v).exists()})
    if "target" in options:  # a changed target file changes the step
        from edgepack.targets import load_target
        target_file = load_target(options["target"]).path
        hashed[str(target_file)] = sha256_path(target_file)
    key = hashlib.sha256(json.dumps({"argv": argv, "inputs": hashed, "versions": env},
                                    sort_keys=True).encode()).hexdigest()
    return result, StepPlan(argv, folder, artifact, report, options, hashed, key, folder / f"{step.id}.step.json")


class _Tee:
    """Keeps a step's output (its log, and its error to name) and writes it through to
    `stream` if one is given, the step's `error:` lines shown as `<step>: ...`, so that the
    run prints the one `error:` line."""

    def __init__(self, stream, step_id: str):
        self.stream, self.parts, self.step_id = stream, [], step_id

    def write(self, text):
        self.parts.append(text)
        if self.stream is not None:
            self.stream.write(self.renamed(text))
        return len(text)

    def renamed(self, text: str) -> str:
        return re.sub(r"(^|\n)error: ", lambda m: f"{m.group(1)}{self.step_id}: ", text)

    def flush(self):
        if self.stream is not None:
            self.stream.flush()

    def isatty(self):
        return False

    @property
    def text(self) -> str:
        return "".join(self.parts)


def format_results(results: list[StepResult], out_dir: Path) -> str:
    lines = [f"{'step':<22} {'target':<16} {'status':<12} {'seconds':>8}  artifact"]
    for r in results:
        row = r.as_dict()
        size = f"{row['size_bytes']:,} B" if row["size_bytes"] is not None else ""
        lines.append(f"{r.id:<22} {r.target or '-':<16} {r.status:<12} {r.seconds:8.2f}  "
                     f"{Path(r.artifact).name if r.artifact else ''} {size}".rstrip())
    skipped = sum(r.status == "skipped" for r in results)
    lines.append(f"{len(results)} steps, {skipped} skipped (unchanged); outputs in {out_dir}")
    return "\n".join(lines)
