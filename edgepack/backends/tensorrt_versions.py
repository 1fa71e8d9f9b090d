"""What each TensorRT version allows, as data: typing, precision flags, calibrators, DLA, boards.

Pure: no TensorRT import, so targets are checked against these rules on load, on any machine.
Sources (NVIDIA's TensorRT documentation; the citations are in docs/tensorrt.md):

  8.x    weakly typed (BuilderFlag.FP16 / INT8), IInt8Calibrator, networks need EXPLICIT_BATCH;
         no STRONGLY_TYPED flag. DLA on Xavier / Orin.
  10.x   EXPLICIT_BATCH deprecated and implied; NetworkDefinitionCreationFlag.STRONGLY_TYPED is
         opt-in; the weak flags and the calibrators still exist (calibrators deprecated in 10.1).
         DLA builds stay weakly typed; 10.7 is the last 10.x with DLA. Blackwell needs >= 10.8.
  11.x   every network is strongly typed (the STRONGLY_TYPED flag is deprecated and ignored);
         BuilderFlag.FP16/INT8/BF16/FP8/INT4/FP4 and OBEY/PREFER_PRECISION_CONSTRAINTS and
         IBuilderConfig.int8_calibrator are removed: the ONNX model carries its precision
         (Q/DQ for INT8, float16 tensors for FP16). JetPack from 11.4.1 on, JetPack 7.2.2+ only
         (Jetson AGX Orin, Jetson Thor); DLA from 11.4.1, strongly typed, on AGX Orin only.
"""
from __future__ import annotations

import dataclasses
import re

SUPPORTED_MAJORS = (8, 10, 11)
LAST_DLA_10 = (10, 7)           # "TensorRT 10.7 was the last 10.x release that supported DLA"
FIRST_DLA_11 = (11, 4, 1)       # DLA restored on Jetson AGX Orin, JetPack 7.2.2+
FIRST_JETPACK_11 = (11, 4, 1)   # 11.0 .. 11.4.0 do not support JetPack
MIN_JETPACK_11 = (7, 2, 2)      # JetPack 6.x stays on TensorRT 10.x
DLA_BOARDS_11 = ("agx-orin",)   # Thor has no DLA; Orin NX / Nano are not listed for 11.4.1
FIRST_BLACKWELL = (10, 8)       # compute capability >= 10.0
FP8_MIN_CC = (8, 9)             # FP8 tensor cores: Ada (8.9), Hopper (9.0), Blackwell (10.x, 11.0 Thor)
# The newest ONNX opset each TensorRT's ONNX parser reads (onnx-tensorrt docs/operators.md of that
# release: 8.5/8.6 "up to Opset 17", 9.2 "up to Opset 19", 10.0 "opset 9 to opset 20", 10.15 and
# 11.2 "opset 9 to opset 24"; the TensorRT 11.x ONNX opset guide: maximum opset 25 (11.5)).
# A version between two known points gets the lower one: a model the parser may read is refused
# rather than one it cannot read accepted.
ONNX_OPSET_MAX = {(8, 0): 13, (8, 5): 17, (9, 2): 19, (10, 0): 20, (10, 15): 24, (11, 0): 24, (11, 5): 25}
ONNX_OPSET_MIN = 9


def version_tuple(text: str | None) -> tuple[int, ...]:
    """'10.3.0.26' -> (10, 3, 0); '' or None -> ()."""
    if not text:
        return ()
    parts = []
    for part in str(text).split(".")[:3]:
        match = re.match(r"\d+", part)
        if match is None:
            break
        parts.append(int(match.group()))
    return tuple(parts)


def _fmt(version: tuple[int, ...]) -> str:
    return ".".join(map(str, version))


