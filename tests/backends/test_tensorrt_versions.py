"""builder_settings for TensorRT 8.6, 10.x and 11.x, for every precision x DLA x target.

Each TensorRT version is a fake `tensorrt` module exposing the enum members that version HAS
(from NVIDIA's Python API references and the 10.x -> 11.x migration guide, see docs/tensorrt.md):
the settings are applied to it through the same code the real build uses (create_network,
configure_builder), so a flag a version removed (BuilderFlag.FP16 in 11) fails the test.
"""
from __future__ import annotations

import itertools
import re
import types

import pytest

from edgepack.backends.tensorrt import builder_settings, configure_builder, create_network
from edgepack.backends.tensorrt_versions import dla_problem, version_tuple
from edgepack.errors import EdgepackError
from edgepack.targets import list_targets, load_target

_COMMON = ("DEBUG", "GPU_FALLBACK", "REFIT", "DISABLE_TIMING_CACHE", "TF32", "SPARSE_WEIGHTS", "SAFETY_SCOPE",
           "DIRECT_IO", "VERSION_COMPATIBLE", "EXCLUDE_LEAN_RUNTIME")
ENUMS = {
    "8.6.1": {
        "BuilderFlag": _COMMON + ("FP16", "INT8", "FP8", "STRICT_TYPES", "OBEY_PRECISION_CONSTRAINTS",
                                  "PREFER_PRECISION_CONSTRAINTS", "REJECT_EMPTY_ALGORITHMS"),
        "NetworkDefinitionCreationFlag": ("EXPLICIT_BATCH", "EXPLICIT_PRECISION"),
    },
    "10.3.0": {
        "BuilderFlag": _COMMON + ("FP16", "BF16", "INT8", "FP8", "INT4", "OBEY_PRECISION_CONSTRAINTS",
                                  "PREFER_PRECISION_CONSTRAINTS", "REJECT_EMPTY_ALGORITHMS",
                                  "ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN",
                                  "REFIT_IDENTICAL", "WEIGHT_STREAMING"),
        "NetworkDefinitionCreationFlag": ("EXPLICIT_BATCH", "STRONGLY_TYPED"),
    },
    # 11.x: FP16, INT8, BF16, FP8, INT4, FP4, OBEY/PREFER_PRECISION_CONSTRAINTS removed; every network
    # is strongly typed (STRONGLY_TYPED deprecated and ignored)
    "11.4.1": {
        "BuilderFlag": _COMMON + ("ERROR_ON_TIMING_CACHE_MISS", "DISABLE_COMPILATION_CACHE", "STRIP_PLAN",
                                  "REFIT_IDENTICAL", "WEIGHT_STREAMING", "REFIT_INDIVIDUAL", "STRICT_NANS",
                                  "MONITOR_MEMORY", "EDITABLE_TIMING_CACHE", "DISTRIBUTIVE_INDEPENDENCE"),
        "NetworkDefinitionCreationFlag": ("STRONGLY_TYPED", "PREFER_AOT_PYTHON_PLUGINS", "PREFER_JIT_PYTHON_PLUGINS"),
    },
}
VERSIONS = tuple(ENUMS)


def fake_trt(version: str) -> types.SimpleNamespace:
    enums = {name: types.SimpleNamespace(**{m: i for i, m in enumerate(members)})
             for name, members in ENUMS[version].items()}
    return types.SimpleNamespace(__version__=version, DeviceType=types.SimpleNamespace(GPU=0, DLA=1),
                                 MemoryPoolType=types.SimpleNamespace(WORKSPACE=0), **enums)


class FakeConfig:
    def __init__(self):
        self.flags, self.pools, self.default_device_type, self.DLA_core = [], {}, None, None

    def set_flag(self, flag):
        self.flags.append(flag)

    def set_memory_pool_limit(self, pool, size):
        self.pools[pool] = size


class FakeBuilder:
    def create_network(self, flags):
        self.network_flags = flags
        return object()


def apply(version, settings):
    """What the real build does with the settings, on the fake module of `version`."""
    trt, config, builder = fake_trt(version), FakeConfig(), FakeBuilder()
    create_network(trt, builder, settings)
    configure_builder(trt, config, settings)
    names = {v: k for k, v in vars(trt.BuilderFlag).items()}
    network = {k for k, v in vars(trt.NetworkDefinitionCreationFlag).items() if builder.network_flags >> v & 1}
    return [names[f] for f in config.flags], network, config


TENSORRT_TARGETS = [t for t in list_targets() if t.is_tensorrt]


def expected_error(target, version: str, precision: str, dla, qdq: bool) -> str | None:
    """The documented combinations that do not exist, as a table (docs/tensorrt.md)."""
    v, jetpack, cc = version_tuple(version), version_tuple(target.jetpack), version_tuple(target.compute_capability)
    if target.jetpack and v[0] >= 11 and jetpack < (7, 2, 2):
        return "JetPack"
    if cc >= (10, 0) and v[:2] < (10, 8):
        return "Blackwell"
    if dla is not None:
        if target.dla_cores == 0:
            return "no DLA cores"
        if precision == "fp32":
            return "not fp32"
        if v[0] >= 11 and (target.board != "agx-orin" or jetpack < (7, 2, 2) or v < (11, 4, 1)):
            return "DLA"
    if precision == "int8" and not qdq:
        return "TensorRT 11 has no implicit INT8" if v[0] >= 11 else "needs a quantized (QDQ) model"
    return None


