"""The fleet's shared secret: Ray's token authentication, with the token in an owner-only file.

Ray (>= 2.52) authenticates every RPC and HTTP request with one static bearer token when the
environment says `RAY_AUTH_MODE=token`; each process (head, device, driver) reads the token from
`RAY_AUTH_TOKEN`, else the file `RAY_AUTH_TOKEN_PATH`, else `~/.ray/auth_token`. edgepack keeps
its token in `~/.config/edgepack/fleet.token` (or `$EDGEPACK_FLEET_TOKEN`, or `--token-file`),
created with mode 0600 in a 0700 folder, and refuses a token file that others can read. The
token is sent in clear text with each request: it keeps strangers out of a private network, it
does not encrypt the traffic.
"""
from __future__ import annotations

import logging
import os
import secrets
import stat
import subprocess
import sys
from pathlib import Path

from edgepack.errors import EdgepackError

logger = logging.getLogger(__name__)

TOKEN_ENV = "EDGEPACK_FLEET_TOKEN"
TOKEN_BYTES = 32  # 256 random bits, hex-encoded
PROBE_TIMEOUT_S = 20.0


def token_path(path: str | os.PathLike | None = None) -> Path:
    """The token file: `path`, else $EDGEPACK_FLEET_TOKEN, else ~/.config/edgepack/fleet.token."""
    if path:
        return Path(path).expanduser()
    if os.environ.get(TOKEN_ENV):
        return Path(os.environ[TOKEN_ENV]).expanduser()
    return Path.home() / ".config" / "edgepack" / "fleet.token"


def _check_private(path: Path) -> None:
    info = path.lstat()
    if stat.S_ISLNK(info.st_mode) or not stat.S_ISREG(info.st_mode):
        raise EdgepackError(f"fleet token {path} is not a plain file; refused",
                            hint="remove it and let `edgepack fleet head` create a new one")
    if info.st_mode & 0o077:
        raise EdgepackError(f"fleet token {path} is readable by others (mode {stat.S_IMODE(info.st_mode):04o}); "
                            "refused", hint=f"chmod 600 {path}, then rotate the token (docs/fleet.md)")


def read_token(path: str | os.PathLike | None = None) -> str:
    """The token in the (owner-only) token file; an error saying how to get it when missing."""
    file = token_path(path)
    if not file.exists():
        raise EdgepackError(f"no fleet token at {file}",
                            hint="copy the head's token file there (mode 600), or pass --token-file")
    _check_private(file)
    token = file.read_text(errors="replace").strip()
    if len(token) < 16 or not token.isprintable() or len(token) > 4096:
        raise EdgepackError(f"fleet token {file} is not a token (empty, too short or not text)",
                            hint="copy the head's token file again, or rotate it (docs/fleet.md)")
    return token


def ensure_token(path: str | os.PathLike | None = None, *, rotate: bool = False) -> Path:
    """The token file, created (0600, folder 0700) when missing or `rotate`; returns its path."""
    file = token_path(path)
    if file.exists() and not rotate:
        read_token(file)
        return file
    file.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = file.with_name(f".{file.name}.{os.getpid()}.tmp")
    tmp.unlink(missing_ok=True)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0), 0o600)
    try:
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(TOKEN_BYTES) + "\n")
        os.replace(tmp, file)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    logger.info("fleet token %s %s", "rotated in" if rotate else "created at", file)
    return file


def ray_env(path: str | os.PathLike | None = None, base: dict | None = None) -> dict[str, str]:
    """An environment for a Ray process that authenticates with the token file."""
    env = dict(os.environ if base is None else base)
    env.pop("RAY_AUTH_TOKEN", None)  # the file is the one source
    env["RAY_AUTH_MODE"] = "token"
    env["RAY_AUTH_TOKEN_PATH"] = str(token_path(path).resolve())
    return env


def use_token_here(path: str | os.PathLike | None = None) -> bool:
    """Make this process present the fleet token to Ray (when the token file exists): True if so.
    Ray reads the mode once per process; its config is refreshed so that a later ray.init sees it."""
    file = token_path(path)
    if not file.exists():
        return False
    read_token(file)
    os.environ.update({k: v for k, v in ray_env(file, {}).items()})
    os.environ.pop("RAY_AUTH_TOKEN", None)
    try:
        from ray._raylet import AuthenticationTokenLoader, Config

        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    except (ImportError, AttributeError):  # an older Ray: the environment is all it reads
        pass
    return True


_PROBE = """
import sys
from ray._raylet import GcsClient
try:
    GcsClient(address=sys.argv[1]).internal_kv_get(b"session_name", b"session", timeout=5)
except Exception as exc:
    name = type(exc).__name__
    print("auth" if name == "AuthenticationError" or "InvalidAuthToken" in str(exc) else "error:" + name)
else:
    print("open")
"""


def cluster_requires_token(address: str) -> bool:
    """Whether the Ray cluster at HOST:PORT refuses a client without a token: a client with
    authentication off asks its GCS for a key (in a subprocess, so that this process's Ray
    settings stay as they are). False: it answered, anyone who can reach it may run code there."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled")
    for key in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        env.pop(key, None)
    try:
        done = subprocess.run([sys.executable, "-c", _PROBE, address], capture_output=True, text=True,
                              env=env, timeout=PROBE_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        raise EdgepackError(f"the Ray cluster at {address} did not answer within {PROBE_TIMEOUT_S:.0f} s",
                            hint="check that the head runs (`edgepack fleet head`) and is reachable") from None
    answer = (done.stdout.strip().splitlines() or [f"error:exit code {done.returncode}"])[-1]
    if answer == "auth":
        return True
    if answer == "open":
        return False
    raise EdgepackError(f"cannot reach the Ray cluster at {address} ({answer[len('error:'):]})",
                        hint="check the address and that the head runs (`edgepack fleet head`)")
