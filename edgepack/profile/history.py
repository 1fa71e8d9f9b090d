"""A local store of profile results (SQLite), for trends and `check --baseline history`.

Path: --history-db, else $EDGEPACK_HISTORY, else ~/.cache/edgepack/history.sqlite. One row per
profile run; the full result (samples included, with its environment record) is kept as JSON
next to indexed summary columns, among them the hostname and the device kind (Jetson module, else
CPU model and machine) the run was taken on: a fleet run (`edgepack run --cluster`) puts every
device's results into the one store of the machine that started it, and `--baseline history`
compares a run with earlier runs of the same model, target and device kind.
"""
from __future__ import annotations

import json
import os
import sqlite3
from pathlib import Path

from edgepack.errors import EdgepackError
from edgepack.profile.environment import device_kind

DEFAULT_PATH = Path("~/.cache/edgepack/history.sqlite")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    run_id TEXT UNIQUE,
    created TEXT NOT NULL,
    model_name TEXT, model_path TEXT, model_sha256 TEXT,
    target TEXT, backend TEXT, batch INTEGER, threads INTEGER,
    runs INTEGER, p50 REAL, p90 REAL, p99 REAL, mean REAL, throughput REAL,
    result TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS runs_model_target ON runs (model_sha256, target, id);
"""
_ADDED = (("hostname", "TEXT"), ("device", "TEXT"))  # columns added later: stores made before get them

_COLUMNS = ("id", "run_id", "created", "model_name", "model_path", "model_sha256", "target", "backend",
            "batch", "threads", "runs", "p50", "p90", "p99", "mean", "throughput", "hostname", "device")


def default_path() -> Path:
    return Path(os.environ.get("EDGEPACK_HISTORY") or DEFAULT_PATH).expanduser()


class History:
    """Profile results over time, in one SQLite file."""

    def __init__(self, path: str | os.PathLike | None = None):
        self.path = Path(path).expanduser() if path else default_path()

    def _connect(self, create: bool) -> sqlite3.Connection:
        if not create and not self.path.is_file():
            raise EdgepackError(f"no profile history at {self.path}",
                                hint="run `edgepack profile` first, or point --history-db / EDGEPACK_HISTORY at it")
        try:
            if create:
                from edgepack import outputs

                outputs.check_output(self.path, what="profile history")  # never an input; folders made
            connection = sqlite3.connect(self.path, timeout=30)
            connection.executescript(_SCHEMA)
            _migrate(connection)
            return connection
        except (sqlite3.Error, OSError) as exc:
            raise EdgepackError(f"profile history {self.path}: {exc}",
                                hint="pass another file with --history-db") from None

    def add(self, result: dict) -> int:
        """Append a profile result; returns its row id."""
        lat = result["latency_ms"]
        environment = result.get("environment") or {}
        row = (result.get("id"), result["created"], result["model"].get("name"), result["model"].get("path"),
               result["model"].get("sha256"), result.get("target"), result.get("backend"), result.get("batch"),
               result.get("threads"), result.get("runs"), lat.get("p50"), lat.get("p90"), lat.get("p99"),
               lat.get("mean"), result.get("throughput_per_s"), environment.get("hostname"),
               device_kind(environment), json.dumps(result))
        with self._connect(create=True) as db:
            cursor = db.execute(f"INSERT INTO runs ({', '.join(_COLUMNS[1:])}, result) "
                                f"VALUES ({', '.join('?' * len(row))})", row)
            return int(cursor.lastrowid)

    def runs(self, *, model: str | None = None, target: str | None = None, limit: int = 20) -> list[dict]:
        """Summary rows, oldest first (the last `limit`). `model` matches a sha256 (or a prefix of
        at least 8 characters), a file name or a path."""
        where, params = self._filter(model, target)
        with self._connect(create=False) as db:
            rows = db.execute(f"SELECT {', '.join(_COLUMNS)} FROM runs {where} ORDER BY id DESC LIMIT ?",
                              (*params, limit)).fetchall()
        return [dict(zip(_COLUMNS, r)) for r in reversed(rows)]

    def recent(self, *, model_sha256: str, target: str | None, limit: int = 5,
               exclude_run_id: str | None = None, device: str | None = None) -> list[dict]:
        """The full results of the last `limit` runs of this model (sha256) and target (and
        device kind, when given: like is compared with like)."""
        device_clause, params = ("AND device IS ? ", (device,)) if device is not None else ("", ())
        with self._connect(create=False) as db:
            rows = db.execute("SELECT result FROM runs WHERE model_sha256 = ? AND target IS ? " + device_clause +
                              "AND (run_id IS NOT ? OR run_id IS NULL) ORDER BY id DESC LIMIT ?",
                              (model_sha256, target, *params, exclude_run_id, limit)).fetchall()
        return [json.loads(r[0]) for r in reversed(rows)]

    @staticmethod
    def _filter(model: str | None, target: str | None) -> tuple[str, tuple]:
        clauses, params = [], []
        if model:
            clauses.append("(model_sha256 LIKE ? OR model_name = ? OR model_path = ?)")
            prefix = model if len(model) >= 8 and all(c in "0123456789abcdef" for c in model.lower()) else "\0"
            params += [prefix.lower() + "%", Path(model).name, model]
        if target:
            clauses.append("target = ?")
            params.append(target)
        return ("WHERE " + " AND ".join(clauses) if clauses else ""), tuple(params)


def _migrate(db: sqlite3.Connection) -> None:
    """Add the hostname and device columns to a store made before them, filled from each row's JSON."""
    have = {row[1] for row in db.execute("PRAGMA table_info(runs)")}
    missing = [(name, kind) for name, kind in _ADDED if name not in have]
    if not missing:
        return
    for name, kind in missing:
        db.execute(f"ALTER TABLE runs ADD COLUMN {name} {kind}")
    for row_id, text in db.execute("SELECT id, result FROM runs").fetchall():
        try:
            environment = json.loads(text).get("environment") or {}
        except ValueError:
            continue
        db.execute("UPDATE runs SET hostname = ?, device = ? WHERE id = ?",
                   (environment.get("hostname"), device_kind(environment), row_id))
    db.commit()


def sparkline(values: list[float]) -> str:
    """▁▂▃▄▅▆▇█ scaled between the smallest and largest value."""
    bars = "▁▂▃▄▅▆▇█"
    values = [v for v in values if v is not None]
    if not values:
        return ""
    low, high = min(values), max(values)
    span = (high - low) or 1.0
    return "".join(bars[min(7, int((v - low) / span * 7.999))] for v in values)
