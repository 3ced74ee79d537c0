"""The one error path of the command line: commands raise, `unetgen.cli.main` alone reports.

Errors never show a traceback. A failure prints one ``error: ...`` line per line of its message
to stderr, naming the value and the fix, and exits 1; a bad command line (an unknown flag, a value
that is not a positive int, a size of the wrong rank for the config, a device this torch build
lacks) exits 2, as argparse does; Ctrl-C exits 130; a closed pipe (``unetgen schema | head``)
ends quietly with exit 1 (Python's recipe: stdout is pointed at devnull). An unexpected
exception, a bug in unetgen, prints one ``error: internal error: ...`` line; set
``UNETGEN_DEBUG=1`` to see its traceback (it then re-raises every exception).
"""

from __future__ import annotations

import os
import sys

from ..analysis import shapes
from ..checkpoint import CheckpointError
from ..config.io import ConfigError
from ..reprs import short_arg

DEBUG_ENV = "UNETGEN_DEBUG"
"""Set to 1 to see the traceback of any error instead of its one-line message."""
_MAX_LINE = 1000  # an error line is cut after this many characters
_MAX_LINES = 40  # and at most this many lines are printed per error


class UsageError(ValueError):
    """A command-line value that does not fit the config (e.g. a size of the wrong rank): exit 2."""


class CommandError(Exception):
    """A failure a command words itself (a missing renderer, an unwritable output, a failed
    out-of-core run): its message is shown as it is, one ``error:`` line per line, exit 1."""


show = short_arg
"""A path or value as typed, bounded; repr'd when it holds control or odd characters."""


def note(text: str) -> None:
    """A line for the user that is not the command's answer (a plan, `wrote FILE`): on stderr."""
    print(text, file=sys.stderr)


def describe(err: BaseException) -> tuple[int, list[str]]:
    """Exit code and message lines for an exception raised by a command."""
    if isinstance(err, UsageError):
        return 2, str(err).splitlines()
    if isinstance(err, CommandError):
        return 1, str(err).splitlines() or [""]
    if isinstance(err, (ConfigError, CheckpointError, shapes.InputShapeError, ValueError)):
        return 1, str(err).splitlines() or [type(err).__name__]
    if isinstance(err, MemoryError) or type(err).__name__ == "OutOfMemoryError":
        first = (str(err).strip().splitlines() or ["out of memory"])[0]
        return 1, [f"out of memory ({first[:200]}); use a smaller --tile-size or --batch-size"]
    if isinstance(err, OSError):
        where = f"{show(str(err.filename))}: " if err.filename is not None else "writing the output: "
        return 1, [f"{where}{err.strerror or err}"]
    if isinstance(err, ImportError):
        return 1, [f"{err}; install the missing package (see the README)"]
    first = (str(err).strip().splitlines() or [""])[0]
    return 1, [
        f"internal error: {type(err).__name__}: {first[:300]} (a bug in unetgen: set {DEBUG_ENV}=1 to see the "
        "traceback, and please report it)"
    ]


def report(err: BaseException) -> int:
    """Print `err` as ``error:`` lines after what the command wrote to stdout; its exit code."""
    code, lines = describe(err)
    _flush_stdout()
    for line in lines[:_MAX_LINES]:
        _stderr(line)
    if len(lines) > _MAX_LINES:
        _stderr(f"... and {len(lines) - _MAX_LINES} more lines")
    return code


def report_interrupt() -> int:
    """Ctrl-C: one ``error: interrupted`` line, exit 130."""
    _flush_stdout()
    _stderr("interrupted")
    return 130


def report_broken_pipe() -> int:
    """stdout was closed (``unetgen schema | head``): end quietly, exit 1."""
    silence_stdout()
    return 1


def silence_stdout() -> None:
    """Point stdout at devnull so that the interpreter's final flush cannot fail (Python's recipe
    for SIGPIPE, https://docs.python.org/3/library/signal.html#note-on-sigpipe)."""
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError, AttributeError):  # no file descriptor (captured output): nothing to silence
        pass


def _stderr(line: str) -> None:
    try:
        sys.stderr.write(f"error: {line[:_MAX_LINE]}\n")
        sys.stderr.flush()
    except (OSError, ValueError):  # stderr is closed or broken too: nothing more to say
        pass


def _flush_stdout() -> None:
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        silence_stdout()
