"""`unetgen draw`: the network as a diagram in the style of the paper's Figure 1."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from .args import check_output, read_config, spatial
from .errors import CommandError, UsageError, note, show


def cmd_draw(args: argparse.Namespace) -> int:
    """The Figure-1-style diagram: .svg as is, .png and .pdf through cairosvg (the `render` extra),
    written through an exclusive temporary and a rename (`unetgen.draw.write_diagram`): a failure
    (a full disk) leaves what was at -o and no partial file."""
    from ..atomic import reason
    from ..draw import DIAGRAM_SUFFIXES, draw_unet, write_diagram

    suffix = Path(args.output).suffix.lower()
    if suffix not in DIAGRAM_SUFFIXES:
        raise UsageError(f"-o {show(args.output)}: unknown format {show(suffix or '(none)')}; use .svg, .png, .pdf")
    cfg = read_config(args.config)
    if os.path.isfile(args.config) and os.path.exists(args.output) and os.path.samefile(args.config, args.output):
        raise ValueError(f"-o {show(args.output)} is the CONFIG file itself; write the diagram to another file")
    check_output(args.output, "-o")  # new, or a diagram unetgen drew (unetgen.outputs)
    svg = draw_unet(cfg, None if args.input_size is None else spatial(cfg, args.input_size))
    try:
        write_diagram(svg, args.output)
    except ImportError as err:
        raise CommandError(str(err)) from err
    except OSError as err:
        raise CommandError(
            f"-o {show(args.output)}: cannot write the diagram: {reason(err)}; no partial file was left"
        ) from err
    note(f"wrote {show(args.output)}")
    return 0
