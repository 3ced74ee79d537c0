"""`unetgen import`: a unetgen config for a network of another library (issue 11: nnU-Net plans)."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from ..config.io import load_config
from .args import check_output
from .errors import note


def cmd_import(args: argparse.Namespace) -> int:
    from ..interop import nnunet_yaml

    check_output(args.output)
    out = Path(args.output)
    schema = args.schema
    if "://" not in schema:
        schema = Path(os.path.relpath(Path(schema).resolve(), out.resolve().parent)).as_posix()
    text = nnunet_yaml(  # UnsupportedModelError, a malformed plans file, bad channels: ValueErrors, one line each
        args.plans,
        args.configuration,
        in_channels=args.in_channels,
        out_channels=args.out_channels,
        deep_supervision=not args.no_deep_supervision,
        schema=schema,
    )
    out.write_text(text, encoding="utf-8")
    load_config(out)  # what was written validates
    note(f"wrote {out}")
    return 0
