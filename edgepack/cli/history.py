"""edgepack history [--model M] [--target T]: the trend of recorded profile runs."""
from __future__ import annotations

from pathlib import Path

from edgepack.cli import common


def register(subparsers):
    parser = common.add_command(subparsers, "history", "show recorded profile runs and their latency trend")
    parser.add_argument("--model", metavar="M", help="a model file, its name, or a sha256 prefix")
    parser.add_argument("--target", metavar="T", help="only runs on this target")
    parser.add_argument("--limit", type=int, default=20, metavar="N", help="most recent runs shown (default 20)")
    parser.add_argument("--history-db", metavar="FILE", help="profile history database")
    common.add_json(parser)
    return parser


def run(args) -> int:
    from edgepack.profile.environment import sha256_of
    from edgepack.profile.history import History, sparkline

    model = args.model
    if model and Path(model).is_file():
        model = sha256_of(model)
    store = History(args.history_db)
    rows = store.runs(model=model, target=args.target, limit=max(1, args.limit))
    common.emit(args, {"schema": "edgepack.history/1", "path": str(store.path), "runs": rows}, _format(rows, sparkline))
    return 0


def _format(rows: list[dict], sparkline) -> str:
    if not rows:
        return "no recorded runs match"
    lines = [f"{'id':>4} {'created':<25} {'model':<24} {'sha256':<12} {'target':<18} {'b':>3} {'thr':>3} "
             f"{'p50 ms':>9} {'p99 ms':>9} {'Δp50':>7}  host"]
    previous: dict[tuple, float] = {}
    for r in rows:
        key = (r["model_sha256"], r["target"], r["batch"], r.get("device"))
        change = f"{(r['p50'] / previous[key] - 1) * 100:+.1f}%" if key in previous and previous[key] else ""
        previous[key] = r["p50"]
        lines.append(f"{r['id']:>4} {r['created']:<25} {str(r['model_name'])[:24]:<24} {str(r['model_sha256'])[:12]:<12} "
                     f"{str(r['target'])[:18]:<18} {r['batch']:>3} {r['threads']:>3} {r['p50']:>9.4f} {r['p99']:>9.4f} "
                     f"{change:>7}  {r.get('hostname') or '?'}")
    groups: dict[tuple, list] = {}
    for r in rows:
        groups.setdefault((r["model_name"], r["target"]), []).append(r["p50"])
    for (name, target), values in groups.items():
        if len(values) > 1:
            lines.append(f"p50 trend {name} on {target}: {sparkline(values)}  "
                         f"{min(values):.4f}..{max(values):.4f} ms")
    return "\n".join(lines)
