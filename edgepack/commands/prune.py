"""`edgepack prune`: magnitude pruning (element, 2:4 or whole channels), with its saving and cost."""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from typing import Any

import onnx_ir as ir

from edgepack.commands.result import NOT_JSON, CommandResult, plain
from edgepack.errors import UsageError
from edgepack.keywords import cli_keywords

logger = logging.getLogger(__name__)


@dataclass
class ModelReport(CommandResult):
    """A command that writes a smaller model: the input and output paths, then its own keys
    (`details`, flattened into the JSON: before/after stats, error, layers...)."""

    model: str | None
    output: str | None
    details: dict[str, Any] = field(default_factory=dict)
    result: ir.Model | None = field(default=None, repr=False, metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()
        out.update(plain(out.pop("details")))
        return out

    def __getattr__(self, name: str) -> Any:  # report.layers, report.error, ... from the details
        details = self.__dict__.get("details") or {}
        if name in details:
            return details[name]
        raise AttributeError(name)


def refit_report(model: ir.Model, original: ir.Model, data) -> dict[str, Any]:
    """Refit `model` in place to `original` on `data`; its error before and after on that data."""
    from edgepack.passes.refit import refit
    from edgepack.quant.compare import compare

    def measure():
        result = compare(original, model, data, layers=False, limit=refit_limit())
        out = result.outputs[0]
        acc = result.accuracy
        return {"sqnr_db": out["sqnr_db"], "top1_agreement": out["top1_agreement"],
                "top1": acc["b"] if acc else None, "original_top1": acc["a"] if acc else None}

    before = measure()
    fitted = refit(model, original, data, progress=True)
    return {"before": before, "after": measure(), "layers": fitted["layers"], "samples": fitted["samples"],
            "seconds": fitted["seconds"]}


def refit_limit() -> int:
    from edgepack.passes.refit import DEFAULT_SAMPLES

    return DEFAULT_SAMPLES


@dataclass
class PruneReport(ModelReport):
    """JSON `edgepack.prune/1`."""

    SCHEMA = "edgepack.prune/1"
    target: str | None = None
    target_sparsity: bool | None = None

    def to_json(self) -> dict[str, Any]:
        out = super().to_json()  # keep the order: schema, model, output, target, target_sparsity, ...
        head = {k: out.pop(k) for k in ("schema", "model", "output", "target", "target_sparsity")}
        return {**head, **out}

    def text(self) -> str:
        from edgepack.cost import format_cost

        layers = self.details["layers"]
        changed = sum(layer["modified"] for layer in layers)
        return (f"pruned {changed}/{len(layers)} layers ({self.details['granularity']}) -> {self.output}\n"
                + format_cost(self.to_json()) + format_refit(self.details.get("refit")))


def format_refit(refit: dict | None) -> str:
    if not refit:
        return ""
    b, a = refit["before"], refit["after"]
    acc = (f", top-1 {100 * b['top1']:.2f}% -> {100 * a['top1']:.2f}% (original {100 * b['original_top1']:.2f}%)"
           if b.get("top1") is not None else "")
    return (f"\nrefit: {len(refit['layers'])} layers on {refit['samples']} samples in {refit['seconds']:.1f} s; "
            f"output SQNR {b['sqnr_db']:.2f} -> {a['sqnr_db']:.2f} dB, top-1 agreement "
            f"{b['top1_agreement']:.3f} -> {a['top1_agreement']:.3f}{acc} (on the refit data)")


@cli_keywords(aliases={"global_": ("scope", lambda on: "global" if on else "layer")})
def prune(model: str | os.PathLike | ir.Model, output: str | os.PathLike | None = None, *,
          sparsity: float | None = None, granularity: str = "element", scope: str = "layer",
          norm: str = "l1", include=(), exclude=(), fold: bool = True, data=None, target=None,
          bias_correction: bool = False, refit=None, preprocess=None) -> PruneReport:
    """Prune `model` (a path or an onnx-ir Model, not changed) and write `output` if given.

    `sparsity` is needed except for `granularity="2:4"` (always half); `bias_correction` needs
    `data`. With `target`, a warning when it has no 2:4 sparse tensor cores. `refit` (sample data):
    refit the kept weights by least squares against the original's layer outputs
    (passes/refit.py); `details["refit"]` holds the output error and top-1 agreement (accuracy
    with labels) before and after, on that data. `preprocess` applies to `data` and `refit`. The
    pruned model is `report.result`; the pass-level function is `edgepack.passes.prune.prune`.
    """
    from edgepack.calib.data import with_preprocess

    data, refit = with_preprocess(data, preprocess), with_preprocess(refit, preprocess)
    from edgepack import io
    from edgepack.passes.prune import prune as prune_model

    if sparsity is None and granularity != "2:4":
        raise UsageError(f"--granularity {granularity} needs --sparsity", hint="e.g. --sparsity 0.5")
    if bias_correction and not data:
        raise UsageError("--bias-correction needs sample data", hint="pass --data D")
    resolved = None
    if target is not None:
        from edgepack.targets import load_target

        resolved = load_target(target)
        if granularity == "2:4" and not resolved.sparsity:
            logger.warning("target '%s' does not run 2:4 sparse weights faster (sparsity = false): "
                           "the zeros will only save space after compression", resolved.name)
    loaded = model if isinstance(model, ir.Model) else io.load(model)
    pruned, details = prune_model(loaded, sparsity=0.5 if sparsity is None else sparsity,
                                  granularity=granularity, scope=scope, norm=norm, include=list(include),
                                  exclude=list(exclude), fold=fold, data=data, bias_correction=bias_correction)
    if refit is not None:
        details["refit"] = refit_report(pruned, loaded, refit)
    if output is not None:
        io.save(pruned, output)
    return PruneReport(model=None if isinstance(model, ir.Model) else str(model),
                       output=None if output is None else str(output), details=details, result=pruned,
                       target=resolved.name if resolved else None,
                       target_sparsity=resolved.sparsity if resolved else None)
