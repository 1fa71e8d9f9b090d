"""Reading a run folder for `edgepack report`: only files inside it, each one checked.

A run folder may come from anywhere (a colleague's archive, a CI artifact), so its files are
untrusted input. A file is read only when its real path (symbolic links resolved) is inside the
folder, it is a regular file of at most MAX_JSON_BYTES, and it parses as JSON nested at most
MAX_DEPTH levels. run.json must have the recipe engine's shape (a record; `steps` a list of
records whose `id`, `command`, `target`, `inputs`, `report`, ... have their types); a step's
report that breaks these rules is left out with a warning, a run.json that does is one error.
"""
from __future__ import annotations

import json
import logging
from pathlib import Path

from edgepack.errors import EdgepackError

logger = logging.getLogger(__name__)

MAX_JSON_BYTES = 64 * 2**20
MAX_DEPTH = 64
MAX_STEPS = 10_000

# step field -> the types it may have (None: may be absent or null)
STEP_FIELDS = {"id": (str,), "command": (str,), "target": (str, type(None)), "status": (str, type(None)),
               "report": (str, type(None)), "artifact": (str, type(None)), "note": (str, type(None)),
               "inputs": (list, type(None)), "size_bytes": (int, float, type(None)),
               "seconds": (int, float, type(None))}


class RunFileError(EdgepackError):
    """A file of the run folder that is not what edgepack writes there."""


def inside(folder: Path, path: Path) -> Path | None:
    """`path` resolved, if it is a regular file inside `folder` (resolved); else None."""
    try:
        real = path.resolve(strict=True)
    except (OSError, RuntimeError):  # missing, or a loop of links
        return None
    return real if real.is_relative_to(folder.resolve()) and real.is_file() else None


def _depth_ok(value, limit: int = MAX_DEPTH) -> bool:
    stack = [(value, 1)]
    while stack:
        item, depth = stack.pop()
        if depth > limit:
            return False
        children = item.values() if isinstance(item, dict) else item if isinstance(item, list) else ()
        stack.extend((c, depth + 1) for c in children if isinstance(c, (dict, list)))
    return True


def read_json(folder: Path, path: Path) -> dict:
    """The JSON record in `path`, a file inside `folder`; RunFileError when it is not one."""
    real = inside(folder, path)
    if real is None:
        raise RunFileError(f"{path}: not a file inside the run folder {folder}; not read",
                           hint="a run folder's files stay inside it (no links out of it)")
    size = real.stat().st_size
    if size > MAX_JSON_BYTES:
        raise RunFileError(f"{path}: {size:,} bytes, more than a report holds ({MAX_JSON_BYTES:,}); not read")
    try:
        data = json.loads(real.read_bytes().decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise RunFileError(f"{path}: not valid JSON ({str(exc)[:120]})") from None
    except RecursionError:
        raise RunFileError(f"{path}: JSON nested too deeply") from None
    if not isinstance(data, dict):
        raise RunFileError(f"{path}: a JSON {type(data).__name__}, not a record")
    if not _depth_ok(data):
        raise RunFileError(f"{path}: JSON nested deeper than {MAX_DEPTH} levels")
    return data


def check_run(run: dict, where: Path) -> list[dict]:
    """run.json's steps, checked field by field."""
    steps = run.get("steps", [])
    if not isinstance(steps, list) or len(steps) > MAX_STEPS:
        raise RunFileError(f"{where}: 'steps' is not a list of steps",
                           hint="pass the output folder of `edgepack run` or `edgepack demo`")
    for number, step in enumerate(steps, 1):
        if not isinstance(step, dict):
            raise RunFileError(f"{where}: step {number} is not a record")
        for key, types in STEP_FIELDS.items():
            if key in ("id", "command") and key not in step:
                raise RunFileError(f"{where}: step {number} has no '{key}'")
            if not isinstance(step.get(key), types) or isinstance(step.get(key), bool) and bool not in types:
                raise RunFileError(f"{where}: step {number}: '{key}' is {type(step.get(key)).__name__}")
        if not all(isinstance(i, str) for i in step.get("inputs") or []):
            raise RunFileError(f"{where}: step {number}: 'inputs' must be step ids")
        step.setdefault("target", None)
    for key in ("model", "recipe", "baseline"):
        if not isinstance(run.get(key), (str, type(None))):
            raise RunFileError(f"{where}: '{key}' is {type(run.get(key)).__name__}, not a path")
    if not isinstance(run.get("targets", []), list):
        raise RunFileError(f"{where}: 'targets' is not a list")
    return steps
