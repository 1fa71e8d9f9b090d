"""`edgepack compress clip|lowrank|fp16`: weight clipping, SVD factorization, float16."""
from __future__ import annotations

import os
from typing import Any

import onnx_ir as ir

from edgepack.commands.prune import ModelReport
from edgepack.errors import UsageError
from edgepack.keywords import cli_keywords

METHODS = ("clip", "lowrank", "fp16")


class CompressReport(ModelReport):
    """JSON `edgepack.compress/1`: `method`, then the method's keys."""

    SCHEMA = "edgepack.compress/1"

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        head = {"schema": out.pop("schema"), "method": self.method}
        out.pop("method", None)
        return {**head, **out}

    def text(self) -> str:
        from edgepack.cost import format_cost

        d = self.details
        if d["method"] == "clip":
            summary = f"clipped {d['moved']:,} weights in {len(d['layers'])} layers"
        elif d["method"] == "lowrank":
            done = [layer for layer in d["layers"] if layer["factorized"]]
            summary = f"factorized {len(done)}/{len(d['layers'])} layers" + "".join(
                f"\n  {layer['node']}: {layer['shape'][0]}x{layer['shape'][1]} -> rank {layer['rank']}, "
                f"{layer['mac_saving']:.0%} fewer MACs" for layer in done)
        else:
            summary = (f"float16: {d['converted_nodes']} nodes converted, "
                       f"{len(d['float32_nodes'])} kept in float32")
        from edgepack.commands.prune import format_refit

        return f"{summary}\n-> {self.output}\n{format_cost(self.to_json())}{format_refit(d.get('refit'))}"


@cli_keywords
def compress(model: str | os.PathLike | ir.Model, method: str, output: str | os.PathLike | None = None, *,
             percentile: float | None = None, threshold: float | None = None,
             rank: int | str | None = None, energy: float | None = None, min_saving: float = 0.1,
             keep_io_float: bool = False, block=(), include=(), exclude=(), data=None,
             data_max: float = 65504.0, refit=None, preprocess=None) -> CompressReport:
    """Compress `model` (a path or an onnx-ir Model, not changed) with one method; write `output`.

    clip: `percentile` or `threshold`. lowrank: `rank` (an int, or "full": exact) or `energy`,
    and `min_saving`. fp16: `keep_io_float`, `block` (op types kept float32, added to the
    default list), `data_max` (with `data`: nodes whose values exceed it stay float32). `data`:
    sample data for the error report (default: random inputs).
    `refit` (lowrank, sample data): refit the factors' consumers by least squares against the
    original's layer outputs (passes/refit.py), error before/after in `details["refit"]`.
    `preprocess` applies to `data` and `refit`.
    The pass-level functions are `edgepack.clip_weights`, `edgepack.lowrank`, `edgepack.to_fp16`.
    """
    from edgepack import io
    from edgepack.calib.data import with_preprocess

    data, refit = with_preprocess(data, preprocess), with_preprocess(refit, preprocess)
    if refit is not None and method != "lowrank":
        raise UsageError(f"--refit works with compress lowrank (and prune), not {method}",
                         hint="drop --refit, or use compress lowrank")
    if method not in METHODS:
        raise UsageError(f"compress method '{method}' is not one of {', '.join(METHODS)}",
                         hint="edgepack compress clip|lowrank|fp16 MODEL -o OUT")
    loaded = model if isinstance(model, ir.Model) else io.load(model)
    if method == "clip":
        from edgepack.passes.clip_weights import clip_weights

        if (percentile is None) == (threshold is None):
            raise UsageError("compress clip needs one of --percentile and --threshold", hint="e.g. --percentile 99.9")
        out, details = clip_weights(loaded, percentile=percentile, threshold=threshold,
                                    include=list(include), exclude=list(exclude), data=data)
    elif method == "lowrank":
        from edgepack.passes.lowrank import lowrank

        if (rank is None) == (energy is None):
            raise UsageError("compress lowrank needs one of --rank and --energy", hint="e.g. --energy 0.95")
        full = rank == "full"
        number = None
        if rank is not None and not full:
            try:
                number = int(rank)
            except ValueError:
                raise UsageError(f"--rank {rank}: not an integer", hint="e.g. --rank 32 or --rank full") from None
        out, details = lowrank(loaded, rank=number, energy=energy, min_saving=min_saving, full=full,
                               include=list(include), exclude=list(exclude), data=data)
        if refit is not None:
            from edgepack.commands.prune import refit_report

            details["refit"] = refit_report(out, loaded, refit)
    else:
        from edgepack.passes.fp16 import DEFAULT_BLOCK, to_fp16

        if data_max <= 0:
            raise UsageError(f"--data-max {data_max:g}: must be positive")
        out, details = to_fp16(loaded, keep_io_float=keep_io_float, block=(*DEFAULT_BLOCK, *block), data=data,
                               data_max=data_max)
    if output is not None:
        io.save(out, output)
    return CompressReport(model=None if isinstance(model, ir.Model) else str(model),
                          output=None if output is None else str(output),
                          details={"method": method, **details}, result=out)
