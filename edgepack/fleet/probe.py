"""Is this device a given target? Facts read from the device (CPU flags, ONNX Runtime and
TensorRT versions, GPU compute capability), compared with the target file; and joining a fleet.

Facts that cannot be read are absent, and a target that needs one of them does not match.
"""
from __future__ import annotations

import importlib.metadata
import json
import logging
import os
import platform
import shutil
import subprocess
from dataclasses import dataclass, field

from edgepack.errors import EdgepackError, UsageError
from edgepack.fleet import DEVICE_RESOURCE, INSTALL_HINT, resource

logger = logging.getLogger(__name__)

# cpu_isa of a target file -> (machines, /proc/cpuinfo flags it needs)
_ISA = {"avx2": (("x86_64", "amd64"), ("avx2",)),
        "avx512": (("x86_64", "amd64"), ("avx512f",)),
        "avx512-vnni": (("x86_64", "amd64"), ("avx512f", "avx512_vnni")),
        "neon": (("aarch64", "arm64"), ())}
_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "asimd", "asimddp")
DEFAULT_PORT = 6379


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None




def _gpus() -> list[dict]:
    """[{name, compute_capability}] from nvidia-smi, else pycuda; [] when neither answers."""
    if shutil.which("nvidia-smi"):
        try:
            out = subprocess.run(["nvidia-smi", "--query-gpu=name,compute_cap", "--format=csv,noheader"],
                                 capture_output=True, text=True, timeout=10)
            rows = [[x.strip() for x in line.split(",")] for line in out.stdout.splitlines() if "," in line]
            if out.returncode == 0 and rows:
                return [{"name": n, "compute_capability": c} for n, c in rows]
        except (OSError, subprocess.SubprocessError):
            pass
    try:
        import pycuda.driver as cuda

        cuda.init()
        return [{"name": cuda.Device(i).name(), "compute_capability": "%d.%d" % cuda.Device(i).compute_capability()}
                for i in range(cuda.Device.count())]
    except Exception:  # no pycuda, no driver, no device
        return []


def device_facts() -> dict:
    """What this device is, for matching targets and for `fleet status`."""
    from edgepack import __version__
    from edgepack.profile.environment import cpu_model, jetson_power, load_average

    from edgepack.cpu import cpu_flags

    flags = set(cpu_flags())
    facts = {"hostname": platform.node(), "machine": platform.machine().lower(), "cpu_model": cpu_model(),
             "cpu_count": os.cpu_count(), "cpu_flags": sorted(f for f in _FLAGS if f in flags),
             "load_average": load_average(),
             "versions": {"edgepack": __version__, "python": platform.python_version(),
                          "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
                          "tensorrt": _version("tensorrt"), "ray": _version("ray")},
             "gpus": _gpus(), "jetson": jetson_power()}
    try:
        import onnxruntime

        facts["providers"] = list(onnxruntime.get_available_providers())
    except ImportError:
        facts["providers"] = []
    return facts


def _tuple(version: str) -> tuple[int, ...]:
    return tuple(int(p) for p in str(version).split(".") if p.isdigit())


def mismatches(target, facts: dict) -> list[str]:
    """Why this device is not `target` (empty: it is)."""
    problems = []
    versions = facts.get("versions", {})
    if target.backend == "onnxruntime":
        if not versions.get("onnxruntime"):
            problems.append("ONNX Runtime is not installed")
        missing = [p for p in target.execution_providers if p not in facts.get("providers", [])]
        if missing and versions.get("onnxruntime"):
            problems.append(f"ONNX Runtime here lacks {', '.join(missing)}")
        isa = _ISA.get(target.cpu_isa or "")
        if isa:
            machines, needed = isa
            if facts.get("machine") not in machines:
                problems.append(f"CPU is {facts.get('machine')}, the target needs {machines[0]} ({target.cpu_isa})")
            else:
                lacking = [f for f in needed if f not in facts.get("cpu_flags", [])]
                if lacking:
                    problems.append(f"CPU lacks {', '.join(lacking)} (target cpu_isa {target.cpu_isa})")
    elif target.backend == "tensorrt":
        have = versions.get("tensorrt")
        if not have:
            problems.append("TensorRT is not installed")
        elif target.tensorrt_version and _tuple(have)[:2] != _tuple(target.tensorrt_version)[:2]:
            problems.append(f"TensorRT {have}, the target is built for {target.tensorrt_version}")
        gpus = facts.get("gpus") or []
        if not gpus:
            problems.append("no NVIDIA GPU found (nvidia-smi / pycuda)")
        elif target.compute_capability:
            want, cc = _tuple(target.compute_capability), gpus[0]["compute_capability"]
            ok = _tuple(cc) >= want if target.device_match == "minimum" else _tuple(cc) == want
            if not ok:
                op = ">= " if target.device_match == "minimum" else ""
                problems.append(f"GPU {gpus[0]['name']} has compute capability {cc}, "
                                f"the target needs {op}{target.compute_capability}")
    return problems


