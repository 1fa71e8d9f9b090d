"""What every backend needs before it builds: the precision to build at, input shapes, staging."""
from __future__ import annotations

import contextlib
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

import onnx_ir as ir

from edgepack.errors import EdgepackError, UsageError

PRECISION_CHOICES = ("int8", "fp16", "fp32", "best")
Shape = tuple[int, ...]


def has_qdq(model: ir.Model) -> bool:
    """True when the model carries QuantizeLinear/DequantizeLinear nodes (explicit quantization)."""
    return any(node.op_type in ("QuantizeLinear", "DequantizeLinear") and node.domain in ("", "ai.onnx")
               for node in ir.traversal.RecursiveGraphIterator(model.graph))


def model_inputs(model: ir.Model) -> dict[str, tuple[int | None, ...]]:
    """Graph inputs (not initializers) by name; a dynamic or unknown dim is None."""
    inputs = {}
    for value in model.graph.inputs:
        if value.name in model.graph.initializers:
            continue
        shape = value.shape
        dims = () if shape is None else tuple(d if isinstance(d, int) else None for d in shape)
        inputs[value.name] = dims
    return inputs


def resolve_precision(target, precision: str, model_has_qdq: bool) -> str:
    """The precision to build at: checked against the target and the model.

    `best` is the fastest the target supports for this model: int8 when the model carries Q/DQ
    (explicit quantization), else fp16 where the target has it, else fp32. A QDQ model cannot
    be built at fp16/fp32, and int8 needs a QDQ model: edgepack does not calibrate inside the build.
    """
    if precision not in PRECISION_CHOICES:
        raise UsageError(f"--precision {precision!r} is not one of {', '.join(PRECISION_CHOICES)}")
    if precision == "best":
        if model_has_qdq and "int8" in target.precisions:
            return "int8"
        if model_has_qdq:
            raise EdgepackError(
                f"target '{target.name}' has no int8 ({', '.join(target.precisions)} only), "
                "but the model holds Q/DQ nodes", hint="build the float model for this target")
        return "fp16" if "fp16" in target.precisions else "fp32"
    if precision not in target.precisions:
        raise EdgepackError(
            f"target '{target.name}' does not support --precision {precision}",
            hint=f"use one of: {', '.join(target.precisions)} (or best)")
    if precision == "int8" and not model_has_qdq:
        raise EdgepackError(
            "--precision int8 needs a quantized (QDQ) model; this model has no QuantizeLinear nodes",
            hint="run `edgepack quantize MODEL --target ...` first, or use --precision fp16/fp32")
    if precision != "int8" and model_has_qdq:
        raise EdgepackError(
            f"--precision {precision}: the model holds Q/DQ nodes, so it is an int8 model",
            hint="use --precision int8 (or best), or build the float model")
    return precision


def parse_shapes(text: str | None, inputs: dict[str, tuple[int | None, ...]]
                 ) -> dict[str, tuple[Shape, Shape, Shape]]:
    """`--shapes` as {input: (min, opt, max)}.

    Syntax: `NAME:MIN/OPT/MAX[,NAME:...]` with dims joined by `x`, e.g. `input:1x3x224x224/8x3x224x224/
    16x3x224x224`; NAME may be left out when the model has one input. A single shape (no `/`)
    means min = opt = max. Inputs with dynamic dims not named here get 1 for each dynamic dim.
    """
    profiles: dict[str, tuple[Shape, Shape, Shape]] = {}
    for part in filter(None, (p.strip() for p in (text or "").split(","))):
        name, _, spec = part.rpartition(":")
        if not name:
            if len(inputs) != 1:
                raise UsageError(f"--shapes {part!r}: name the input (NAME:MIN/OPT/MAX); "
                                 f"the model has inputs {', '.join(inputs)}")
            name = next(iter(inputs))
        if name not in inputs:
            raise UsageError(f"--shapes: the model has no input '{name}'",
                             hint=f"inputs are: {', '.join(inputs)}")
        shapes = spec.split("/")
        if len(shapes) == 1:
            shapes *= 3
        if len(shapes) != 3 or not all(re.fullmatch(r"\d+(x\d+)*", s) for s in shapes):
            raise UsageError(f"--shapes {part!r}: expected NAME:MIN/OPT/MAX with dims like 1x3x224x224")
        mn, opt, mx = (tuple(int(d) for d in s.split("x")) for s in shapes)
        _check_profile(name, inputs[name], mn, opt, mx)
        profiles[name] = (mn, opt, mx)
    for name, dims in inputs.items():
        if name not in profiles and any(d is None for d in dims):
            fixed = tuple(1 if d is None else d for d in dims)
            profiles[name] = (fixed, fixed, fixed)
    return profiles


def _check_profile(name: str, dims: tuple[int | None, ...], *shapes: Shape) -> None:
    for shape in shapes:
        if len(shape) != len(dims):
            raise UsageError(f"--shapes: input '{name}' has rank {len(dims)}, got {'x'.join(map(str, shape))}")
        for axis, (want, got) in enumerate(zip(dims, shape)):
            if want is not None and want != got:
                raise UsageError(f"--shapes: input '{name}' dim {axis} is fixed at {want}, got {got}")
    mn, opt, mx = shapes
    if not all(a <= b <= c for a, b, c in zip(mn, opt, mx)):
        raise UsageError(f"--shapes: input '{name}' needs min <= opt <= max in every dim")


@contextlib.contextmanager
def staging(output: Path) -> Iterator[Path]:
    """A temporary folder beside `output`; the caller moves finished files out with `publish`."""
    from edgepack.io import output_folder

    folder = output_folder(output)
    tmp = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".tmp", dir=folder))
    try:
        yield tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def publish(staged: Path, final: Path) -> Path:
    os.replace(staged, final)
    return final
