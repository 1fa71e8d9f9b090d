"""Argument groups and output helpers shared by every subcommand."""
from __future__ import annotations

import argparse
import importlib
import inspect
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

from edgepack.errors import InternalError

# Options every subcommand takes, so they work after the command name: `edgepack inspect m --debug`.
COMMON = argparse.ArgumentParser(add_help=False)
_group = COMMON.add_argument_group("general")
_group.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
_group.add_argument("-v", "--verbose", action="store_true", help="show progress details (INFO logs)")
_group.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")


def add_command(subparsers, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    return subparsers.add_parser(
        name, help=help, description=description or help, parents=[COMMON],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )


def add_model(parser: argparse.ArgumentParser, help: str = "input ONNX model") -> None:
    parser.add_argument("model", metavar="MODEL", help=help)


def add_output(parser: argparse.ArgumentParser, help: str = "output file", required: bool = True) -> None:
    parser.add_argument("-o", "--output", metavar="OUT", required=required, help=help)


def add_target(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument(
        "-t", "--target", metavar="T", required=required,
        help="hardware target: a name from `edgepack targets` or a path to a .toml file",
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="FILE",
        help="machine-readable output: to stdout, or to FILE",
    )


def emit(args: argparse.Namespace, data: Any, text: str) -> None:
    """Print `text` for people, or `data` as JSON when --json was given (to stdout or a file)."""
    target = getattr(args, "json", None)
    if target is None:
        print(text)
        return
    payload = json.dumps(data, indent=2, default=str)
    if target == "-":
        print(payload)
    else:
        write_text_atomic(target, payload + "\n")
        print(text)


# argparse dests that are not options of a command's function
GENERAL = frozenset({"debug", "verbose", "quiet", "json", "command", "run"})


def api_function(spec: str) -> Callable:
    """'edgepack.commands.optimize:optimize' -> the function (imported on first use)."""
    module, _, name = spec.partition(":")
    return getattr(importlib.import_module(module), name)


def call_options(function: Callable, args: argparse.Namespace, display: tuple[str, ...] = ()) -> dict[str, Any]:
    """The keyword arguments of `function` from parsed arguments: a dest is the parameter of the
    same name, `no_X` is `X=not value`; `display` dests only change the printed text. A dest that
    reaches no parameter is a bug (the CLI would offer an option the API lacks)."""
    params = inspect.signature(function).parameters
    kwargs: dict[str, Any] = {}
    for dest, value in vars(args).items():
        if dest in GENERAL or dest in display:
            continue
        if dest in params:
            kwargs[dest] = value
        elif dest.startswith("no_") and dest[3:] in params:
            kwargs[dest[3:]] = not value
        else:
            raise InternalError(f"edgepack {getattr(args, 'command', '?')}: option '{dest}' is not a parameter "
                                f"of {function.__module__}.{function.__name__}")
    if "progress" in params:
        kwargs["progress"] = kwargs.get("progress", True) and not getattr(args, "quiet", False)
    return kwargs


def call(spec: str, args: argparse.Namespace, display: tuple[str, ...] = ()):
    """Call the command's library function with the parsed arguments; returns its typed result."""
    function = api_function(spec)
    return function(**call_options(function, args, display))


def run_api(args: argparse.Namespace, spec: str, display: tuple[str, ...] = ()) -> int:
    """The whole `run` of a command: call its function, print its text or JSON, exit with its code."""
    result = call(spec, args, display)
    emit(args, result.to_json(), result_text(result, args, display))
    return int(getattr(result, "exit_code", 0))


def result_text(result, args: argparse.Namespace, display: tuple[str, ...] = ()) -> str:
    """What the terminal shows: `result.text()` (a result without one prints its JSON)."""
    if hasattr(result, "text"):
        return result.text(**{d: getattr(args, d) for d in display})
    return json.dumps(result.to_json(), indent=2, default=str)


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    from edgepack.io import write_atomic

    return write_atomic(path, text)


def stderr(message: str) -> None:
    print(message, file=sys.stderr)
