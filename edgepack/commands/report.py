"""`edgepack report`: one self-contained HTML page for a run folder."""
from __future__ import annotations

import os
from dataclasses import dataclass

from edgepack.commands.result import CommandResult


@dataclass
class ReportResult(CommandResult):
    """JSON `edgepack.report/1`: the run folder and the page written."""

    SCHEMA = "edgepack.report/1"
    folder: str
    output: str

    def text(self) -> str:
        return f"wrote {self.output}"


def report_run(folder: str | os.PathLike, output: str | os.PathLike) -> ReportResult:
    """Write the HTML report of a run folder (from `edgepack run` or `edgepack demo`) to `output`.
    The renderer is `edgepack.write_report`."""
    from edgepack.report.html import write_report

    return ReportResult(str(folder), str(write_report(folder, output)))
