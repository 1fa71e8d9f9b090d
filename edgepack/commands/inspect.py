"""`edgepack inspect`: ops, shapes, parameters, MACs, weight sparsity, quantizable nodes."""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any

from edgepack.commands.result import NOT_JSON, CommandResult
from edgepack.keywords import cli_keywords


@dataclass
class InspectReport(CommandResult):
    """JSON `edgepack.inspect/1` (keys documented in docs/schemas.md): `report` is that document."""

    report: dict[str, Any] = field(default_factory=dict, metadata=NOT_JSON)

    def to_json(self) -> dict[str, Any]:
        return dict(self.report)

    def text(self, top: int = 30) -> str:
        from edgepack.inspection import format_report

        return format_report(self.report, top=top)

    def __getattr__(self, name: str) -> Any:  # report.macs, report.layers, ...
        report = self.__dict__.get("report") or {}
        if name in report:
            return report[name]
        raise AttributeError(name)


@cli_keywords
def inspect(model: str | os.PathLike, *, check: bool = True) -> InspectReport:
    """Read `model` (with the ONNX checker unless `check=False`) and report what is in it."""
    from edgepack import io
    from edgepack.inspection import inspect_model

    return InspectReport(inspect_model(io.load(model, check=check), model))
