"""`unetgen draw`: the network as a diagram in the style of the paper's Figure 1."""

from __future__ import annotations

import argparse
from pathlib import Path

from .args import check_output, read_config, spatial
from .errors import CommandError, UsageError, note, show


def cmd_draw(args: argparse.Namespace) -> int:
    """The Figure-1-style diagram: .svg as is, .png and .pdf through cairosvg (the `render` extra)."""
    from ..draw import draw_unet

    suffix = Path(args.output).suffix.lower()
    if suffix not in (".svg", ".png", ".pdf"):
        raise UsageError(f"-o {show(args.output)}: unknown format {show(suffix or '(none)')}; use .svg, .png, .pdf")
    cfg = read_config(args.config)
    check_output(args.output, "-o")
    svg = draw_unet(cfg, None if args.input_size is None else spatial(cfg, args.input_size))
    try:
        if suffix == ".svg":
            Path(args.output).write_text(svg, encoding="utf-8")
        else:
            _render(svg, suffix, args.output)
    except OSError as err:
        raise CommandError(f"cannot write {show(args.output)}: {err.strerror or err}") from err
    note(f"wrote {show(args.output)}")
    return 0


def _render(svg: str, suffix: str, output: str) -> None:
    """Write `svg` to `output` as .png (at twice the size) or .pdf."""
    try:
        import cairosvg  # cairocffi raises OSError when the system cairo library is missing
    except (ImportError, OSError) as err:
        raise CommandError(
            f"writing {suffix} needs the optional renderer: pip install 'unetgen[render]' "
            f"(cairosvg, with the system cairo library, e.g. apt-get install libcairo2); {err}"
        ) from err
    render = cairosvg.svg2png if suffix == ".png" else cairosvg.svg2pdf
    render(bytestring=svg.encode("utf-8"), write_to=output, scale=2 if suffix == ".png" else 1)
