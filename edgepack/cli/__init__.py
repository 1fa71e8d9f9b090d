"""The `edgepack` command. Each module in this package is a subcommand: it defines
`register(subparsers)` (which adds its parser and sets `run`) and `run(args) -> int`."""
from __future__ import annotations

import argparse
import importlib
import logging
import pkgutil
import sys

from edgepack.errors import EdgepackError

# The order of `edgepack --help`; modules not listed here follow alphabetically.
ORDER = ["inspect", "optimize", "prune", "compress", "pack", "unpack", "calibrate", "quantize",
         "compare", "check_qdq", "build", "profile", "check", "history", "run", "fleet", "report",
         "targets", "demo"]


def build_parser() -> argparse.ArgumentParser:
    from edgepack import __version__

    parser = argparse.ArgumentParser(
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


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.DEBUG if args.debug else logging.INFO if args.verbose else (
        logging.ERROR if args.quiet else logging.WARNING)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
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


if __name__ == "__main__":
    sys.exit(main())
