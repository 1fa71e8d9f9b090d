"""This machine's CPU as it matters to INT8: its flags, whether its int8 dot product saturates, and
which shipped target fits it.

x86 CPUs without VNNI (AVX2, or AVX-512 without AVX512-VNNI) multiply u8 x s8 with VPMADDUBSW, which
adds each pair of products in int16 and saturates; VNNI (VPDPBUSD) sums in int32. ONNX Runtime's
u8 x s8 kernels therefore give different numbers on the two kinds of machine: `x86-cpu` avoids them.
"""
from __future__ import annotations

import functools
import platform
from pathlib import Path

INT8_FLAGS = ("avx512_vnni", "avx_vnni", "avx512f", "avx2", "asimddp", "i8mm")


@functools.lru_cache(maxsize=1)
def read_cpu_flags() -> frozenset[str] | None:
    """The flags /proc/cpuinfo lists (x86 `flags`, Arm `Features`); None where it cannot be read."""
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return None
    return frozenset(flag for line in text.splitlines() if line.split(":")[0].strip() in ("flags", "Features")
                     for flag in line.split(":", 1)[1].split())


def cpu_flags() -> frozenset[str]:
    """`read_cpu_flags()`, empty where /proc/cpuinfo cannot be read."""
    return read_cpu_flags() or frozenset()


def is_x86() -> bool:
    return platform.machine().lower() in ("x86_64", "amd64", "i686", "x86")


def has_vnni(flags: frozenset[str] | None = None) -> bool:
    flags = cpu_flags() if flags is None else flags
    return bool({"avx512_vnni", "avx_vnni"} & flags)


def int8_dot_saturates(flags: frozenset[str] | None = None) -> bool | None:
    """True on x86 without VNNI; False with VNNI or on Arm; None when the flags cannot be read."""
    flags = cpu_flags() if flags is None else flags
    if not is_x86():
        return False
    if not flags:
        return None
    return not has_vnni(flags)


def int8_summary(flags: frozenset[str] | None = None) -> str:
    """The INT8-relevant flags, for tables and messages: e.g. 'avx2 avx512f avx512_vnni'."""
    flags = cpu_flags() if flags is None else flags
    return " ".join(f for f in INT8_FLAGS if f in flags) or "unknown"


def host_target(flags: frozenset[str] | None = None) -> tuple[str, str]:
    """(target name, why) of the shipped CPU target that fits this machine."""
    flags = cpu_flags() if flags is None else flags
    machine = platform.machine().lower()
    if machine in ("aarch64", "arm64"):
        return "arm64-cpu", f"{machine} CPU"
    if not is_x86():
        return "x86-cpu", f"unknown machine '{machine}': x86-cpu is the safe choice"
    if has_vnni(flags):
        found = "avx512_vnni" if "avx512_vnni" in flags else "avx_vnni"
        return "x86-cpu-vnni", f"/proc/cpuinfo lists {found}: int8 dot products sum in int32"
    return "x86-cpu", ("no avx512_vnni / avx_vnni in /proc/cpuinfo: u8 x s8 dot products saturate in "
                       "int16, so x86-cpu uses 7-bit weights (exact U8S8)")
