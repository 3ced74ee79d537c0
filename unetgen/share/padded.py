"""`MirrorPadded`: a valid-padding `UNet` that keeps the size, for tools that predict block-wise.

A valid-padding network loses `halo` pixels on every side. bioimage.io's tools (bioimageio.core
0.11, deepImageJ, ...) predict large images in blocks, but their block-wise prediction cannot use
an output declared smaller than the input (the output-`offset` form fails there). So the
exported network first mirror-pads its input by the halo (reflection without repeating the edge
pixel, as `predict_tiled` mirrors the image's outside), then runs the U-Net: the output has the
input's size, its border pixels see mirrored context, and the package declares the halo so that
block-wise prediction feeds each block with `halo` pixels of real context and crops them off.
Away from the image's border that equals `predict_tiled` exactly (for networks whose output is
local: no instance, group or layer norm).

It is a `UNet` subclass with the same modules, so its state dict is the UNet's own.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch
import torch.nn.functional as F

from ..analysis import costs, shapes
from ..config.io import load_config
from ..config.unet_config import UNetConfig
from ..model.unet import UNet

__all__ = ["MirrorPadded", "mirror_padded"]


class MirrorPadded(UNet):
    """A valid-padding `UNet` whose input is first mirror-padded by the halo, so that the output
    has the input's spatial size. Inputs must be more than `halo` wide on every axis and
    ``size + 2 * halo`` must be valid (`unetgen.share.info.input_sizes(config, mirror_padded=True)`).

    `config` may be a `UNetConfig` or a mapping (the form a bioimage.io package's
    ``architecture.kwargs`` gives it)."""

    def __init__(self, config: UNetConfig | Mapping[str, Any]) -> None:
        cfg = load_config(config)
        if cfg.padding != "valid":
            raise ValueError(f"MirrorPadded is for padding='valid' networks; this one has padding={cfg.padding!r}")
        costs.check_parameter_budget(cfg)  # as build_unet does: a package's config may be untrusted
        super().__init__(cfg)
        self.halo = shapes.halo(cfg)  # raises for stem_stride != 1 (no halo)
        # F.pad takes the last axis first: (x_lo, x_hi, y_lo, y_hi, ...)
        self.pad = tuple(p for h in reversed(self.halo) for p in (h, h))

    def check_spatial(self, spatial: tuple[int, ...]) -> None:
        """Each axis more than `halo` wide (reflection needs it), and ``size + 2 * halo`` valid."""
        for axis, (size, h) in enumerate(zip(spatial, self.halo, strict=True)):
            if size <= h:
                raise shapes.InputShapeError(
                    f"input size {size} on axis {axis} is not more than the halo {h}: mirror padding needs "
                    f"at least {h + 1}"
                )
        shapes.output_shape(self.config, tuple(s + 2 * h for s, h in zip(spatial, self.halo, strict=True)))

    def forward(self, x: torch.Tensor) -> torch.Tensor | list[torch.Tensor]:
        if not (torch.jit.is_tracing() or torch.jit.is_scripting() or torch.compiler.is_compiling()):
            self.check_input(x)  # the unpadded input, by `check_spatial` above
        return self._forward(F.pad(x, self.pad, mode="reflect"))


def mirror_padded(unet: UNet) -> MirrorPadded:
    """A `MirrorPadded` network with `unet`'s config and weights, on its device and dtype, in eval mode."""
    ref = next(unet.parameters())
    padded = MirrorPadded(unet.config).to(device=ref.device, dtype=ref.dtype)
    padded.load_state_dict(unet.state_dict())
    return padded.eval()
