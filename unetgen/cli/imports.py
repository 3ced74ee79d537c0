"""`unetgen import`: a unetgen config for a network of another library (issue 11: nnU-Net plans).

The config is checked before anything is written (it parses back as the config and validates),
then written to an exclusive temporary file beside the output and renamed onto it, so a failure
leaves no file behind. An existing output is replaced only if `unetgen import` wrote it (its
marker comment, `unetgen.outputs.IMPORT_MARKER`, checked by `unetgen.outputs.check_replaceable`); it is
never the plans file itself.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .. import atomic
from ..config import documents
from ..config.io import ConfigError, validate_document
from ..interop.plans import check_schema_marker
from .args import check_output
from .errors import note, show


def cmd_import(args: argparse.Namespace) -> int:
    from ..interop import nnunet_yaml

    out = Path(args.output)
    _check_not_plans(out, args.plans)  # said first: the worst mistake
    check_output(args.output)  # new, or a config `unetgen import` wrote (unetgen.outputs)
    text = nnunet_yaml(  # UnsupportedModelError, a malformed plans file, bad channels: ValueErrors, one line each
        args.plans,
        args.configuration,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        deep_supervision=not args.no_deep_supervision,
        schema=_schema_marker(args.schema, out),
    )
    _check_config_text(text, args.output)
    _write_new(out, text)
    note(f"wrote {show(args.output)}")
    return 0


def _schema_marker(schema: str, out: Path) -> str:
    """`--schema` as the marker gives it: a URL as it is, a path relative to the output's folder."""
    check_schema_marker(schema, "--schema")
    if "://" in schema:
        return schema
    marker = Path(os.path.relpath(Path(schema).resolve(), out.resolve().parent)).as_posix()
    check_schema_marker(marker, "--schema (relative to the output)")
    return marker


def _check_not_plans(out: Path, plans: str) -> None:
    """`out` is not the plans file (nor a hard link to it)."""
    if os.path.lexists(out) and _same_file(out, plans):
        raise ValueError(f"--output {show(str(out))} is the plans file itself; write the config to another file")


def _same_file(a: Path, b: str) -> bool:
    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):  # the plans file is missing or unreadable: its own error comes next
        return False


def _check_config_text(text: str, output: str) -> None:
    """The text parses as the file will be read (`unetgen.config.documents`) and validates."""
    try:
        doc = documents.parse(text, "yaml")
    except documents.ParseError as err:
        raise ConfigError(
            f"{show(output)}: the written YAML would not parse ({err.message}); nothing was written"
        ) from None
    validate_document(doc.value, output, doc.positions)


def _write_new(path: Path, text: str) -> None:
    """Write `text` through `unetgen.atomic` (an exclusive temporary beside `path`, renamed onto
    it); on any failure only that temporary is removed."""
    try:
        atomic.write_bytes(path, text.encode("utf-8"))
    except OSError as err:
        raise ValueError(
            f"--output {show(str(path))}: cannot write it ({atomic.reason(err)}); nothing was written"
        ) from None
