"""`edgepack history`: recorded profile runs and their latency trend."""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from edgepack.commands.result import CommandResult


@dataclass
class HistoryReport(CommandResult):
    """JSON `edgepack.history/1`."""

    SCHEMA = "edgepack.history/1"
    path: str
    runs: list[dict]

    def text(self) -> str:
        from edgepack.profile.history import sparkline

        rows = self.runs
        if not rows:
            return "no recorded runs match"
        lines = [f"{'id':>4} {'created':<25} {'model':<24} {'sha256':<12} {'target':<18} {'b':>3} {'thr':>3} "
                 f"{'p50 ms':>9} {'p99 ms':>9} {'Δp50':>7}  host"]
        previous: dict[tuple, float] = {}
        for r in rows:
            key = (r["model_sha256"], r["target"], r["batch"], r.get("device"))
            change = f"{(r['p50'] / previous[key] - 1) * 100:+.1f}%" if key in previous and previous[key] else ""
            previous[key] = r["p50"]
            lines.append(f"{r['id']:>4} {r['created']:<25} {str(r['model_name'])[:24]:<24} "
                         f"{str(r['model_sha256'])[:12]:<12} {str(r['target'])[:18]:<18} {r['batch']:>3} "
                         f"{r['threads']:>3} {r['p50']:>9.4f} {r['p99']:>9.4f} {change:>7}  "
                         f"{r.get('hostname') or '?'}")
        groups: dict[tuple, list] = {}
        for r in rows:
            groups.setdefault((r["model_name"], r["target"]), []).append(r["p50"])
        for (name, target), values in groups.items():
            if len(values) > 1:
                lines.append(f"p50 trend {name} on {target}: {sparkline(values)}  "
                             f"{min(values):.4f}..{max(values):.4f} ms")
        return "\n".join(lines)


def history(*, model: str | os.PathLike | None = None, target: str | None = None, limit: int = 20,
            history_db: str | os.PathLike | None = None) -> HistoryReport:
    """The most recent `limit` profile runs, of `model` (a file, its name or a sha256 prefix)
    and `target` when given. The store itself is `edgepack.History`."""
    from edgepack.profile.environment import sha256_of
    from edgepack.profile.history import History

    if model is not None and Path(model).is_file():
        model = sha256_of(model)
    store = History(history_db)
    return HistoryReport(str(store.path), store.runs(model=model, target=target, limit=max(1, limit)))