CASES = [(t, v, p, dla, qdq) for t, v, p, dla, qdq in itertools.product(
    TENSORRT_TARGETS, VERSIONS, ("int8", "fp16", "fp32", "best"), (None, 0), (False, True))
    if not (qdq and p in ("fp16", "fp32"))]  # a QDQ model builds at int8 or best only (resolve_precision)


@pytest.mark.parametrize("target, version, precision, dla, qdq", CASES,
                         ids=[f"{t.name}-{v}-{p}-dla{d}-{'qdq' if q else 'float'}" for t, v, p, d, q in CASES])
def test_every_combination(target, version, precision, dla, qdq):
    want_error = expected_error(target, version, precision, dla, qdq)
    if want_error:
        with pytest.raises(EdgepackError, match=re.escape(want_error)):
            builder_settings(target, precision, dla=dla, model_has_qdq=qdq, tensorrt_version=version)
        return
    s = builder_settings(target, precision, dla=dla, model_has_qdq=qdq, tensorrt_version=version)
    flags, network, config = apply(version, s)  # a removed flag would raise AttributeError here
    major = version_tuple(version)[0]
    assert s["tensorrt_major"] == major and flags == s["flags"]
    int8 = precision == "int8" or (precision == "best" and qdq and "int8" in target.precisions)
    fp16 = precision == "fp16" or (precision == "best" and "fp16" in target.precisions) or \
        (precision == "int8" and dla is not None)
    if major >= 11:  # strongly typed: the ONNX model carries the precision
        assert s["strongly_typed"] and network == set() and not {"FP16", "INT8"} & set(flags)
        assert s["convert_to_fp16"] == fp16
    elif major == 10 and precision == "int8" and dla is None:
        assert s["strongly_typed"] and network == {"STRONGLY_TYPED"} and not {"FP16", "INT8"} & set(flags)
    else:
        assert not s["strongly_typed"] and not s["convert_to_fp16"]
        assert ("INT8" in flags) == int8 and ("FP16" in flags) == fp16
        assert "STRONGLY_TYPED" not in network
    assert ("EXPLICIT_BATCH" in network) == (major == 8)
    assert ("GPU_FALLBACK" in flags) == (dla is not None) and (config.DLA_core == dla)
    assert ("SPARSE_WEIGHTS" in flags) == target.sparsity
    assert config.pools[0] == target.workspace_mb * 2**20


def test_the_fake_tensorrt_11_really_lacks_the_weak_flags():
    s = builder_settings(load_target("jetson-orin-nano"), "fp16", tensorrt_version="10.3.0")
    assert s["flags"] == ["FP16", "SPARSE_WEIGHTS"]
    apply("10.3.0", s)
    with pytest.raises(AttributeError, match="FP16"):
        apply("11.4.1", s)  # the TensorRT 10 settings cannot be applied to TensorRT 11
    with pytest.raises(AttributeError, match="STRONGLY_TYPED"):
        apply("8.6.1", {**s, "network_flags": ["STRONGLY_TYPED"]})  # 8.6 has no strongly typed mode


def test_dla_per_version_and_board():
    agx7, thor, agx6, nx = (load_target(n) for n in
                            ("jetson-agx-orin-jp7", "jetson-agx-thor", "jetson-agx-orin", "jetson-orin-nx"))
    s = builder_settings(agx7, "fp16", dla=1)  # TensorRT 11.4.1 on JetPack 7.2.2: strongly typed DLA
    assert s["strongly_typed"] and s["convert_to_fp16"] and s["flags"] == ["SPARSE_WEIGHTS", "GPU_FALLBACK"]
    assert "DLA returns in 11.4.1" in dla_problem("11.3.0", board="agx-orin", jetpack="7.2.2", dla_cores=2)
    assert dla_problem("11.4.1", board="agx-orin", jetpack="7.2.2", dla_cores=2) is None
    assert "AGX Orin only" in dla_problem("11.4.1", board="orin-nx", jetpack="7.2.2", dla_cores=2)
    with pytest.raises(EdgepackError, match="has no DLA cores"):
        builder_settings(thor, "fp16", dla=0)
    with pytest.raises(EdgepackError, match="10.7 was the last"):
        builder_settings(nx, "fp16", dla=0, tensorrt_version="10.8.0")
    with pytest.raises(EdgepackError, match="needs JetPack 7.2.2 or later.*JetPack 6.1"):
        builder_settings(agx6, "fp16", tensorrt_version="11.4.1")
    with pytest.raises(EdgepackError, match="does not support JetPack"):
        builder_settings(agx7, "fp16", tensorrt_version="11.4.0")
    assert builder_settings(agx6, "int8", dla=0, model_has_qdq=True)["flags"][:2] == ["INT8", "FP16"]
    assert builder_settings(load_target("nvidia-gpu"), "fp16", tensorrt_version="11.0.0")["convert_to_fp16"]


def test_unsupported_tensorrt_version():
    with pytest.raises(EdgepackError, match="TensorRT 7.2.3 is not supported"):
        builder_settings(load_target("jetson-orin-nano"), "fp16", tensorrt_version="7.2.3")
