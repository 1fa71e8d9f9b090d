"""`edgepack pack` / `edgepack unpack`: the .epk container for moving a model over slow links."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from edgepack.commands.result import CommandResult
from edgepack.keywords import cli_keywords


@dataclass
class PackReport(CommandResult):
    """JSON `edgepack.pack/1`: sizes, ratio, mode and per-stream codecs (+ `error` in codebook mode)."""

    SCHEMA = "edgepack.pack/1"
    model: str
    output: str
    mode: str
    codebook_bits: int | None
    model_bytes: int
    packed_bytes: int
    ratio: float
    seconds: float
    tensors: int
    sparse_tensors: int
    streams: list[dict]
    error: dict | None = field(default=None)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        if out["error"] is None:  # only codebook mode measures an error
            del out["error"]
        return out

    def text(self) -> str:
        text = (f"{self.model} ({self.model_bytes:,} bytes) -> {self.output} ({self.packed_bytes:,} "
                f"bytes), {self.ratio:.2f}x smaller, {self.mode}")
        if self.error is not None:
            text += f"\noutput error after unpacking: max |diff| {self.error['max_abs_error']:.4g}"
        return text


@dataclass
class UnpackReport(CommandResult):
    """JSON `edgepack.unpack/1`."""

    SCHEMA = "edgepack.unpack/1"
    package: str
    output: str
    mode: str
    model_sha256: str
    weights_sha256: str
    seconds: float

    def text(self) -> str:
        return f"{self.package} -> {self.output} ({self.mode}, checksums ok)"


@cli_keywords
def pack_model(model: str | os.PathLike, output: str | os.PathLike, *, codebook: int | None = None,
         data=None, codebook_bits: int | None = None) -> PackReport:
    """Write `model` as an .epk container. Lossless unless `codebook` (bits: each float layer's
    weights share 2**bits values); then the unpacked model's output error on `data` (default:
    random inputs) is measured. `codebook_bits` is the former name of `codebook`."""
    from edgepack import io
    from edgepack.cost import compare
    from edgepack.pack.format import pack as write_pack
    from edgepack.pack.format import unpack_model

    bits = codebook if codebook is not None else codebook_bits
    report = write_pack(model, output, codebook_bits=bits)
    report.pop("schema")
    result = PackReport(**report)
    if bits is not None:
        restored, _ = unpack_model(output)
        result.error = compare(io.load(model), restored, data)
    return result


def unpack_model(model: str | os.PathLike, output: str | os.PathLike) -> UnpackReport:
    """Write the ONNX model inside the .epk file `model` to `output`, checksums verified."""
    from edgepack.pack.format import unpack as write_unpack

    report = write_unpack(model, output)
    report.pop("schema")
    return UnpackReport(**report)


# `edgepack.pack` also names the subpackage edgepack/pack/ (which replaces the attribute once it
# is imported), so the public names are pack_model / unpack_model; `unpack` stays as an alias.
unpack = unpack_model
