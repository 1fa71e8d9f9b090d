"""Hardware targets: the schema of targets/*.toml, validated on load.

A target decides the QDQ policy, the builder settings and the profiler. Adding a device is
adding a file; a user can also pass the path of their own file wherever a target is asked for.
"""
from __future__ import annotations

import dataclasses
import re
import sys
from pathlib import Path
from typing import Any

from edgepack.errors import EdgepackError, first_line
from edgepack.resources import data_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BACKENDS = ("tensorrt", "onnxruntime")
PRECISIONS = ("int8", "fp16", "fp32", "int4", "fp8")  # int4: weight-only; fp8: E4M3 Q/DQ
INT4_ENCODINGS = ("dequantize", "matmulnbits")
TENSORRT_INT4_BLOCKS = (64, 128)         # TensorRT's blocked INT4 weights
ORT_INT4_BLOCKS = (16, 32, 64, 128, 256)  # MatMulNBits: a power of two >= 16
ACTIVATION_SCHEMES = ("int8-symmetric-per-tensor", "uint8-asymmetric-per-tensor",
                      "int8-asymmetric-per-tensor", "uint7-asymmetric-per-tensor")
DEVICE_MATCHES = ("exact", "minimum")
MAX_THREADS = 1024  # more is a typo; ORT would try to start them all
WEIGHT_SCHEMES = ("int8-symmetric-per-channel", "int8-symmetric-per-tensor",
                  "int7-symmetric-per-channel", "int7-symmetric-per-tensor",
                  "uint8-symmetric-per-channel", "uint8-symmetric-per-tensor")


@dataclasses.dataclass(frozen=True)
class QDQPolicy:
    """How a target wants tensors quantized. TensorRT: symmetric INT8 only, zero point 0."""

    activations: str = "int8-symmetric-per-tensor"
    weights: str = "int8-symmetric-per-channel"

    @property
    def activation_dtype(self) -> str:
        """Storage type; "uint7" activations are stored as uint8."""
        kind = self.activations.split("-")[0]
        return "uint8" if kind == "uint7" else kind

    @property
    def activation_qmax(self) -> int:
        """Largest code of an unsigned activation: 255, or 127 for "uint7" (7-bit activations: a pair
        of u7 x s8 products, 2 * 127 * 127 = 32258, fits the int16 that AVX2 kernels add in, so
        8-bit weights stay exact without VNNI)."""
        return 127 if self.activations.startswith("uint7") else 255

    @property
    def activation_symmetric(self) -> bool:
        return "-symmetric" in self.activations

    @property
    def weight_per_channel(self) -> bool:
        return self.weights.endswith("per-channel")

    @property
    def weight_qmax(self) -> int:
        """Largest |q| of a weight: 127 for int8, 63 for int7 ("reduced range": stored as int8, but
        a pair of u8 x s7 products, 2 * 255 * 63 = 32130, fits the int16 that AVX2 kernels add in)."""
        return 63 if self.weights.startswith("int7") else 127

    @property
    def weight_dtype(self) -> str:
        """"uint8": weights stored as q + 128 with zero point 128, which ORT runs with its U8U8
        kernels (16-bit products summed in int32: exact on every x86 CPU, 8-bit weights kept)."""
        return "uint8" if self.weights.startswith("uint8") else "int8"


