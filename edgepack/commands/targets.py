"""`edgepack targets`: the hardware targets and what each supports."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from edgepack.commands.result import NOT_JSON, CommandResult, plain


@dataclass
class TargetsReport(CommandResult):
    """JSON: a list of target summaries (one when a target was named)."""

    targets: list = field(metadata=NOT_JSON)  # Target objects
    one: bool = field(default=False, metadata=NOT_JSON)

    def to_json(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [plain(t.summary()) for t in self.targets]

    def text(self) -> str:
        rows = [f"{'name':<18} {'backend':<12} {'precisions':<15} {'DLA':>3} {'2:4':>4}  activations"]
        for t in self.targets:
            rows.append(f"{t.name:<18} {t.backend:<12} {','.join(t.precisions):<15} {t.dla_cores:>3} "
                        f"{'yes' if t.sparsity else 'no':>4}  {t.qdq.activations}")
        if self.one:
            rows += ["", self.targets[0].description, f"file: {self.targets[0].path}"]
        return "\n".join(rows)


def describe_targets(target=None) -> TargetsReport:
    """All shipped targets, or the one named (a name or a .toml path)."""
    from edgepack.targets import list_targets, load_target

    if target is not None:
        return TargetsReport([load_target(target)], one=True)
    return TargetsReport(list_targets())
