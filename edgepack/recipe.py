"""Recipes: a TOML file that names a model, its target(s), its data and ordered steps, run
through the commands' library functions with a cache, so an unchanged step is skipped.

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
[--OPTION VALUE...] --json DIR/<id>.json`, parsed by that command's parser and run by calling the
command's function (`edgepack.cli.<command>.API`), exactly as the CLI does. Its manifest DIR/<id>.step.json records the inputs'
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
# Step options naming files the step writes: resolved against the output folder, and kept in it.
OUTPUT_OPTIONS = {"tensorrt_cache", "history_db", "timing_cache"}
STEP_REF_OPTIONS = {"baseline", "vs"}  # may name an earlier step: its artifact (or JSON report) is passed
STEP_SCHEMA = "edgepack.step/1"
RUN_SCHEMA = "edgepack.run/1"
MAX_RECIPE_BYTES = 1 << 20  # a recipe is a page of TOML
MAX_RECIPE_DEPTH = 16       # tables and arrays inside each other
MAX_STEP_ID = 64            # an id names files: <id>.step.json must fit a file name (255 bytes)


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


#: options that take a file (or a folder): a step id there means that step's output
FILE_OPTIONS = {"data", "ranges", "baseline", "labels_file", "labels", "vs"}


def _is_path_option(action: argparse.Action) -> bool:
    if action.dest in OUTPUT_OPTIONS:
        return False
    return action.dest in FILE_OPTIONS or (
        action.metavar in {"FILE", "D", "DIR", "PATH"} and action.dest != "json")


def load_recipe(path: str | Path, *, targets: list[str] | None = None, allow_outside: bool = False) -> Recipe:
    """Parse and check a recipe: every step known, every option accepted by its command.

    A recipe names targets by name, or as .toml files in its own folder (`--targets` on the
    command line may name any file); `allow_outside` lifts the folder rule.
    """
    path = Path(path)
    if not path.is_file():
        raise EdgepackError(f"recipe not found: {path}", hint="pass the path of a .toml recipe")
    raw_bytes = path.read_bytes()
    if len(raw_bytes) > MAX_RECIPE_BYTES:
        raise EdgepackError(f"recipe {path}: {len(raw_bytes)} bytes, more than a recipe holds "
                            f"(at most {MAX_RECIPE_BYTES})", hint="pass the recipe, not a data file")
    try:
        raw = tomllib.loads(raw_bytes.decode())
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgepackError(f"recipe {path}: not valid TOML ({exc})") from None
    except RecursionError:
        raise EdgepackError(f"recipe {path}: nested too deeply to read",
                            hint=f"a recipe nests a few levels; at most {MAX_RECIPE_DEPTH}") from None
    _check_depth(raw, path)
    base = path.parent
    unknown = sorted(set(raw) - RECIPE_KEYS)
    if unknown:
        raise EdgepackError(f"recipe {path}: unknown key '{unknown[0]}'",
                            hint=f"top-level keys are: {', '.join(sorted(RECIPE_KEYS))}")
    if "model" not in raw:
        raise EdgepackError(f"recipe {path}: no 'model'", hint='add model = "path/to/model.onnx"')
    if not isinstance(raw["model"], str):
        raise EdgepackError(f"recipe {path}: 'model' must be a path, got {raw['model']!r}")
    model = _expand(raw["model"], base)
    if not model.is_file():
        raise EdgepackError(f"recipe {path}: model not found: {model}", hint="paths are relative to the recipe")
    listed = raw.get("targets", [])
    if isinstance(listed, str):
        listed = [listed]
    if not isinstance(listed, list) or not all(isinstance(t, str) for t in listed):
        raise EdgepackError(f"recipe {path}: 'targets' must be a list of target names, got {listed!r}",
                            hint='e.g. targets = ["x86-cpu"]')
    chosen = list(targets) if targets else listed
    from edgepack.targets import load_target
    if not targets:
        chosen = [_recipe_target(str(t), base, path, allow_outside) for t in chosen]
    for name in chosen:
        load_target(name)  # refuses an unknown target, naming it
        _target_folder(name)
    data = raw.get("data")
    if data is not None:
        data = str(_expand(str(data), base))
        from edgepack.calib.data import parse_data

        if not parse_data(data).path.exists():  # FILE.npz:ARRAY[:LABELS] names a file too
            raise EdgepackError(f"recipe {path}: data not found: {data}")
    baseline = _expand(str(raw["baseline"]), base) if raw.get("baseline") else None
    raw_steps = raw.get("step", [])
    if not isinstance(raw_steps, list) or not all(isinstance(t, dict) for t in raw_steps):
        raise EdgepackError(f"recipe {path}: 'step' must be [[step]] tables, got {raw_steps!r}",
                            hint='write each step as [[step]] followed by run = "optimize", ...')
    for key in ("model", "data", "baseline", "description"):
        if key in raw and not isinstance(raw[key], str):
            raise EdgepackError(f"recipe {path}: '{key}' must be a string, got {raw[key]!r}")
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
        if len(step_id) > MAX_STEP_ID:
            raise EdgepackError(f"{where}: id '{step_id[:40]}...' is {len(step_id)} characters long",
                                hint=f"use at most {MAX_STEP_ID} (it names the step's files)")
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
            if not isinstance(inputs, (str, list)) or isinstance(inputs, list) and not all(
                    isinstance(i, str) for i in inputs):
                raise EdgepackError(f"{where} ('{step_id}'): input must be a step id, 'model', a file, "
                                    f"or a list of them, got {inputs!r}", hint='e.g. input = "optimize"')
            inputs = (inputs,) if isinstance(inputs, str) else tuple(inputs)
            for ref in inputs:
                if ref not in seen - {step_id} and ref != "model" and not _expand(ref, base).exists():
                    raise EdgepackError(f"{where} ('{step_id}'): input '{ref}' is neither an earlier step, "
                                        "'model' nor an existing file")
        options = {k: v for k, v in table.items() if k not in STEP_KEYS}
        if command.replace("-", "_") in parsers:
            parser, sub = parsers[command.replace("-", "_")], None
            choice = _subcommands(parser)
            if choice is not None:  # compress: `method = "fp16"` picks the sub-command
                sub = options.pop(choice.dest, None)
                if sub not in choice.choices:
                    raise EdgepackError(f"{where} ('{step_id}'): `edgepack {command}` needs {choice.dest} = one of "
                                        f"{', '.join(choice.choices)}", hint=f'e.g. {choice.dest} = "{next(iter(choice.choices))}"')
                parser = choice.choices[sub]
            options = _check_options(step_id, command, options, parser, base, where, seen - {step_id})
            if sub is not None:
                options = {choice.dest: sub, **options}
        if isinstance(options.get("target"), str):
            options["target"] = _recipe_target(options["target"], base, path, allow_outside)
        per_target = bool(table.get("per_target", command in PER_TARGET))
        steps.append(Step(step_id, command, inputs, options, per_target))
    if any(s.per_target for s in steps) and not chosen:
        raise EdgepackError(f"recipe {path}: steps {', '.join(s.id for s in steps if s.per_target)} need a target",
                            hint='add targets = ["x86-cpu"] or pass --targets')
    return Recipe(path, model, tuple(chosen), data, baseline, tuple(steps),
                  hashlib.sha256(raw_bytes).hexdigest())


def _check_depth(raw: dict, path: Path) -> None:
    """Refuse values nested deeper than MAX_RECIPE_DEPTH (walked without recursion), so that no
    later reader of the recipe can exhaust Python's stack."""
    stack = [(raw, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_RECIPE_DEPTH:
            raise EdgepackError(f"recipe {path}: values nested {depth} levels deep",
                                hint=f"a recipe nests a few levels; at most {MAX_RECIPE_DEPTH}")
        children = value.values() if isinstance(value, dict) else value if isinstance(value, list) else ()
        stack.extend((child, depth + 1) for child in children if isinstance(child, (dict, list)))


def _recipe_target(text: str, base: Path, recipe: Path, allow_outside: bool) -> str:
    """A target as a recipe names it: a plain name, or a .toml file under the recipe's folder
    (resolved against it), never a path that reaches elsewhere."""
    from edgepack.targets import is_target_name

    if is_target_name(text) and not (text.endswith(".toml") and (base / text).is_file()):
        return text
    if not text.endswith(".toml"):
        raise EdgepackError(f"recipe {recipe}: target '{text}' is neither a target name nor a .toml file",
                            hint="name a target from `edgepack targets`, or a .toml file beside the recipe")
    file = _expand(text, base).resolve()
    if not allow_outside and not file.is_relative_to(base.resolve()):
        raise EdgepackError(f"recipe {recipe}: target file '{text}' is outside the recipe's folder; refused",
                            hint="copy it beside the recipe, or pass --allow-outside to `edgepack run`")
    return str(file)


def _target_folder(target: str) -> str:
    """The sub-folder of the output folder for a target's steps: its name, or its file's stem."""
    from edgepack.targets import is_target_name

    name = target if is_target_name(target) else Path(target).stem
    if not is_target_name(name):
        raise EdgepackError(f"target file '{target}': '{name}' cannot name a folder",
                            hint="rename the file to letters, digits, '.', '_' and '-'")
    return name


def _output_option(value: Any, key: str, folder: Path, out_dir: Path, step_id: str, allow_outside: bool) -> str:
    """A file a step writes (e.g. tensorrt_cache): relative to the step's output folder, and
    refused outside the output folder unless the user passed --allow-outside."""
    target = Path(str(value)).expanduser()
    target = target if target.is_absolute() else folder / target
    if not allow_outside and not target.resolve().is_relative_to(out_dir.resolve()):
        raise EdgepackError(f"step '{step_id}': {key} = {str(value)!r} writes outside the output folder "
                            f"{out_dir}; refused",
                            hint="use a path inside it, or pass --allow-outside to `edgepack run`")
    return str(target)


def _command_parsers() -> dict[str, argparse.ArgumentParser]:
    from edgepack.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return {name.replace("-", "_"): p for name, p in sub.choices.items()}


def _subcommands(parser: argparse.ArgumentParser) -> argparse._SubParsersAction | None:
    """The sub-command choice of a command that has one (`compress clip|lowrank|fp16`)."""
    return next((a for a in parser._actions if isinstance(a, argparse._SubParsersAction)), None)


def _check_options(step_id, command, options, parser, base, where, step_ids=frozenset()) -> dict[str, Any]:
    """Options keyed by argparse dest, values checked against the action's kind; a file option
    naming an earlier step (`vs = "build-fp32"`) is kept as the id, paths become relative to the
    recipe."""
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
            import difflib

            near = difflib.get_close_matches(key.replace("_", "-"), valid, n=1, cutoff=0.6)
            raise EdgepackError(f"{where} ('{step_id}'): unknown option '{key}' for `edgepack {command}`",
                                hint=(f"did you mean {near[0]}? " if near else "")
                                + f"its options are: {', '.join(valid)}")
        if action.nargs == 0 and not isinstance(value, bool):
            raise EdgepackError(f"{where} ('{step_id}'): option '{key}' is a switch",
                                hint=f"write {key} = true or false")
        if action.choices and not isinstance(value, list) and str(value) not in map(str, action.choices):
            raise EdgepackError(f"{where} ('{step_id}'): option '{key}' = {value!r} is not one of "
                                f"{', '.join(map(str, action.choices))}")
        if action.type is not None and action.nargs != 0:
            for item in value if isinstance(value, list) else [value]:
                try:
                    action.type(str(item))
                except (ValueError, TypeError, argparse.ArgumentTypeError):
                    raise EdgepackError(f"{where} ('{step_id}'): option '{key}' = {item!r} is not a valid "
                                        f"value for `edgepack {command} {action.option_strings[-1]}`",
                                        hint=f"see `edgepack {command} --help`") from None
        if isinstance(value, str) and _is_path_option(action) and value not in step_ids and (
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
        elif isinstance(value, list) and by_dest[dest].nargs is None:  # mean = [0.485, 0.456, 0.406]
            argv += [flag, ",".join(map(str, value))]
        elif isinstance(value, list):
            argv += [flag, *map(str, value)]
        else:
            argv += [flag, str(value)]
    return argv


# ---------------------------------------------------------------- hashing and manifests

def sha256_path(path: str | Path, exclude: Path | None = None) -> str:
    """sha256 of a file (an .onnx model with its external data files), or of a folder's files
    (those under `exclude`, the run's own output folder, left out)."""
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
    skip = exclude.resolve() if exclude is not None else None
    for file in sorted(p for p in path.rglob("*") if p.is_file()
                       and not (skip is not None and skip in p.resolve().parents)):
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
               force: bool = False, allow_outside: bool = False) -> list[StepResult]:
    """Run the steps in order; a step whose inputs and options are unchanged is skipped.

    Every file a step writes stays under `out_dir` (options such as tensorrt_cache are relative
    to the step's folder) unless `allow_outside`.

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
    for step, target in plan:  # refused before anything runs
        folder = out_dir / _target_folder(target) if target else out_dir
        for key in OUTPUT_OPTIONS & set(step.options):
            _output_option(step.options[key], key, folder, out_dir, step.id, allow_outside)
    try:
        for number, (step, target) in enumerate(plan, 1):
            label = f"[{number}/{len(plan)}] {step.id}" + (f" ({target})" if target else "")
            print(f"{label:<40}", end=" ", file=sys.stderr, flush=True)
            result = _run_step(step, target, recipe, out_dir, parsers, outputs, reports, env, force,
                               allow_outside)
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
    command_parser: argparse.ArgumentParser | None = None

    def previous(self) -> dict | None:
        """The step's manifest, if its key matches and its outputs are intact (the step can be skipped)."""
        previous = _read_json(self.manifest_path)
        if previous and previous.get("key") == self.key and all(
                Path(p).is_file() and sha256_path(p) == h for p, h in previous.get("outputs", {}).items()):
            return previous
        return None


def _run_step(step, target, recipe, out_dir, parsers, outputs, reports, env, force,
              allow_outside=False) -> StepResult:
    result, plan = _plan_step(step, target, recipe, out_dir, parsers, outputs, reports, env, allow_outside)
    if plan is None:
        return result
    previous = None if force else plan.previous()
    if previous:
        result.status, result.note = "skipped", f"unchanged (took {previous.get('seconds', 0):.2f}s)"
        return result
    plan.manifest_path.unlink(missing_ok=True)
    start = time.perf_counter()
    # the command's own output goes to DIR/<id>.log (and to stderr with -v); a failure shows it
    capture = _Tee(sys.stderr if logger.isEnabledFor(logging.INFO) else None, step.id)
    with contextlib.redirect_stdout(capture), contextlib.redirect_stderr(capture), _logs_to(capture):
        code, failure = _call(step.command, plan.command_parser, plan.argv)
    result.seconds = time.perf_counter() - start
    from edgepack.cli.common import write_text_atomic
    write_text_atomic(plan.folder / f"{step.id}.log", capture.text)
    if code != 0:
        if capture.stream is None:
            result.log = capture.renamed(capture.text[-4000:])
        errors = [line for line in capture.text.splitlines() if line.startswith("error:")]
        result.status = "failed"
        lines = [line.strip() for line in capture.text.splitlines() if line.strip()]
        result.note = failure or (errors[-1][len("error: "):] if errors
                                  else f"{lines[-1]} (exit code {code})" if lines else f"exit code {code}")
        return result
    absent = [str(p) for p in _produced(plan) if not p.is_file()]
    if absent:
        result.status, result.note = "failed", f"did not write {absent[0]}"
        return result
    result.status = "done"
    write_manifest(plan, step, target, env, result.seconds)
    return result


def _produced(plan: StepPlan) -> list[Path]:
    return list(dict.fromkeys(p for p in (plan.artifact, plan.report) if p is not None))


def write_manifest(plan: StepPlan, step: Step, target: str | None, env: dict, seconds: float,
                   extra: dict | None = None) -> None:
    """DIR/<id>.step.json: what a later run compares to skip the step (`extra`: e.g. the device)."""
    _write_json(plan.manifest_path, {
        "schema": STEP_SCHEMA, "id": step.id, "command": step.command, "target": target,
        "argv": plan.argv, "options": plan.options, "inputs": plan.hashed,
        "outputs": {str(p): sha256_path(p) for p in _produced(plan)}, "versions": env,
        "seconds": seconds, "key": plan.key, **(extra or {})})


def _plan_step(step, target, recipe, out_dir, parsers, outputs, reports, env,
               allow_outside: bool = False) -> tuple[StepResult, StepPlan | None]:
    """The step's result so far and its plan; no plan when it cannot run (its result says why)."""
    result = StepResult(step.id, step.command, target, "unavailable")
    parser = parsers.get(step.command.replace("-", "_"))
    if parser is None:
        result.note = f"`edgepack {step.command}` is not in this installation"
        return result, None
    command_parser, prefix, options = parser, [], dict(step.options)
    option_refs = []
    for key in sorted(STEP_REF_OPTIONS & set(options)):  # baseline = "build-fp32": that step's output
        ref = options[key]
        if isinstance(ref, str) and any(k[0] == ref for k in outputs):
            resolved = _resolve_inputs([ref], step, target, recipe, outputs, reports)
            if isinstance(resolved, str):
                result.note = resolved
                return result, None
            options[key] = str(resolved[0])
            option_refs.append(ref)
    choice = _subcommands(parser)
    if choice is not None:  # compress METHOD: the options and inputs are the sub-command's
        prefix = [options.pop(choice.dest)]
        parser = choice.choices[prefix[0]]
    dests = {a.dest for a in parser._actions}
    positionals = [a for a in parser._actions if not a.option_strings]
    result.inputs = _input_refs(step, target, outputs, len(positionals))
    inputs = _resolve_inputs(result.inputs, step, target, recipe, outputs, reports)
    if isinstance(inputs, str):
        result.note = inputs
        return result, None
    folder = out_dir / _target_folder(target) if target else out_dir
    folder.mkdir(parents=True, exist_ok=True)
    if len(inputs) != len(positionals):
        raise EdgepackError(f"recipe {recipe.path}: step '{step.id}' has {len(inputs)} input(s), "
                            f"`edgepack {step.command}` takes {len(positionals)}",
                            hint=f'set input = [...] with {len(positionals)} entries')
    result.inputs = [*result.inputs, *option_refs]  # what the step reads (a fleet ships it, a change reruns it)
    argv = [step.command, *prefix, *map(str, inputs)]
    artifact = report = None
    if "output" in dests:
        artifact = folder / f"{step.id}{_extension(step.command, target)}"
        argv += ["-o", str(artifact)]
    for key in OUTPUT_OPTIONS & set(options):
        options[key] = _output_option(options[key], key, folder, out_dir, step.id, allow_outside)
    if "target" in dests and "target" not in options and (target or recipe.targets):
        options["target"] = target or recipe.targets[0]
    if "data" in dests and "data" not in options and recipe.data:
        options["data"] = recipe.data
    for key, value in options.items():  # `vs = "build-fp32"`: a step id where a file is accepted
        action = next((a for a in parser._actions if a.dest == key), None)
        if isinstance(value, str) and action is not None and _is_path_option(action):
            ref = (value, target) if (value, target) in outputs else (value, None)
            if ref in outputs and ref[0] != "model":
                resolved = _resolve_inputs([value], step, target, recipe, outputs, reports)
                if isinstance(resolved, str):
                    result.note = resolved
                    return result, None
                options[key] = str(resolved[0])
    argv += _argv_options(options, parser)
    if "json" in dests:
        report = folder / f"{step.id}.json"
        if report != artifact:  # calibrate: its artifact is the JSON ranges already
            argv += ["--json", str(report)]
    result.argv, result.artifact = argv, str(artifact) if artifact else None
    result.report = str(report) if report else None

    hashed = {str(p): sha256_path(p, exclude=out_dir) for p in inputs}
    from edgepack.calib.data import parse_data

    for k, v in options.items():
        if isinstance(v, str) and k != "target" and k not in OUTPUT_OPTIONS and parse_data(v).path.exists():
            path = parse_data(v).path
            if path.is_dir() and out_dir.resolve().is_relative_to(path.resolve()):
                _say_once(f"the output folder {out_dir} is inside the input folder {path}: its files are "
                          "left out of that input's hash")
            hashed[str(v)] = sha256_path(path, exclude=out_dir)
    if "target" in options:  # a changed target file changes the step
        from edgepack.targets import load_target
        target_file = load_target(options["target"]).path
        hashed[str(target_file)] = sha256_path(target_file)
    key = hashlib.sha256(json.dumps({"argv": argv, "inputs": hashed, "versions": env},
                                    sort_keys=True).encode()).hexdigest()
    return result, StepPlan(argv, folder, artifact, report, options, hashed, key,
                            folder / f"{step.id}.step.json", command_parser)


_SAID: set[str] = set()


def _say_once(message: str) -> None:
    if message not in _SAID:
        _SAID.add(message)
        logger.warning("%s", message)


def _call(command: str, parser: argparse.ArgumentParser, argv: list[str]) -> tuple[int, str | None]:
    """Run one step: the command's library function (`edgepack.cli.<command>.API`) called with
    the options its parser reads from `argv`, exactly as the CLI calls it; its JSON goes to the
    step's report and its text to the log. Returns (exit code, one-line failure or None).
    A command module without an API function runs through `edgepack.cli.main`."""
    import importlib
    import traceback

    from edgepack.cli import common

    module = importlib.import_module(f"edgepack.cli.{command.replace('-', '_')}")
    spec = getattr(module, "API", None)
    if spec is None:
        from edgepack.cli import main
        return main(argv), None
    try:
        args = parser.parse_args(argv[1:])
    except SystemExit as exc:  # argparse printed its usage line
        return int(exc.code or 2), None
    args.command, args.quiet = command, True  # no progress bars in logs
    display = getattr(module, "DISPLAY", ())
    try:
        outcome = common.call(spec, args, display)
    except EdgepackError as exc:
        print(f"error: {exc}")
        return exc.exit_code, str(exc)
    except Exception as exc:  # a bug: the traceback goes to the step's log
        traceback.print_exc(file=sys.stdout)
        return 3, (f"internal error in 'edgepack {command}': {type(exc).__name__}: {exc}. "
                   f"hint: the traceback is in the step's .log; please report it")
    common.emit(args, outcome.to_json(), common.result_text(outcome, args, display))
    code = int(getattr(outcome, "exit_code", 0))
    if code and hasattr(outcome, "summary"):  # check: "latency regression: 1.41x slower at p1 (...)"
        return code, outcome.summary()
    if code and getattr(outcome, "problems", None):  # check-qdq
        problems = outcome.problems
        return code, f"{len(problems)} QDQ problem(s) for {outcome.target}; first: {problems[0]}"
    return code, None


@contextlib.contextmanager
def _logs_to(stream):
    """Warnings logged by the step's code go to its log (the root handler keeps the terminal's stderr)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(name)s: %(message)s"))
    handler.setLevel(logging.WARNING)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)


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