@dataclasses.dataclass(frozen=True)
class Target:
    name: str
    description: str
    backend: str
    precisions: tuple[str, ...]
    qdq: QDQPolicy
    path: Path
    compute_capability: str | None = None
    dla_cores: int = 0
    sparsity: bool = False
    tensorrt_version: str | None = None
    jetpack: str | None = None
    board: str | None = None  # e.g. "agx-orin", "agx-thor": DLA rules depend on the board
    memory_gb: float | None = None
    workspace_mb: int = 1024
    cpu_isa: str | None = None
    execution_providers: tuple[str, ...] = ("CPUExecutionProvider",)
    threads: int = 0  # 0: let the runtime choose
    # The CPU's int8 dot product adds pairs of u8 x s8 products in int16 and saturates (x86 with
    # AVX2 or AVX-512 but no VNNI: VPMADDUBSW). Full-range weights then give wrong results.
    int8_saturates: bool = False
    # the range method `quantize` uses unless told otherwise: chosen per target by measurement
    calibration_method: str = "entropy"
    # "exact": an engine is built on this compute capability only (a Jetson module);
    # "minimum": any GPU at or above it (a generic desktop/server target)
    device_match: str = "exact"
    # INT4 weight-only: legal block sizes (along K), encoding (TensorRT: blocked DequantizeLinear;
    # ONNX Runtime: com.microsoft.MatMulNBits) and, for ONNX Runtime, symmetric codes or not
    int4_block_sizes: tuple[int, ...] = ORT_INT4_BLOCKS
    int4_encoding: str = "matmulnbits"
    int4_symmetric: bool = False
    # the newest ONNX opset the target's runtime reads (TensorRT: its parser's, from the version)
    onnx_opset_max: int | None = None

    @property
    def is_tensorrt(self) -> bool:
        return self.backend == "tensorrt"

    @property
    def fp8(self) -> bool:
        return "fp8" in self.precisions

    def int4_problem(self) -> str | None:
        """Why this target cannot take INT4 weights, or None."""
        if "int4" in self.precisions:
            return None
        if self.is_tensorrt and self.onnx_opset_max is not None and self.onnx_opset_max < 21:
            return (f"INT4 DequantizeLinear(block_size) needs opset 21; the ONNX parser of TensorRT "
                    f"{self.tensorrt_version} reads opsets up to {self.onnx_opset_max}")
        return f"'int4' is not among the precisions of {self.name}"

    @property
    def tensorrt(self):
        """The TensorRTFeatures of the TensorRT this target assumes (None for other backends)."""
        if not self.is_tensorrt or not self.tensorrt_version:
            return None
        from edgepack.backends.tensorrt_versions import features

        return features(self.tensorrt_version)

    @property
    def tensorrt_major(self) -> int | None:
        return None if self.tensorrt is None else self.tensorrt.major

    def allows(self) -> dict[str, Any]:
        """What this target's TensorRT allows: typing, implicit INT8 calibration, DLA."""
        if self.tensorrt is None:
            return {}
        from edgepack.backends.tensorrt_versions import dla_problem

        allows = self.tensorrt.allows()
        allows["dla"] = dla_problem(self.tensorrt_version, board=self.board, jetpack=self.jetpack,
                                    dla_cores=self.dla_cores) is None
        return allows

    def summary(self) -> dict[str, Any]:
        data = dataclasses.asdict(self)
        data["path"] = str(self.path)
        if self.is_tensorrt:
            data["tensorrt_major"] = self.tensorrt_major
            data["allows"] = self.allows()
        return data


# key -> (type(s), required). Nested tables are handled by name below.
_FIELDS: dict[str, tuple[tuple[type, ...], bool]] = {
    "name": ((str,), True),
    "description": ((str,), True),
    "backend": ((str,), True),
    "precisions": ((list,), True),
    "compute_capability": ((str,), False),
    "dla_cores": ((int,), False),
    "sparsity": ((bool,), False),
    "tensorrt_version": ((str,), False),
    "jetpack": ((str,), False),
    "board": ((str,), False),
    "memory_gb": ((int, float), False),
    "workspace_mb": ((int,), False),
    "cpu_isa": ((str,), False),
    "execution_providers": ((list,), False),
    "threads": ((int,), False),
    "int8_saturates": ((bool,), False),
    "calibration_method": ((str,), False),
    "device_match": ((str,), False),
    "int4_block_sizes": ((list,), False),
    "int4_encoding": ((str,), False),
    "int4_symmetric": ((bool,), False),
    "onnx_opset_max": ((int,), False),
    "qdq": ((dict,), True),
}


def target_dir() -> Path:
    return data_dir("targets")


