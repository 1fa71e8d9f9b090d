"""Argument groups and output helpers shared by every subcommand."""
from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

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


def write_text_atomic(path: str | os.PathLike, text: str) -> Path:
    from edgepack.io import write_atomic

    return write_atomic(path, text)


def stderr(message: str) -> None:
    print(message, file=sys.stderr)
