"""The ``unetgen`` command. The code lives in `unetgen/cli/main.py`; this package re-exports
`main` (the entry point ``unetgen.cli:main``) and the module's public settings and helpers.
Note that ``unetgen.cli.main`` is the function: reach the module, e.g. to patch a ``cmd_*``
handler, through ``sys.modules["unetgen.cli.main"]`` or ``importlib.import_module``."""

from .main import DEBUG_ENV, LISTED_SIZES, UsageError, build_parser, main

__all__ = ["DEBUG_ENV", "LISTED_SIZES", "UsageError", "build_parser", "main"]
