"""The base of every command's result: a dataclass whose public fields are its JSON."""
from __future__ import annotations

import json
from dataclasses import dataclass, fields
from typing import Any

# field(metadata=NOT_JSON): kept on the result for Python callers (e.g. the model), not in to_json()
NOT_JSON = {"json": False}


def plain(value: Any) -> Any:
    """JSON-ready copy: nested results, tuples and paths become dicts, lists and strings."""
    if isinstance(value, CommandResult):
        return value.to_json()
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [plain(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "item") and callable(value.item):  # numpy scalars
        return value.item()
    return str(value)


@dataclass
class CommandResult:
    """`to_json()`: the fields (less those marked NOT_JSON) after `schema`; `text()`: for people;
    `exit_code`: what the CLI exits with (0 unless the command is a gate that failed)."""

    SCHEMA = ""

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"schema": self.SCHEMA} if self.SCHEMA else {}
        for f in fields(self):
            if f.metadata.get("json", True):
                out[f.name] = plain(getattr(self, f.name))
        return out

    def text(self) -> str:
        return json.dumps(self.to_json(), indent=2, default=str)

    @property
    def exit_code(self) -> int:
        return 0

    def __getitem__(self, key: str) -> Any:
        """`result["after"]`: the JSON's keys, for code written against the JSON documents."""
        return self.to_json()[key]