def list_targets() -> list[Target]:
    return [load_target(p) for p in sorted(target_dir().glob("*.toml"))]


def is_target_name(text: str) -> bool:
    """A plain name (of a file in targets/), not a path: no '/', '\\' or '..'."""
    return re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", text) is not None and ".." not in text


HOST = "host"  # the CPU target of this machine, chosen from /proc/cpuinfo


def load_target(name_or_path: str | Path | Target) -> Target:
    """A target by name (a file in targets/) or by the path of a TOML file. The name "host" is the
    shipped CPU target that fits this machine (`edgepack targets --host`)."""
    if isinstance(name_or_path, Target):
        return name_or_path
    text = str(name_or_path)
    if text == HOST and not Path(text).is_file():
        from edgepack.cpu import host_target

        text = host_target()[0]
    path = Path(text)
    if not (text.endswith(".toml") or path.is_file()):
        if not is_target_name(text):  # "../x", "a/b": a name may not reach outside targets/
            raise EdgepackError(f"target '{text}' is neither a target name nor a .toml file",
                                hint="a name is letters, digits, '.', '_' and '-' (see `edgepack targets`)")
        path = target_dir() / f"{text}.toml"
        if not path.is_file():
            import difflib

            names = [p.stem for p in sorted(target_dir().glob("*.toml"))]
            near = difflib.get_close_matches(text, names, n=3, cutoff=0.5)
            if near:
                raise EdgepackError(f"unknown target '{text}'",
                                    hint=f"did you mean {' or '.join(near)}? (all: {', '.join(names)}, "
                                         "or a .toml path; `edgepack targets` lists them)")
            raise EdgepackError(f"unknown target '{text}'",
                                hint=f"use one of: {', '.join(names)}, or a .toml path")
    if not path.is_file():
        raise EdgepackError(f"target file not found: {path}")
    try:
        raw = tomllib.loads(path.read_text(encoding="utf-8"))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as exc:
        raise EdgepackError(f"{path}: not valid TOML ({type(exc).__name__}: {first_line(exc)})",
                            hint="a target is a UTF-8 TOML file; see `edgepack targets`") from None
    except OSError as exc:
        raise EdgepackError(f"{path}: cannot read the target file ({exc.strerror})") from None
    return _validate(raw, path)


def _validate_tensorrt(raw: dict[str, Any], fail) -> None:
    """The TensorRT version, JetPack and board of a tensorrt target agree with what that TensorRT allows."""
    from edgepack.backends import tensorrt_versions as tv

    version = raw.get("tensorrt_version")
    if version is None or not re.fullmatch(r"\d+\.\d+(\.\d+)*", version):
        raise fail("tensorrt_version", "must be like \"10.3\" or \"11.4.1\" for a tensorrt target")
    try:
        tv.features(version)
    except ValueError as exc:
        raise fail("tensorrt_version", str(exc)) from None
    jetpack = raw.get("jetpack")
    if jetpack is not None and not re.fullmatch(r"\d+\.\d+(\.\d+)*", jetpack):
        raise fail("jetpack", f"must be like \"6.1\" or \"7.2.2\", got {jetpack!r}")
    board = raw.get("board")
    if board is not None and not re.fullmatch(r"[a-z0-9][a-z0-9-]*", board):
        raise fail("board", f"must be lowercase letters, digits and dashes (e.g. \"agx-orin\"), got {board!r}")
    problem = tv.platform_problem(version, jetpack=jetpack, compute_capability=None)
    if problem:
        raise fail("jetpack", problem, "use a TensorRT 10.x version for JetPack 6, or JetPack 7.2.2+ for TensorRT 11")
    problem = tv.platform_problem(version, jetpack=None, compute_capability=raw["compute_capability"])
    if problem:
        raise fail("tensorrt_version", problem)
    if raw.get("dla_cores", 0) > 0:
        problem = tv.dla_problem(version, board=board, jetpack=jetpack, dla_cores=raw["dla_cores"])
        if problem:
            raise fail("dla_cores", problem, "set dla_cores = 0 for this TensorRT / board")


