"""`edgepack fleet head`: start the fleet's Ray head, authenticated and bound where asked.

Ray 2.60 listens where its node address points: a loopback node address (127.0.0.1) keeps every
Ray server (GCS, raylet, object manager, agents) on 127.0.0.1; any other node address makes its
gRPC servers listen on every interface (`*:PORT`), whatever address is named. So the head binds
127.0.0.1 by default (devices on this machine only) and a LAN address only when asked, with a
warning saying that Ray then listens on all interfaces and which ports to firewall. Either way
it starts with token authentication on (edgepack.fleet.auth), and without the dashboard.
"""
from __future__ import annotations

import ipaddress
import logging
import subprocess
import sys
from dataclasses import dataclass, field

from edgepack.errors import EdgepackError, UsageError
from edgepack.fleet import auth

logger = logging.getLogger(__name__)

DEFAULT_PORT = 6379
LOOPBACK = ("127.0.0.1", "localhost", "::1")
LAN_WARNING = ("the head binds {address}: Ray 2.60 then listens on every interface of this machine "
               "(GCS port {port}, raylet and object manager ports chosen at start); only the token keeps "
               "others out: firewall these ports to the devices' network (docs/fleet.md)")


def is_loopback(host: str) -> bool:
    return host.strip("[]") in LOOPBACK


def check_host(host: str) -> str:
    """An address to bind: an IP literal of this machine's, or localhost (never a name to resolve)."""
    if host == "localhost":
        return "127.0.0.1"
    try:
        ipaddress.ip_address(host.strip("[]"))
    except ValueError:
        raise UsageError(f"--address {host!r} is not an IP address",
                         hint="name the address to bind: 127.0.0.1 (default) or this machine's LAN address") from None
    if host.strip("[]") in ("0.0.0.0", "::"):
        raise UsageError(f"--address {host}: every interface; refused",
                         hint="name the one LAN address the devices reach this machine at")
    return host.strip("[]")


@dataclass
class HeadResult:
    address: str
    port: int
    token_file: str
    command: list[str]
    started: bool
    warnings: list[str] = field(default_factory=list)
    output: str = ""

    def to_json(self) -> dict:
        return {"schema": "edgepack.fleet.head/1", "address": self.address, "port": self.port,
                "cluster": f"{self.address}:{self.port}", "token_file": self.token_file, "auth": "token",
                "command": self.command, "started": self.started, "warnings": self.warnings, "output": self.output}


def ray_command(args: list[str]) -> list[str]:
    """`ray ARGS` through edgepack's launcher, which keeps a loopback node address (raystart.py)."""
    return [sys.executable, "-m", "edgepack.fleet.raystart", *args]


def run_ray(command: list[str], env: dict, what: str, hint: str) -> str:
    """Run a `ray` command with `env`; its output, or an error with its last line."""
    done = subprocess.run(command, capture_output=True, text=True, env=env)
    output = (done.stdout + done.stderr).strip()
    if done.returncode != 0:
        last = [line for line in output.splitlines() if line.strip()][-1:] or [f"exit code {done.returncode}"]
        raise EdgepackError(f"`{what}` failed: {last[0]}", hint=hint)
    return output


def start_head(address: str = "127.0.0.1", *, port: int = DEFAULT_PORT, token_file=None,
               rotate_token: bool = False, dry_run: bool = False, resources: dict | None = None,
               extra: list[str] = ()) -> HeadResult:
    """Start a Ray head on `address`:`port` with token authentication (the token file created
    0600 when missing, or replaced with `rotate_token`)."""
    host = check_host(address)
    if not 0 < int(port) < 65536:
        raise UsageError(f"--port {port}: not a TCP port", hint="use 1-65535 (default 6379)")
    warnings = [] if is_loopback(host) else [LAN_WARNING.format(address=host, port=port)]
    for text in warnings:
        logger.warning("%s", text)
    file = auth.token_path(token_file) if dry_run else auth.ensure_token(token_file, rotate=rotate_token)
    import json

    command = ray_command(["start", "--head", "--port", str(int(port)), "--node-ip-address", host,
                           "--include-dashboard=false", "--disable-usage-stats",
                           *(["--resources", json.dumps(resources)] if resources else []), *extra])
    result = HeadResult(host, int(port), str(file), command, started=False, warnings=warnings)
    if dry_run:
        return result
    result.output = run_ray(command, auth.ray_env(file), f"ray start --head --port {port}",
                            hint="is the port in use (another head)? pick another with --port")
    result.started = True
    return result
