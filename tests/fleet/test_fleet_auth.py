"""A fleet started through edgepack is authenticated and private: a real head and device on
127.0.0.1, started by `edgepack fleet head` / `fleet join` (Ray's own `ray start`, through the
launcher that keeps a loopback address).

Checked: the token file is owner-only (0600, folder 0700); every socket the cluster's processes
listen on is on 127.0.0.1 (read with `ss`); a client without the token, or with a wrong one, is
refused by the head, and one with it is answered; the device joined with the token; a driver
with the token, started in a folder holding a broken `edgepack/`, runs tasks on it. The cluster's
processes are found by its own temporary folder and killed at the end (never `ray stop`, which
would stop every Ray on the machine). No traffic leaves 127.0.0.1.
"""
from __future__ import annotations

import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

pytest.importorskip("ray", reason="Ray is not installed (pip install 'edgepack[fleet]')")

from edgepack.errors import EdgepackError  # noqa: E402
from edgepack.fleet import auth  # noqa: E402
from edgepack.fleet.head import start_head  # noqa: E402
from edgepack.fleet.probe import join  # noqa: E402

pytestmark = pytest.mark.slow  # a head and a device started as processes: ~15 s on 2 cores


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cluster_pids(marker: str) -> set[int]:
    """Processes whose command line names `marker` (the cluster's temp folder), and their children."""
    parents: dict[int, int] = {}
    found: set[int] = set()
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            ppid = int(Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        parents[int(entry)] = ppid
        if marker.encode() in cmd:
            found.add(int(entry))
    grew = True
    while grew:
        children = {pid for pid, ppid in parents.items() if ppid in found} - found
        grew = bool(children)
        found |= children
    return found - {os.getpid()}


def _listening(pids: set[int]) -> list[str]:
    """Local addresses (HOST:PORT) of the TCP sockets `pids` listen on, from `ss -ltnpH`."""
    out = subprocess.run(["ss", "-ltnpH"], capture_output=True, text=True, check=True).stdout
    addresses = []
    for line in out.splitlines():
        if any(f"pid={pid}," in line for pid in pids):
            addresses.append(line.split()[3])
    return addresses


def _probe(address: str, env: dict) -> str:
    code = ("import sys\nfrom ray._raylet import GcsClient\n"
            "try:\n    GcsClient(address=sys.argv[1]).internal_kv_get(b'session_name', b'session', timeout=5)\n"
            "except Exception as e:\n    print(type(e).__name__)\nelse:\n    print('answered')\n")
    return subprocess.run([sys.executable, "-c", code, address], capture_output=True, text=True, env=env,
                          timeout=60).stdout.strip()


@pytest.fixture(scope="module")
def head():
    temp = tempfile.mkdtemp(prefix="ep-auth-", dir="/tmp")  # short: Ray's socket paths must fit 107 bytes
    token = Path(temp) / "conf" / "fleet.token"
    port = _free_port()
    ray_args = [f"--temp-dir={temp}/ray", "--num-cpus=1", "--object-store-memory=80000000"]
    try:
        result = start_head("127.0.0.1", port=port, token_file=token, extra=ray_args)
        yield {"temp": temp, "token": token, "address": f"127.0.0.1:{port}", "result": result,
               "ray_args": ray_args}
    finally:
        for pid in _cluster_pids(temp):
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
        shutil.rmtree(temp, ignore_errors=True)


def test_token_file_is_owner_only(head):
    token = head["token"]
    assert stat.S_IMODE(token.stat().st_mode) == 0o600
    assert stat.S_IMODE(token.parent.stat().st_mode) & 0o077 == 0
    assert len(auth.read_token(token)) == 2 * auth.TOKEN_BYTES
    os.chmod(token, 0o644)
    try:
        with pytest.raises(EdgepackError, match="readable by others"):
            auth.read_token(token)
    finally:
        os.chmod(token, 0o600)
    assert head["result"].to_json()["auth"] == "token"


def test_head_and_device_listen_on_loopback_only(head):
    joined = join(head["address"], ["x86-cpu"], token_file=head["token"], force=True, extra=head["ray_args"])
    assert joined.started
    time.sleep(1.0)
    addresses = _listening(_cluster_pids(head["temp"]))
    port = head["address"].rsplit(":", 1)[1]
    assert any(a.endswith(f":{port}") for a in addresses), addresses  # the GCS is among them
    assert len(addresses) >= 3, addresses                             # GCS, raylets, agents
    hosts = {a.rsplit(":", 1)[0] for a in addresses}
    assert hosts <= {"127.0.0.1", "[::ffff:127.0.0.1]"}, addresses


def test_a_client_without_the_token_is_refused(head):
    base = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    assert _probe(head["address"], dict(base, RAY_AUTH_MODE="disabled")) == "AuthenticationError"
    assert _probe(head["address"], dict(base, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN="0" * 64)) == "AuthenticationError"
    assert _probe(head["address"], auth.ray_env(head["token"], base)) == "answered"
    assert auth.cluster_requires_token(head["address"]) is True


def test_a_driver_with_the_token_runs_on_the_fleet_from_any_folder(head, tmp_path):
    """`fleet status` as a user runs it: a separate driver process that presents the fleet token
    (EDGEPACK_FLEET_TOKEN), started in a folder holding a broken `edgepack/`. Ray puts the
    driver's working folder first on the workers' sys.path; the devices must still import the
    installed package (their probe answers with edgepack's version)."""
    import json

    work = tmp_path / "work"
    (work / "edgepack").mkdir(parents=True)
    (work / "edgepack" / "__init__.py").write_text("raise ImportError('the wrong edgepack')\n")
    script = tmp_path / "bin" / "status.py"
    script.parent.mkdir()
    script.write_text("import json, sys\nfrom edgepack.fleet.status import fleet_status\n"
                      "print(json.dumps(fleet_status(sys.argv[1], timeout_s=60).to_json()))\n")
    repo = str(Path(__file__).resolve().parents[2])
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(EDGEPACK_FLEET_TOKEN=str(head["token"]), PYTHONPATH=repo)
    done = subprocess.run([sys.executable, str(script), head["address"]], cwd=work, env=env,
                          capture_output=True, text=True, timeout=180)
    assert done.returncode == 0, done.stderr[-2000:]
    status = json.loads(done.stdout.strip().splitlines()[-1])
    alive = [n for n in status["nodes"] if n["alive"]]
    assert alive and all(n["device"] and n["device"]["versions"]["edgepack"] for n in alive), status
