"""The ``unetgen`` command. `app` builds the parser and runs a command (`main`, the entry point
``unetgen.cli:main``); `args` holds the argument types, `errors` the one error path, and
`inspect`, `predict`, `draw`, `plan` and `imports` the commands. This package re-exports `main`
and the public settings and helpers; patch a ``cmd_*`` handler on `unetgen.cli.app`."""

from .app import DEBUG_ENV, LISTED_SIZES, UsageError, build_parser, main

__all__ = ["DEBUG_ENV", "LISTED_SIZES", "UsageError", "build_parser", "main"]
