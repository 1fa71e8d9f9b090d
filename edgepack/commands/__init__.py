"""One library function per command: the API under the CLI, the recipe runner and the demo.

Each `edgepack <command>` is a function here that takes typed keyword options, named like the
command's long flags (`--no-simplify` is `simplify=False`), and returns a typed result whose
`to_json()` is exactly what `edgepack <command> --json` prints. `edgepack.cli.<command>` only
parses arguments, calls the function (`edgepack.cli.common.call`) and prints `result.text()`;
`edgepack run` and `edgepack demo` call the same functions, so the Python API, the CLI and a
recipe give the same files and JSON.

    import edgepack
    report = edgepack.optimize("model.onnx", output="small.onnx", tolerance=1e-4)
    report.to_json()["after"]["macs"], report.optimized    # the JSON, and the ir.Model

Modules are imported lazily (`edgepack/__init__.py` maps the public names).
"""
from __future__ import annotations

from edgepack.commands.result import NOT_JSON, CommandResult

__all__ = ["CommandResult", "NOT_JSON"]
