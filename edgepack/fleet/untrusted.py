"""What a device sends back is untrusted input: checked before anything is written or recorded.

A device (or anything that joined the cluster advertising a target) answers a task with a reply
`{"node", "steps", "workdir"}`. Before the driver writes a byte:
- the reply has that shape, every field its type, every string and list a bounded length;
- each step is one the driver sent to run, once;
- each returned file name is a plain file name (no `/`, `\\`, `..`, NUL, leading `.`, at most 255
  characters) and one of the files the step declares: its artifact, its JSON report, its log, or
  an output option inside the step's folder (`tensorrt_cache`, `timing_cache`, ...), plus the
  artifact's companions: `<artifact>.data`, `<artifact>.manifest.json`, and ONNX Runtime's
  `.ort` / `.onnx` twin with its own;
- sizes are bounded: MAX_FILE_BYTES per file, MAX_REPLY_BYTES in all;
- the device record that goes into the step manifests is plain JSON of bounded size and depth,
  its strings without control characters.
Files are then written by `write_under`: into the target's folder opened without following
symbolic links at any level below the run's folder, each through a temporary file and a rename
inside that folder (a link already standing at the name is replaced, never followed).
"""
from __future__ import annotations

import json
import math
import os
import re
from pathlib import Path

from edgepack.errors import EdgepackError

MAX_FILE_BYTES = 4 * 2**30    # one returned file (a TensorRT engine, a model with its weights)
MAX_REPLY_BYTES = 8 * 2**30   # all returned files of one target
MAX_FILES_PER_STEP = 16
MAX_TEXT = 1 << 20            # a step's log excerpt
MAX_NOTE = 4000
MAX_FIELD = 512               # hostnames, ids, versions
MAX_RECORD_BYTES = 64 * 1024  # the device record (facts) written into each manifest
MAX_DEPTH = 6
STATUSES = {"done", "failed", "not run", "unavailable", "skipped"}
_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f]")


class HostileReply(EdgepackError):
    """A device's reply that breaks the rules above: nothing of it is written."""


def _refuse(what: str) -> HostileReply:
    return HostileReply(f"the device's reply was refused: {what}",
                        hint="the device runs another edgepack or is not a device of this fleet; "
                             "check it with `edgepack fleet status` and remove it from the cluster")


def clean_text(value, field: str, limit: int = MAX_FIELD) -> str:
    """A string from a device, for a terminal or a JSON report: bounded, without control characters."""
    if not isinstance(value, str):
        raise _refuse(f"{field} is {type(value).__name__}, not text")
    if len(value) > limit:
        raise _refuse(f"{field} is {len(value)} characters long (at most {limit})")
    return _CONTROL.sub("?", value)


def plain_name(name) -> str:
    """A returned file's name, if it is a plain file name; else the reply is refused."""
    if not isinstance(name, str) or not name or len(name) > 255:
        raise _refuse(f"file name {str(name)[:80]!r} is not a plain file name")
    if name in (".", "..") or name.startswith(".") or any(c in name for c in "/\\\0") or _CONTROL.search(name):
        raise _refuse(f"file name {name[:80]!r} is not a plain file name (a path, hidden, or control characters)")
    return name


def _plain_json(value, field: str, depth: int = 0):
    if depth > MAX_DEPTH:
        raise _refuse(f"{field} is nested deeper than {MAX_DEPTH}")
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise _refuse(f"{field} holds a non-finite number")
        return value
    if isinstance(value, str):
        return clean_text(value, field, MAX_NOTE)
    if isinstance(value, (list, tuple)):
        if len(value) > 1024:
            raise _refuse(f"{field} has {len(value)} entries")
        return [_plain_json(v, f"{field}[]", depth + 1) for v in value]
    if isinstance(value, dict):
        if len(value) > 256:
            raise _refuse(f"{field} has {len(value)} keys")
        return {clean_text(k, f"a key of {field}"): _plain_json(v, f"{field}.{k}", depth + 1) for k, v in value.items()}
    raise _refuse(f"{field} holds a {type(value).__name__}")


def check_node(node) -> dict:
    """The device's record of itself (it names the device in manifests and run.json)."""
    if not isinstance(node, dict):
        raise _refuse("'node' is not a record")
    record = {key: clean_text(node.get(key), f"node.{key}") for key in ("node_id", "hostname", "ip")}
    if not re.fullmatch(r"[0-9a-f]{8,128}", record["node_id"]):
        raise _refuse(f"node id {record['node_id'][:40]!r} is not a Ray node id")
    record["versions"] = _plain_json(node.get("versions", {}), "node.versions")
    record["device"] = _plain_json(node.get("device", {}), "node.device")
    if not isinstance(record["versions"], dict) or not isinstance(record["device"], dict):
        raise _refuse("node.versions and node.device must be records")
    if len(json.dumps(record)) > MAX_RECORD_BYTES:
        raise _refuse(f"the device record is over {MAX_RECORD_BYTES} bytes")
    return record


