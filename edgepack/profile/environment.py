"""What the timings were taken on: CPU, cores, affinity, threads, OS, versions, Jetson clocks,
and the device's state before and after the timed runs (load, temperatures, clocks).

Everything is read from files and commands that exist on Linux and Jetson; a value that cannot
be read is absent (or null), never guessed: no thermal zones means no `thermal_c`, no
`nvpmodel` means no `power_mode`, a `jetson_clocks --show` that fails (it needs root) means no
`jetson_clocks`.
"""
from __future__ import annotations

import glob
import hashlib
import importlib.metadata
import os
import platform
import re
import shutil
import subprocess
from pathlib import Path


def sha256_of(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


def weights_sha256(path: str | os.PathLike) -> dict[str, str]:
    """{location: sha256} of the external data files an ONNX model reads ({} when its weights are
    inside it, or for an engine / .ort file): with the model's own sha256 this says whether two
    artifacts are the same. A location outside the model's folder is recorded as unreadable."""
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        return {}
    try:
        import onnx
        from onnx.external_data_helper import _get_all_tensors, uses_external_data

        model = onnx.load(str(path), load_external_data=False)
    except Exception:  # not ONNX protobuf: the profiler reports that itself
        return {}
    locations = sorted({entry.value for tensor in _get_all_tensors(model) if uses_external_data(tensor)
                        for entry in tensor.external_data if entry.key == "location"})
    out = {}
    folder = path.parent.resolve()
    for location in locations:
        file = (folder / location).resolve()
        inside = file.is_relative_to(folder) and file.is_file()
        try:
            out[location] = sha256_of(file) if inside else "unreadable"
        except OSError:
            out[location] = "unreadable"
    return out


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
    """nvpmodel's power mode, whether jetson_clocks pins the clocks, and the GPU/EMC clocks, where
    this is a Jetson and they are readable (each field only where its source answered)."""
    if not Path("/etc/nv_tegra_release").exists() and not shutil.which("nvpmodel"):
        return None
    info: dict = {"l4t": _read("/etc/nv_tegra_release"), "model": _read("/proc/device-tree/model")}
    if shutil.which("nvpmodel"):
        out = _run(["nvpmodel", "-q"])
        info["power_mode"] = None
        if out:
            lines = [line.strip() for line in out.splitlines() if line.strip()]
            named = [line.split(":", 1)[1].strip() for line in lines if line.startswith("NV Power Mode")]
            info["power_mode"] = named[0] if named else " ".join(lines) or None
            numbers = [line for line in lines if line.isdigit()]
            if numbers:
                info["power_mode_id"] = int(numbers[0])
    if shutil.which("jetson_clocks"):
        out = _run(["jetson_clocks", "--show"])
        if out:  # with the clocks pinned, every CPU shows MinFreq == MaxFreq == CurrentFreq
            cpus = re.findall(r"cpu\d+: .*?MinFreq=(\d+) MaxFreq=(\d+) CurrentFreq=(\d+)", out)
            if cpus:
                info["jetson_clocks"] = all(lo == hi == cur for lo, hi, cur in cpus)
    info["gpu_freq_hz"] = next((v for v in (_read(p) for p in sorted(glob.glob("/sys/devices/gpu.0/devfreq/*/cur_freq"))
                                            + sorted(glob.glob("/sys/class/devfreq/*gpu*/cur_freq"))) if v), None)
    info["emc_freq_hz"] = _read("/sys/kernel/debug/bpmp/debug/clk/emc/rate")
    return {k: v for k, v in info.items() if v is not None or k in ("power_mode",)}


def _run(argv: list[str]) -> str | None:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout if done.returncode == 0 else None


def thermal_c() -> dict[str, float] | None:
    """Temperatures of /sys/class/thermal zones in degrees C, keyed by zone type (zone name if
    two share a type); None where the machine exposes none."""
    temps: dict[str, float] = {}
    for zone in sorted(glob.glob("/sys/class/thermal/thermal_zone*")):
        raw = _read(f"{zone}/temp")
        if not raw or not raw.lstrip("-").isdigit():
            continue
        name = _read(f"{zone}/type") or Path(zone).name
        key = name if name not in temps else f"{name}.{Path(zone).name}"
        temps[key] = int(raw) / 1000.0
    return temps or None


def load_average() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def device_state() -> dict:
    """What moves during a run: load, temperatures, CPU clocks (the readable ones only)."""
    state = {"load_average": load_average(), "thermal_c": thermal_c(), "cpu_freq_khz": cpu_freqs_khz()}
    return {k: v for k, v in state.items() if v is not None}


def power_mode(environment: dict | None) -> dict:
    """The settings that change a device's speed: governor, nvpmodel mode, jetson_clocks (those recorded)."""
    if not isinstance(environment, dict):
        return {}
    jetson = environment.get("jetson") or {}
    mode = {"governor": environment.get("governor"), "nvpmodel": jetson.get("power_mode"),
            "jetson_clocks": jetson.get("jetson_clocks")}
    return {k: v for k, v in mode.items() if v is not None}


def device_kind(environment: dict | None) -> str | None:
    """What kind of device a result was taken on: the Jetson module, else CPU model and machine."""
    if not isinstance(environment, dict):
        return None
    jetson = environment.get("jetson") or {}
    if jetson.get("model"):
        return str(jetson["model"])
    cpu, machine = environment.get("cpu_model"), environment.get("machine")
    return " / ".join(str(x) for x in (cpu, machine) if x) or None


def cpu_freqs_khz() -> list[int] | None:
    values = [_read(p) for p in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_cur_freq"))]
    values = [int(v) for v in values if v and v.isdigit()]
    return values or None


# the instruction-set flags that change what ONNX Runtime's kernels do (INT8 above all)
SPEED_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "amx_int8", "asimd", "asimddp",
               "i8mm", "sve")


def cpu_flags() -> list[str] | None:
    """Of SPEED_FLAGS, those /proc/cpuinfo lists (x86 `flags`, Arm `Features`); None where unreadable."""
    from edgepack.cpu import read_cpu_flags

    present = read_cpu_flags()
    return None if present is None else [f for f in SPEED_FLAGS if f in present]


def environment(*, threads: int | None = None, before: dict | None = None) -> dict:
    """A dict recorded with every profile, so two results can be told apart (or not).
    `before`: the device_state() taken before the timed runs; the state now is `state.after`."""
    load = load_average()
    from edgepack import __version__

    after = device_state()
    governors = {g for g in (_read(p) for p in glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_governor")) if g}
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
        "governors": sorted(governors) or None,
        "cpu_freq_limits_khz": _freq_limits(),
        "state": {"before": before, "after": after} if before is not None else {"after": after},
    }


def _freq_limits() -> dict | None:
    low = [_read(p) for p in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_min_freq"))]
    high = [_read(p) for p in sorted(glob.glob("/sys/devices/system/cpu/cpu[0-9]*/cpufreq/scaling_max_freq"))]
    low = [int(v) for v in low if v and v.isdigit()]
    high = [int(v) for v in high if v and v.isdigit()]
    return {"min": low, "max": high} if low and high else None