def _validate(raw: dict[str, Any], path: Path) -> Target:
    def fail(key: str, why: str, hint: str | None = None) -> EdgepackError:
        return EdgepackError(f"{path}: key '{key}' {why}", hint=hint)

    for key, value in raw.items():
        if key not in _FIELDS:
            raise fail(key, "is not a target setting", f"known keys: {', '.join(_FIELDS)}")
        types, _ = _FIELDS[key]
        if isinstance(value, bool) and bool not in types or not isinstance(value, types):
            raise fail(key, f"must be {' or '.join(t.__name__ for t in types)}, got {value!r}")
    for key, (_, required) in _FIELDS.items():
        if required and key not in raw:
            raise fail(key, "is missing")
    if raw["backend"] not in BACKENDS:
        raise fail("backend", f"must be one of {', '.join(BACKENDS)}, got {raw['backend']!r}")
    bad = [p for p in raw["precisions"] if p not in PRECISIONS]
    if bad or not raw["precisions"]:
        raise fail("precisions", f"must be a non-empty list of {', '.join(PRECISIONS)}; got {bad or '[]'}")
    if raw["backend"] == "tensorrt":
        cc = raw.get("compute_capability")
        if cc is None or not re.fullmatch(r"\d+\.\d+", cc):
            raise fail("compute_capability", "must be like \"8.7\" for a tensorrt target")
        _validate_tensorrt(raw, fail)
    elif raw.get("dla_cores", 0) or raw.get("sparsity", False):
        raise fail("dla_cores" if raw.get("dla_cores") else "sparsity", "applies to tensorrt targets only")
    else:
        for key in ("tensorrt_version", "jetpack", "board"):
            if key in raw:
                raise fail(key, "applies to tensorrt targets only")
    if raw.get("device_match", "exact") not in DEVICE_MATCHES:
        raise fail("device_match", f"must be one of {', '.join(DEVICE_MATCHES)}, got {raw['device_match']!r}")
    for key in ("dla_cores", "workspace_mb", "threads"):
        if raw.get(key, 0) < 0:
            raise fail(key, "must not be negative")
    if raw.get("threads", 0) > MAX_THREADS:
        raise fail("threads", f"must be at most {MAX_THREADS}, got {raw['threads']}",
                   hint="0 lets the runtime use one thread per core")
    for key in ("precisions", "execution_providers"):
        bad = [v for v in raw.get(key, []) if not isinstance(v, str)]
        if bad:
            raise fail(key, f"must be a list of strings, got {bad[0]!r}")
    for key, value in raw["qdq"].items():
        if not isinstance(value, str):
            raise fail(f"qdq.{key}", f"must be a string, got {value!r}")
    qdq = raw["qdq"]
    for key in qdq:
        if key not in ("activations", "weights"):
            raise fail(f"qdq.{key}", "is not a QDQ setting", "known keys: activations, weights")
    policy = QDQPolicy(**qdq)
    if policy.activations not in ACTIVATION_SCHEMES:
        raise fail("qdq.activations", f"must be one of {', '.join(ACTIVATION_SCHEMES)}")
    if policy.weights not in WEIGHT_SCHEMES:
        raise fail("qdq.weights", f"must be one of {', '.join(WEIGHT_SCHEMES)}")
    from edgepack.calib.observers import METHODS

    if raw.get("calibration_method", "entropy") not in METHODS:
        raise fail("calibration_method", f"must be one of {', '.join(METHODS)}")
    if (raw.get("int8_saturates") and policy.weight_qmax > 63 and policy.weight_dtype == "int8"
            and policy.activation_qmax > 127):
        raise fail("qdq.weights", "must be an int7 or uint8 scheme where int8_saturates = true: int8 "
                   "weights overflow the CPU's 16-bit pair sums",
                   hint=f"use {policy.weights.replace('int8', 'uint8')} or {policy.weights.replace('int8', 'int7')}")
    if raw["backend"] == "tensorrt" and policy.weight_dtype != "int8":
        raise fail("qdq.weights", "must be an int8 scheme: TensorRT takes int8 weights with zero point 0")
    if raw["backend"] == "tensorrt" and raw.get("int8_saturates"):
        raise fail("int8_saturates", "applies to onnxruntime targets only")
    if raw["backend"] == "tensorrt" and policy.activations != "int8-symmetric-per-tensor":
        raise fail("qdq.activations", "must be int8-symmetric-per-tensor: TensorRT takes zero point 0 only")
    fields = {k: v for k, v in raw.items() if k != "qdq"}
    fields["precisions"] = tuple(fields["precisions"])
    _validate_low_precision(raw, fields, fail)
    if "execution_providers" in fields:
        fields["execution_providers"] = tuple(fields["execution_providers"])
    if "memory_gb" in fields:
        fields["memory_gb"] = float(fields["memory_gb"])
    return Target(**fields, qdq=policy, path=path)


