"""`edgepack check-qdq`: does a QDQ model follow the target's quantization rules?"""
from __future__ import annotations

import os
from dataclasses import dataclass, field

import onnx_ir as ir

from edgepack.commands.result import NOT_JSON, CommandResult


@dataclass
class CheckQdqReport(CommandResult):
    """JSON `{ok, target, problems}`; exit code 1 when a rule is broken."""

    ok: bool
    target: str
    problems: list[str]
    model: str | None = field(default=None, metadata=NOT_JSON)

    @property
    def exit_code(self) -> int:
        return 1 if self.problems else 0

    def text(self) -> str:
        name = self.model or "model"
        if not self.problems:
            return f"{name}: follows the {self.target} QDQ rules"
        return "\n".join([f"{name}: {len(self.problems)} problem(s) for {self.target}", *self.problems])


def check_qdq(model: str | os.PathLike | ir.Model, target) -> CheckQdqReport:
    """Check a QDQ model (path or onnx-ir Model) against `target`'s rules (name, .toml or Target)."""
    from edgepack import io
    from edgepack.quant.check_qdq import check_qdq as problems_of
    from edgepack.targets import load_target

    resolved = load_target(target)
    loaded = model if isinstance(model, ir.Model) else io.load(model)
    problems = problems_of(loaded, resolved)
    return CheckQdqReport(ok=not problems, target=resolved.name, problems=problems,
                          model=None if isinstance(model, ir.Model) else str(model))
