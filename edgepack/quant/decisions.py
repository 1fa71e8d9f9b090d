"""The per-layer record of what the quantized model computes, and why.

Placement (INT8 or float, which format) and rounding (how the weights were fitted) both decide,
per layer, what the quantized model computes. Each stage writes its choice here with the measured
figures that justify it; `quantize` prints the record (`--explain`) and stores it in the model's
metadata and the build manifest.

    node              op     choice  reason                                      figures
    /layer1/conv1     Conv   int8    region 3: int8 0.41 ms < float 0.62 ms       int8_ms, float_ms, sqnr_db
    /fc/MatMul        MatMul float   region 9: int8 0.05 ms > float 0.03 ms       ...
    /layer1/conv1     Conv   int8    rounding: adaround, layer error -38 %        mse_nearest, mse_fitted
"""
from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterator

CHOICES = ("int8", "float", "int4", "fp8", "fp16")


@dataclasses.dataclass
class Decision:
    node: str
    op_type: str
    choice: str                                  # one of CHOICES
    reason: str                                  # one line, with the measured figures that decided it
    stage: str = "place"                         # the stage that decided: place, round, mixed, ...
    figures: dict[str, Any] = dataclasses.field(default_factory=dict)
    notes: list[str] = dataclasses.field(default_factory=list)   # later stages' one-line additions

    def to_json(self) -> dict[str, Any]:
        return {"node": self.node, "op_type": self.op_type, "choice": self.choice, "reason": self.reason,
                "stage": self.stage, "figures": _finite(self.figures), "notes": list(self.notes)}


class Decisions:
    """node label -> Decision, in the order decided. One record per quantize run."""

    def __init__(self) -> None:
        self._by_node: dict[str, Decision] = {}

    def decide(self, node: str, op_type: str, choice: str, reason: str, *, stage: str = "place",
               **figures: Any) -> Decision:
        """Records (or replaces) the choice for `node`; a later stage's choice wins, keeping notes."""
        if choice not in CHOICES:
            raise ValueError(f"unknown choice {choice!r}")
        old = self._by_node.get(node)
        decision = Decision(node, op_type, choice, reason, stage, dict(figures))
        if old is not None:
            decision.notes = old.notes + [f"{old.stage}: {old.choice} ({old.reason})"]
            decision.figures = {**old.figures, **decision.figures}
        self._by_node[node] = decision
        return decision

    def note(self, node: str, text: str, **figures: Any) -> None:
        """Adds a later stage's line and figures (rounding, bias correction) without changing the choice."""
        decision = self._by_node.get(node)
        if decision is None:
            return
        decision.notes.append(text)
        decision.figures.update(figures)

    def get(self, node: str) -> Decision | None:
        return self._by_node.get(node)

    def __contains__(self, node: str) -> bool:
        return node in self._by_node

    def __iter__(self) -> Iterator[Decision]:
        return iter(self._by_node.values())

    def __len__(self) -> int:
        return len(self._by_node)

    def with_choice(self, choice: str) -> list[Decision]:
        return [d for d in self if d.choice == choice]

    def to_json(self) -> list[dict[str, Any]]:
        return [d.to_json() for d in self]

    @classmethod
    def from_json(cls, rows: list[dict[str, Any]]) -> "Decisions":
        out = cls()
        for row in rows:
            d = Decision(str(row["node"]), str(row.get("op_type", "")), str(row["choice"]), str(row["reason"]),
                         str(row.get("stage", "place")), dict(row.get("figures") or {}),
                         [str(n) for n in row.get("notes") or []])
            out._by_node[d.node] = d
        return out

    def text(self, *, limit: int | None = None) -> str:
        rows = list(self)[:limit] if limit else list(self)
        if not rows:
            return "no per-layer decisions recorded"
        width = min(48, max(len(d.node) for d in rows))
        lines = [f"{'node':<{width}} {'op':<14} {'choice':<6} reason"]
        for d in rows:
            lines.append(f"{d.node[:width]:<{width}} {d.op_type[:14]:<14} {d.choice:<6} {d.reason}")
            lines += [f"{'':<{width}} {'':<14} {'':<6}   + {n}" for n in d.notes]
        if limit and len(self) > limit:
            lines.append(f"... {len(self) - limit} more (--json for all)")
        return "\n".join(lines)

    def metadata(self) -> str:
        """Compact JSON for the model's metadata_props and the build manifest."""
        return json.dumps(self.to_json(), separators=(",", ":"), sort_keys=True)


def _finite(figures: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in figures.items():
        if isinstance(v, float) and v != v:
            v = None
        elif isinstance(v, float) and v in (float("inf"), float("-inf")):
            v = 1e9 if v > 0 else -1e9
        out[k] = v
    return out