@dataclasses.dataclass(frozen=True)
class TensorRTFeatures:
    """What one TensorRT version offers the builder."""

    version: tuple[int, ...]

    @property
    def major(self) -> int:
        return self.version[0]

    @property
    def weak_typing(self) -> bool:
        """BuilderFlag.FP16 / INT8 exist: the builder may lower precision itself."""
        return self.major < 11

    @property
    def strongly_typed_flag(self) -> bool:
        """NetworkDefinitionCreationFlag.STRONGLY_TYPED must be asked for (10.x); 11 always is."""
        return self.major == 10

    @property
    def always_strongly_typed(self) -> bool:
        return self.major >= 11

    @property
    def explicit_batch_flag(self) -> bool:
        return self.major < 10

    @property
    def int8_calibrator(self) -> bool:
        """Implicit quantization (IInt8Calibrator / calibration caches)."""
        return self.major < 11

    @property
    def dla(self) -> bool:
        """Whether this release has DLA at all (on some board)."""
        if self.major == 10:
            return self.version[:2] <= LAST_DLA_10
        if self.major >= 11:
            return self.version >= FIRST_DLA_11
        return True

    def allows(self) -> dict[str, bool]:
        return {"weak_typing": self.weak_typing, "strongly_typed": self.major >= 10,
                "int8_calibrator": self.int8_calibrator, "dla": self.dla}


def features(version: str | tuple[int, ...]) -> TensorRTFeatures:
    """The features of a TensorRT version; ValueError for one edgepack does not support."""
    parsed = version if isinstance(version, tuple) else version_tuple(version)
    if not parsed or parsed[0] not in SUPPORTED_MAJORS:
        raise ValueError(f"TensorRT {version or '?'} is not supported (edgepack builds with TensorRT "
                         f"{', '.join(f'{m}.x' for m in SUPPORTED_MAJORS)})")
    return TensorRTFeatures(parsed + (0,) * (3 - len(parsed)))


def max_onnx_opset(version: str | tuple[int, ...]) -> int:
    """The newest ONNX opset the ONNX parser of this TensorRT reads (ONNX_OPSET_MAX)."""
    v = features(version).version
    known = [k for k in sorted(ONNX_OPSET_MAX) if k <= v[:len(k)]]
    return ONNX_OPSET_MAX[known[-1]] if known else ONNX_OPSET_MAX[min(ONNX_OPSET_MAX)]


def platform_problem(version: str, *, jetpack: str | None, compute_capability: str | None) -> str | None:
    """Why this TensorRT cannot build for a board with this JetPack / GPU, or None."""
    trt = features(version)
    if jetpack and trt.major >= 11:
        if trt.version < FIRST_JETPACK_11:
            return (f"TensorRT {version} does not support JetPack (TensorRT 11 supports JetPack from "
                    f"{_fmt(FIRST_JETPACK_11)} on)")
        if version_tuple(jetpack) < MIN_JETPACK_11:
            return (f"TensorRT 11 needs JetPack {_fmt(MIN_JETPACK_11)} or later, the board runs JetPack "
                    f"{jetpack} (JetPack 6 stays on TensorRT 10.x)")
    cc = version_tuple(compute_capability)
    if cc and cc >= (10, 0) and trt.version[:2] < FIRST_BLACKWELL:
        return (f"compute capability {compute_capability} (Blackwell) needs TensorRT "
                f"{_fmt(FIRST_BLACKWELL)} or later, not {version}")
    return None


def dla_problem(version: str, *, board: str | None, jetpack: str | None, dla_cores: int) -> str | None:
    """Why DLA cannot be used with this TensorRT on this board, or None when it can."""
    trt = features(version)
    if dla_cores == 0:
        return "the board has no DLA cores"
    if trt.major == 10 and not trt.dla:
        return f"TensorRT {version} has no DLA (10.7 was the last 10.x release with DLA)"
    if trt.major >= 11:
        if not trt.dla:
            return (f"TensorRT {version} has no DLA on Jetson (DLA returns in {_fmt(FIRST_DLA_11)}, "
                    f"on Jetson AGX Orin with JetPack {_fmt(MIN_JETPACK_11)}+)")
        if board not in DLA_BOARDS_11:
            return (f"TensorRT {version} supports DLA on Jetson AGX Orin only, not on board "
                    f"'{board or 'unknown'}'")
        if version_tuple(jetpack) < MIN_JETPACK_11:
            return f"DLA with TensorRT {version} needs JetPack {_fmt(MIN_JETPACK_11)}+, not {jetpack}"
    return None