def check_reply(reply, declared: dict[str, set[str]]) -> dict:
    """`reply` checked against `declared` (step id -> the file names that step may return).
    Returns a clean copy: {"node", "steps": [{id, status, seconds, note, log, files}], "workdir"}."""
    if not isinstance(reply, dict):
        raise _refuse(f"the reply is {type(reply).__name__}, not a record")
    node = check_node(reply.get("node"))
    workdir = clean_text(reply.get("workdir"), "workdir", 4096)
    steps = reply.get("steps")
    if not isinstance(steps, list) or len(steps) > len(declared):
        raise _refuse("'steps' is not a list of the steps sent")
    seen, clean, total = set(), [], 0
    for entry in steps:
        if not isinstance(entry, dict):
            raise _refuse("a step is not a record")
        step_id = entry.get("id")
        if step_id not in declared or step_id in seen:
            raise _refuse(f"step {str(step_id)[:80]!r} was not sent to this device (or came twice)")
        seen.add(step_id)
        status = entry.get("status")
        if status not in STATUSES:
            raise _refuse(f"step '{step_id}': status {str(status)[:40]!r}")
        seconds = entry.get("seconds")
        if isinstance(seconds, bool) or not isinstance(seconds, (int, float)) or not 0 <= seconds < 1e7:
            raise _refuse(f"step '{step_id}': seconds {seconds!r}")
        files = entry.get("files")
        if not isinstance(files, dict) or len(files) > MAX_FILES_PER_STEP:
            raise _refuse(f"step '{step_id}': 'files' is not a record of at most {MAX_FILES_PER_STEP} files")
        checked = {}
        for name, data in files.items():
            name = plain_name(name)
            if name not in declared[step_id]:
                raise _refuse(f"step '{step_id}' returned {name!r}, which it does not write "
                              f"(it writes {', '.join(sorted(declared[step_id]))})")
            if not isinstance(data, (bytes, bytearray)):
                raise _refuse(f"step '{step_id}': {name} is not bytes")
            if len(data) > MAX_FILE_BYTES:
                raise _refuse(f"step '{step_id}': {name} is {len(data)} bytes (at most {MAX_FILE_BYTES})")
            total += len(data)
            if total > MAX_REPLY_BYTES:
                raise _refuse(f"the returned files are over {MAX_REPLY_BYTES} bytes in all")
            checked[name] = bytes(data)
        clean.append({"id": step_id, "status": status, "seconds": float(seconds),
                      "note": clean_text(entry.get("note") or "", f"step '{step_id}' note", MAX_NOTE),
                      "log": clean_text(entry.get("log") or "", f"step '{step_id}' log", MAX_TEXT),
                      "files": checked})
    return {"node": node, "steps": clean, "workdir": workdir}


def declared_names(plan, step_id: str) -> set[str]:
    """The file names a step may return: what the driver's plan of it says it writes, in its folder."""
    from edgepack.recipe import OUTPUT_OPTIONS

    names = {f"{step_id}.log"}
    for path in (plan.artifact, plan.report):
        if path is not None:
            names.add(Path(path).name)
    if plan.artifact is not None:  # its weights, its build manifest, ORT's .ort / .onnx twin and theirs
        artifact = Path(plan.artifact)
        twin = artifact.with_suffix(".ort" if artifact.suffix == ".onnx" else ".onnx")
        for path in (artifact, twin):
            names.update({path.name, path.name + ".data", path.name + ".manifest.json"})
    for key in OUTPUT_OPTIONS & set(plan.options):
        path = Path(str(plan.options[key]))
        if path.parent == plan.folder:
            names.add(path.name)
    return {n for n in names if not n.endswith(".step.json")}


def open_folder_nofollow(root: Path, parts: tuple[str, ...]) -> int:
    """A descriptor of root/parts..., each level opened without following a symbolic link."""
    flags = os.O_RDONLY | os.O_DIRECTORY | getattr(os, "O_NOFOLLOW", 0)
    try:
        fd = os.open(root, flags)
    except OSError as exc:
        raise EdgepackError(f"the run's folder {root} cannot be opened as a folder ({exc.strerror}); "
                            "a symbolic link is not followed", hint="pass -o a real folder") from None
    for part in parts:
        try:
            os.mkdir(part, 0o777, dir_fd=fd)
        except FileExistsError:
            pass
        try:
            child = os.open(part, flags, dir_fd=fd)
        except OSError as exc:
            os.close(fd)
            raise EdgepackError(f"{root / part} is not a folder of the run ({exc.strerror}); "
                                "a symbolic link is not followed",
                                hint=f"remove {root / part} and run again") from None
        os.close(fd)
        fd = child
    return fd


def write_under(root: Path, parts: tuple[str, ...], name: str, data: bytes) -> Path:
    """Write `data` to root/parts.../name atomically, never following a symbolic link below root."""
    from edgepack.outputs import temp_prefix

    name = plain_name(name)
    fd = open_folder_nofollow(Path(root), parts)
    try:
        tmp = f"{temp_prefix()}{os.urandom(6).hex()}"
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600, dir_fd=fd)
        try:
            with os.fdopen(out, "wb") as handle:
                handle.write(data)
            mask = os.umask(0)
            os.umask(mask)
            os.chmod(tmp, 0o666 & ~mask, dir_fd=fd)
            os.replace(tmp, name, src_dir_fd=fd, dst_dir_fd=fd)
        except BaseException:
            try:
                os.unlink(tmp, dir_fd=fd)
            except OSError:
                pass
            raise
    finally:
        os.close(fd)
    return Path(root, *parts, name)