def matching_targets(facts: dict) -> list[str]:
    """The bundled targets this device is."""
    from edgepack.targets import list_targets

    return [t.name for t in list_targets() if not mismatches(t, facts)]


@dataclass
class JoinResult:
    head: str
    targets: list[str]
    command: list[str]
    started: bool
    facts: dict = field(default_factory=dict)
    output: str = ""

    def to_json(self) -> dict:
        return {"schema": "edgepack.fleet.join/1", "head": self.head, "targets": self.targets,
                "resources": {DEVICE_RESOURCE: 1, **{resource(t): 1 for t in self.targets}}, "command": self.command,
                "started": self.started, "device": self.facts, "output": self.output}


def join(head: str, targets: list[str], *, dry_run: bool = False, force: bool = False,
         extra: list[str] = (), token_file=None, insecure: bool = False) -> JoinResult:
    """Check that this device is each target and that the head requires the fleet token (unless
    `insecure`), then `ray start --address HEAD --resources ...` presenting the token. A loopback
    head keeps this node on 127.0.0.1 too (edgepack.fleet.raystart)."""
    from edgepack.targets import load_target

    if not targets:
        raise UsageError("no target to advertise", hint="pass --target NAME (as many as the device is)")
    address = head if ":" in head.rsplit("]", 1)[-1] else f"{head}:{DEFAULT_PORT}"
    facts = device_facts()
    for name in targets:
        problems = mismatches(load_target(name), facts)
        if problems and not force:
            raise EdgepackError(f"this device ({facts['hostname']}) is not target '{name}': {'; '.join(problems)}",
                                hint=f"join with the target it is (it matches: "
                                     f"{', '.join(matching_targets(facts)) or 'none'}), or pass --force")
    names = [load_target(n).name for n in targets]
    from edgepack.fleet import auth
    from edgepack.fleet.head import is_loopback, ray_command, run_ray

    host = address.rsplit(":", 1)[0]
    local = (["--node-ip-address", "127.0.0.1"]
             if is_loopback(host) and not any(a.startswith("--node-ip-address") for a in extra) else [])
    command = ray_command(["start", "--address", address,
                           "--resources", json.dumps({DEVICE_RESOURCE: 1, **{resource(t): 1 for t in names}}),
                           *local, "--disable-usage-stats", *extra])
    result = JoinResult(address, names, command, started=False, facts=facts)
    if dry_run:  # the device checked, the command said; the head is not contacted
        return result
    if auth.cluster_requires_token(address):
        auth.read_token(token_file)  # present and owner-only before Ray reads it
        env = auth.ray_env(token_file)
    elif insecure:
        logger.warning("joining %s, which has no authentication (--insecure): anyone who can reach it "
                       "can run code on this device", address)
        env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")}
        env["RAY_AUTH_MODE"] = "disabled"
    else:
        raise EdgepackError(f"the Ray cluster at {address} accepts clients without a token: anyone who can "
                            "reach it can run code on every device; refused",
                            hint="start the head with `edgepack fleet head` (token authentication), "
                                 "or pass --insecure to join it anyway")
    result.output = run_ray(command, env, f"ray start --address {address}",
                            hint="check that the head runs (`edgepack fleet head`) and is reachable, "
                                 "and that the token file is the head's")
    result.started = True
    return result
