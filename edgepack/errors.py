"""Error types: user mistakes are printed as one line by the CLI, bugs keep their traceback."""
from __future__ import annotations


class EdgepackError(Exception):
    """A user mistake: bad file, bad option, unsupported model. The CLI prints it and exits 1.

    `message` says what went wrong and where (file, node, option); `hint` says how to fix it.
    """

    exit_code = 1

    def __init__(self, message: str, *, hint: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return f"{self.message}. hint: {self.hint}" if self.hint else self.message


class UsageError(EdgepackError):
    """A command-line usage mistake (conflicting or missing options): exit code 2, like argparse."""

    exit_code = 2


class InternalError(Exception):
    """A bug in edgepack: an invariant broke. Never raised for bad input."""


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (libraries put long dumps after it)."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
