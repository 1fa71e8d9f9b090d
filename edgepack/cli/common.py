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

class GuidingParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors say what was probably meant: `did you mean --method?` for a
    mistyped option (from this parser's own options), the nearest command for a mistyped one."""

    def error(self, message: str):
        hint = suggestion(self, message)
        if hint is None:  # e.g. "--rank is required" because it was typed --rnk
            unknown = [w for w in getattr(self, "_seen", []) if w.startswith("--")
                       and w.split("=")[0] not in option_strings(self)]
            hint = suggestion(self, f"unrecognized arguments: {' '.join(unknown)}") if unknown else None
        hint = hint or f"see `{self.prog} --help`"
        # one line, as every other error: what, the short usage, what was probably meant
        self.exit(2, f"error: {self.prog}: {message}. usage: {short_usage(self)}. hint: {hint}\n")

    def parse_known_args(self, args=None, namespace=None):
        self._seen = list(sys.argv[1:] if args is None else args)
        return super().parse_known_args(args, namespace)


def short_usage(parser: argparse.ArgumentParser) -> str:
    """`edgepack quantize MODEL -t T -o OUT [options]`: the positionals and required options only."""
    parts = [parser.prog]
    optional = False
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            parts.append(action.metavar or "COMMAND")
        elif not action.option_strings:
            parts.append(action.metavar or action.dest.upper())
        elif action.required:
            parts.append(f"{action.option_strings[0]} {action.metavar or action.dest.upper()}")
        elif action.dest not in ("help", "version"):
            optional = True
    return " ".join(parts + (["[options]"] if optional else []))


def option_strings(parser: argparse.ArgumentParser) -> list[str]:
    return [s for action in parser._actions for s in action.option_strings]


def suggestion(parser: argparse.ArgumentParser, message: str) -> str | None:
    """`did you mean ...?` for argparse's unknown-option and invalid-choice messages."""
    import difflib
    import re

    choice = re.search(r"invalid choice: '([^']*)' \(choose from (.*)\)", message)
    if choice:
        options = [c.strip().strip("'") for c in choice[2].split(",")]
        near = difflib.get_close_matches(choice[1], options, n=2, cutoff=0.5)
        return f"did you mean {' or '.join(near)}?" if near else None
    unknown = re.search(r"unrecognized arguments: (.*)", message)
    if unknown:
        hints = []
        for word in unknown[1].split():
            if word.startswith("-"):
                near = difflib.get_close_matches(word.split("=")[0], option_strings(parser), n=1, cutoff=0.6)
                if near:
                    hints.append(f"did you mean {near[0]}?")
        return " ".join(hints) or None
    return None


def parser_of(namespace: argparse.Namespace, default: argparse.ArgumentParser) -> argparse.ArgumentParser:
    """The (sub)command parser that parsed `namespace` (set by `add_command`)."""
    return getattr(namespace, "_parser", None) or default


# Options every subcommand takes, so they work after the command name: `edgepack inspect m --debug`.
COMMON = argparse.ArgumentParser(add_help=False)
_group = COMMON.add_argument_group("general")
_group.add_argument("--debug", action="store_true", help="show tracebacks and debug logs")
_group.add_argument("-v", "--verbose", action="store_true", help="show progress details (INFO logs)")
_group.add_argument("-q", "--quiet", action="store_true", help="only errors on stderr")


def add_command(subparsers, name: str, help: str, description: str | None = None) -> argparse.ArgumentParser:
    parser = subparsers.add_parser(
        name, help=help, description=description or help, parents=[COMMON],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.set_defaults(_parser=parser)  # unknown options are reported with this command's usage
    return parser


def add_model(parser: argparse.ArgumentParser, help: str = "input ONNX model") -> None:
    parser.add_argument("model", metavar="MODEL", help=help)


def add_output(parser: argparse.ArgumentParser, help: str = "output file", required: bool = True) -> None:
    parser.add_argument("-o", "--output", metavar="OUT", required=required, help=help)


def add_target(parser: argparse.ArgumentParser, required: bool = True, recorded: bool = False) -> None:
    """`-t T, --target T`; `recorded`: optional, defaulting to the target a quantized model (or an
    artifact's manifest) records."""
    parser.add_argument(
        "-t", "--target", metavar="T", required=required and not recorded,
        help="hardware target: a name from `edgepack targets` or a path to a .toml file"
             + ("; default: the target recorded in the model by `quantize` (or in the artifact's manifest)"
                if recorded else ""),
    )


def add_json(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--json", nargs="?", const="-", metavar="FILE",
        help="machine-readable output: to stdout, or to FILE",
    )


def add_preprocess_args(parser: argparse.ArgumentParser) -> None:
    """The preprocessing flags, on every command that reads data (see docs/data.md); read back with Preprocess.from_args."""
    from edgepack.calib.preprocess import CHANNEL_ORDERS, INTERPOLATIONS

    group = parser.add_argument_group(
        "preprocessing", "applied to arrays and image folders alike, in this order: resize, crop, "
                         "scale, channel order, mean/std, layout")
    group.add_argument("--layout", metavar="DATA:MODEL",
                       help="transpose the data: NHWC:NCHW (NCHW alone means the same), NCHW:NHWC")
    group.add_argument("--scale", metavar="S", help="multiply by S first, e.g. 1/255 (needed for integer data "
                                                     "feeding a float input; --scale 1 keeps the values)")
    group.add_argument("--mean", metavar="M,...", help="subtract per channel, e.g. 0.485,0.456,0.406")
    group.add_argument("--std", metavar="S,...", help="then divide per channel, e.g. 0.229,0.224,0.225")
    group.add_argument("--channel-order", metavar="ORDER", type=str.upper, choices=CHANNEL_ORDERS,
                       help="BGR: swap the stored RGB channels (default RGB: keep)")
    group.add_argument("--resize", type=int, metavar="PX", help="resize so the shorter side is PX")
    group.add_argument("--interpolation", metavar="NAME", type=str.lower, choices=INTERPOLATIONS,
                       help="the resize filter: bilinear (default), bicubic, nearest, lanczos, box, hamming")
    group.add_argument("--crop", type=int, metavar="PX", help="centre crop PX x PX")


#: what --data takes, for every command's help
DATA_HELP = ("a folder of images (.jpg .png .bmp .webp, sorted; no manifest needed), a calibration folder, "
             ".npz (FILE.npz:ARRAY[:LABELS] picks the arrays) or .npy")


def data_arg(args: argparse.Namespace):
    """`--data` carrying the preprocessing flags (for APIs that take only `data`)."""
    from edgepack.calib.data import with_preprocess
    from edgepack.calib.preprocess import Preprocess

    return with_preprocess(getattr(args, "data", None), Preprocess.from_args(args))


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
    preprocessing = _preprocess_dests()
    if preprocessing & set(vars(args)):  # the preprocessing flags travel as one Preprocess
        from edgepack.calib.preprocess import Preprocess

        preprocess = Preprocess.from_args(args)
        if "preprocess" in params:
            kwargs["preprocess"] = preprocess
        elif "data" not in params:
            raise InternalError(f"edgepack {getattr(args, 'command', '?')}: preprocessing options but "
                                f"{function.__module__}.{function.__name__} takes no data")
    for dest, value in vars(args).items():
        if dest in GENERAL or dest in display or dest in preprocessing or dest.startswith("_"):
            continue
        if dest == "data" and "preprocess" not in params and preprocessing & set(vars(args)):
            kwargs["data"] = data_arg(args)
            continue
        if dest.startswith("no_") and dest[3:] in params:
            kwargs[dest[3:]] = not value
        elif dest in params:
            kwargs[dest] = value
        else:
            raise InternalError(f"edgepack {getattr(args, 'command', '?')}: option '{dest}' is not a parameter "
                                f"of {function.__module__}.{function.__name__}")
    if "progress" in params:
        kwargs["progress"] = kwargs.get("progress", True) and not getattr(args, "quiet", False)
    return kwargs


def _preprocess_dests() -> set[str]:
    from dataclasses import fields

    from edgepack.calib.preprocess import Preprocess

    return {f.name for f in fields(Preprocess)}


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
