"""Where outputs go: the one check every file edgepack writes passes through, and the names of
its temporary files.

An output is never an input. While a command runs (`command(...)`), every file it reads as an
input is recorded: the files named on its command line, every model `io.load` opens and that
model's external data files. `check_output` refuses a destination that is any of them, however
it is spelled: the same path, a symbolic or hard link to it (compared by device and inode). It
also creates the destination's missing parent folders.

Temporary files live beside their destination (so the final rename is atomic) and are named
`.edgepack-tmp-<host>-<pid>-<random>`. A run that is killed cannot remove its own, so every
later write to that folder removes those whose process is gone: same host and the pid no longer
running, or (for folders shared between machines, where a pid means nothing) older than a day.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from edgepack.errors import EdgepackError

logger = logging.getLogger(__name__)

TEMP_PREFIX = ".edgepack-tmp-"
FOREIGN_TEMP_AGE_S = 24 * 3600  # another machine's temporary files: removed after a day

# (device, inode) -> what it is ("the input m.onnx"); one set per running command (nested for recipes)
_inputs: list[dict[tuple[int, int], tuple[str, str]]] = []


@contextlib.contextmanager
def command(inputs: Iterable[str | os.PathLike] = ()) -> Iterator[None]:
    """Record inputs for the duration of a command; nested commands (recipe steps) inherit the
    outer command's inputs."""
    _inputs.append(dict(_inputs[-1]) if _inputs else {})
    try:
        for path in inputs:
            add_input(path)
        yield
    finally:
        _inputs.pop()


def add_input(path: str | os.PathLike, what: str | None = None) -> None:
    """Remember `path` as an input of the running command (no-op outside a command); `what`
    names it in messages (default: "the input PATH")."""
    if not _inputs:
        return
    key = _identity(path)
    if key is not None:
        _inputs[-1].setdefault(key, (what or f"the input {path}", os.path.abspath(path)))


def check_output(path: str | os.PathLike, *, what: str = "output") -> Path:
    """`path`, checked: not an input of the running command; its parent folders created."""
    path = Path(path)
    key = _identity(path)
    if key is not None and _inputs and key in _inputs[-1]:
        source, source_path = _inputs[-1][key]
        link = "" if os.path.abspath(path) == source_path else " (the same file by another name or link)"
        raise EdgepackError(f"{what} {path} is {source}{link}; edgepack never overwrites an input",
                            hint="write the output to another file")
    folder = path.parent
    if str(folder) and not folder.is_dir():
        try:
            folder.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise EdgepackError(f"cannot create the output folder {folder}: {exc.strerror}",
                                hint="choose another output path") from None
    return path


def temp_prefix() -> str:
    """Prefix of a temporary file or folder of this process: `.edgepack-tmp-<host>-<pid>-`."""
    return f"{TEMP_PREFIX}{_host()}-{os.getpid()}-"


def clean_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Remove the temporary files and folders that killed edgepack runs left in `folder`."""
    removed = []
    try:
        entries = list(os.scandir(folder or "."))
    except OSError:
        return removed
    now = time.time()
    for entry in entries:
        if not entry.name.startswith(TEMP_PREFIX):
            continue
        parts = entry.name[len(TEMP_PREFIX):].split("-", 2)
        try:
            host, pid = parts[0], int(parts[1])
            age = now - entry.stat(follow_symlinks=False).st_mtime
        except (IndexError, ValueError, OSError):
            continue
        stale = not _running(pid) if host == _host() else age > FOREIGN_TEMP_AGE_S
        if not stale:
            continue
        path = Path(entry.path)
        try:
            if entry.is_dir(follow_symlinks=False):
                shutil.rmtree(path)
            else:
                path.unlink()
        except OSError:
            continue
        logger.info("removed %s, left by an edgepack run that was stopped", path)
        removed.append(path)
    return removed


def _identity(path: str | os.PathLike) -> tuple[int, int] | None:
    try:
        info = os.stat(path)
    except (OSError, ValueError):
        return None
    return (info.st_dev, info.st_ino)


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def _running(pid: int) -> bool:
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # another user's process (or a pid we cannot ask about): keep its files
    return True