def _validate_low_precision(raw: dict[str, Any], fields: dict[str, Any], fail) -> None:
    """INT4 / FP8 and the opset window: what the target's runtime can read, filled in from the
    TensorRT version where the file does not say."""
    trt = raw["backend"] == "tensorrt"
    if trt:
        from edgepack.backends import tensorrt_versions as tv

        parser_max = tv.max_onnx_opset(raw["tensorrt_version"])
        if raw.get("onnx_opset_max", parser_max) > parser_max:
            raise fail("onnx_opset_max", f"is {raw['onnx_opset_max']}, but the ONNX parser of TensorRT "
                       f"{raw['tensorrt_version']} reads opsets up to {parser_max}")
        fields["onnx_opset_max"] = raw.get("onnx_opset_max", parser_max)
    blocks = raw.get("int4_block_sizes", list(TENSORRT_INT4_BLOCKS if trt else ORT_INT4_BLOCKS))
    legal = TENSORRT_INT4_BLOCKS if trt else ORT_INT4_BLOCKS
    if not blocks or any(not isinstance(b, int) or b not in legal for b in blocks):
        raise fail("int4_block_sizes", f"must be a non-empty list of {', '.join(map(str, legal))} for a "
                   f"{raw['backend']} target, got {blocks!r}")
    fields["int4_block_sizes"] = tuple(sorted(blocks))
    encoding = raw.get("int4_encoding", "dequantize" if trt else "matmulnbits")
    if encoding not in INT4_ENCODINGS or (trt and encoding != "dequantize"):
        raise fail("int4_encoding", f"must be {'dequantize' if trt else ' or '.join(INT4_ENCODINGS)} "
                   f"for a {raw['backend']} target, got {encoding!r}")
    fields["int4_encoding"] = encoding
    if trt and raw.get("int4_symmetric") is False:
        raise fail("int4_symmetric", "must be true for a tensorrt target: TensorRT takes zero point 0 only")
    opset_max = fields.get("onnx_opset_max")
    if "int4" in raw["precisions"] and encoding == "dequantize" and opset_max is not None and opset_max < 21:
        raise fail("precisions", f"has int4, but INT4 DequantizeLinear(block_size) needs opset 21 and "
                   f"this runtime reads opsets up to {opset_max}", "remove int4 from precisions")
    if "fp8" in raw["precisions"]:
        if not trt:
            raise fail("precisions", "has fp8, which only TensorRT targets run (FP8 tensor cores)")
        cc = tuple(int(x) for x in raw["compute_capability"].split("."))
        if cc < (8, 9):
            raise fail("precisions", f"has fp8, but compute capability {raw['compute_capability']} has no FP8 "
                       "(it needs 8.9 or later: Ada, Hopper, Blackwell, Thor)", "remove fp8 from precisions")
        if opset_max is not None and opset_max < 19:
            raise fail("precisions", f"has fp8, which needs opset 19; TensorRT {raw['tensorrt_version']} "
                       f"reads up to {opset_max}")
