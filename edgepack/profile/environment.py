"""What the timings were taken on: CPU, cores, affinity, threads, OS, versions, Jetson clocks.

Everything is read from files and commands that exist on Linux and Jetson; anything unreadable
is recorded as null rather than failing the profile.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import os
import platform
import shutil
import subprocess
from pathlib import Path


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def cpu_model() -> str | None:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            key, _, value = line.partition(":")
            if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def affinity() -> list[int] | None:
    try:
        return sorted(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return None


def set_affinity(cpus: list[int]) -> None:
    os.sched_setaffinity(0, cpus)


def _version(package: str) -> str | None:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return None


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def jetson_power() -> dict | None:
    """nvpmodel's power mode and the CPU/GPU/EMC clocks, where this is a Jetson and they are readable."""
    if not Path("/etc/nv_tegra_release").exists() and not shutil.which("nvpmodel"):
        return None
    info: dict = {"l4t": _read("/etc/nv_tegra_release")}
    if shutil.which("nvpmodel"):
        try:
            out = subprocess.run(["nvpmodel", "-q"], capture_output=True, text=True, timeout=5).stdout
            info["power_mode"] = " ".join(out.split()) or None
        except (OSError, subprocess.SubprocessError):
            info["power_mode"] = None
    info["gpu_freq_hz"] = next((v for v in (_read(p) for p in sorted(glob.glob("/sys/devices/gpu.0/devfreq/*/cur_freq"))
                                            + sorted(glob.glob("/sys/class/devfreq/*gpu*/cur_freq"))) if v), None)
    info["emc_freq_hz"] = _read("/sys/kernel/debug/bpmp/debug/clk/emc/rate")
    return info


def cpu_freqs_khz() -> list[int] | None:
    values = [_read(p) for p in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"))]
    values = [int(v) for v in values if v and v.isdigit()]
    return values or None


# the instruction-set flags that change what ONNX Runtime's kernels do (INT8 above all)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp",
               "i8mm", "sve")


def cpu_flags() -> list[str] | None:
    """Of SPEED_FLAGS, those /proc/cpuinfo lists (x86 `flags`, Arm `Features`); None where unreadable."""
    text = _read("/proc/cpuinfo")
    if text is None:
        return None
    present: set[str] = set()
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("flags", "Features"):
            present.update(value.split())
    return [f for f in SPEED_FLAGS if f in present]


def environment(*, threads: int | None = None) -> dict:
    """A dict recorded with every profile, so two results can be told apart (or not)."""
    try:
        load = list(os.getloadavg())
    except OSError:
        load = None
    from edgepack import __version__

    return {
        "cpu_model": cpu_model(),
        "cpu_count": os.cpu_count(),
        "cpu_flags": cpu_flags(),
        "affinity": affinity(),
        "threads": threads,
        "load_average": load,
        "cpu_freq_khz": cpu_freqs_khz(),
        "governor": _read("/sys/devices/system/cpu/cpu0/cpufreq/scaling_governor"),
        "os": platform.platform(),
        "machine": platform.machine(),
        "hostname": platform.node(),
        "versions": {
            "python": platform.python_version(),
            "edgepack": __version__,
            "onnxruntime": _version("onnxruntime") or _version("onnxruntime-gpu"),
            "numpy": _version("numpy"),
            "tensorrt": _version("tensorrt"),
        },
        "jetson": jetson_power(),
    }
