"""The `edgepack` command. Each module in this package is a subcommand: it defines
`register(subparsers)` (which adds its parser and sets `run`), `API` ("module:function", the
library function in edgepack.commands the command calls, its options named like the flags) and
`run(args) -> int`, which is `common.run_api(args, API)`: parse, call, print."""
from __future__ import annotations

import argparse
import contextlib
import importlib
import logging
import os
import pkgutil
import sys

from edgepack.cli import common
from edgepack.errors import EdgepackError, UsageError

# The order of `edgepack --help`; modules not listed here follow alphabetically.
ORDER = ["inspect", "optimize", "prune", "compress", "pack", "unpack", "calibrate", "quantize",
         "compare", "check_qdq", "build", "profile", "check", "history", "run", "fleet", "report",
         "targets", "demo"]


def build_parser() -> argparse.ArgumentParser:
    from edgepack import __version__

    parser = common.GuidingParser(
        prog="edgepack",
        description="Take a trained ONNX model to a fast, small, verified engine on an edge device.",
    )
    parser.add_argument("--version", action="version", version=f"edgepack {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    names = [m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_")
             and m.name != "common"]
    for name in sorted(names, key=lambda n: (ORDER.index(n) if n in ORDER else len(ORDER), n)):
        module = importlib.import_module(f"{__name__}.{name}")
        module.register(subparsers).set_defaults(run=module.run)
    return parser


# Options naming files a command writes (the profile history and the timing cache are read too,
# and updated in place by design); every other option naming an existing file is an input.
OUTPUT_OPTIONS = ("output", "json", "tensorrt_cache", "report", "history_db", "timing_cache")


@contextlib.contextmanager
def command_paths(args: argparse.Namespace):
    """The one output check of every command: no output may be an input (named on the command
    line, or read later, such as a model's external data file; see edgepack/outputs.py)."""
    from edgepack import outputs

    values = {dest: value for dest, value in vars(args).items() if dest not in ("run", "command")}
    inputs = [v for dest, value in values.items() if dest not in OUTPUT_OPTIONS
              for v in (value if isinstance(value, list) else [value])
              if isinstance(v, str) and v and v != "-" and os.path.isfile(v)]
    with outputs.command(inputs):
        written: dict[str, str] = {}
        for dest in OUTPUT_OPTIONS:
            value = values.get(dest)
            if isinstance(value, str) and value and value != "-":
                flag = f"--{dest.replace('_', '-')}" if dest != "output" else "-o"
                outputs.check_output(value, what=flag)
                key = os.path.realpath(value)
                if key in written:
                    raise UsageError(f"{written[key]} and {flag} name the same file {value}",
                                     hint="give each output its own file")
                written[key] = flag
        yield


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # say it with the subcommand's usage, and what was probably meant
        common.parser_of(args, parser).error(f"unrecognized arguments: {' '.join(extras)}")
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else (
        logging.ERROR if args.quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    _quiet_libraries(loud=args.debug or args.verbose)
    try:
        with command_paths(args):
            return int(args.run(args) or 0)
    except EdgepackError as exc:
        if args.debug:
            raise
        print(f"error: {exc}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
    except Exception as exc:  # a bug: say so in one line, keep the traceback behind --debug
        if args.debug:
            raise
        print(f"error: internal error in 'edgepack {args.command}': {type(exc).__name__}: {exc}. "
              "hint: rerun with --debug for the traceback, and please report it", file=sys.stderr)
        return 3


def _quiet_libraries(loud: bool) -> None:
    """Library diagnostics (onnx-ir's shape-inference warnings, ONNX Runtime's C++ log, numpy's
    RuntimeWarnings) stay off stderr unless --debug or -v: a user error is one `error:` line."""
    import warnings

    level = logging.DEBUG if loud else logging.ERROR
    for name in ("onnx_ir", "onnxscript", "onnx"):
        logging.getLogger(name).setLevel(level)
    if not loud:
        warnings.simplefilter("ignore")
    try:
        import onnxruntime
    except ImportError:  # ORT is a core dependency, but `edgepack --help` should not need it
        return
    onnxruntime.set_default_logger_severity(0 if loud else 4)


if __name__ == "__main__":
    sys.exit(main())
