"""`TilePlan`, the plan of a tiled prediction (`plan_tiles` in `unetgen.predict.plan` makes one),
and `format_bytes`: below both the plan and the tile geometry that reads it."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

__all__ = ["TilePlan", "format_bytes"]


@dataclass(frozen=True)
class TilePlan:
    """How `predict_tiled` covers an image with tiles. Inspect it with `plan_tiles` before running.

    A plan is O(spatial axes) in size whatever the image: `starts` are lazy sequences (a `range`
    for valid padding, an `EvenStarts` for same padding), so planning a 10**9 x 10**9 image costs
    what planning a small one does."""

    image_shape: tuple[int, ...]
    """Spatial shape of the image, and of the prediction."""
    padding: Literal["valid", "same"]
    """The network's padding: `valid` tiles do not overlap in the output, `same` tiles are blended."""
    tile_input: tuple[int, ...]
    """Spatial size of every input tile: a valid input size of the network on every axis."""
    tile_output: tuple[int, ...]
    """Spatial size of every output tile: `tile_input - 2*halo`."""
    halo: tuple[int, ...]
    """Context the network consumes on each side, per axis (0 for same padding)."""
    starts: tuple[Sequence[int], ...]
    """Per axis, where each tile's output begins in image coordinates; its input begins `halo`
    earlier. Each is a lazy sequence of ints (compare with ``tuple(plan.starts[axis])``)."""
    overlap: float
    """Requested overlap between neighbouring tiles (same padding; 0 for valid padding)."""
    batch_size: int
    """Most tiles run through the network at once (the automatic plan lowers it to what fits its
    memory budget); fewer when the images have fewer tiles."""
    memory_bytes: int
    """Estimated peak memory of the forward pass over one batch of min(batch_size, num_tiles)
    tiles (`estimate_tile_memory`, for multi-threaded torch), not counting the result, the
    blocks and the reads (`estimate_memory` adds those)."""
    memory_budget: int | None
    """The budget the tile size was chosen for; None when the tile size was given."""

    @property
    def tiles_per_axis(self) -> tuple[int, ...]:
        return tuple(len(s) for s in self.starts)

    @property
    def num_tiles(self) -> int:
        """Tiles per image."""
        return math.prod(self.tiles_per_axis)

    @property
    def computed_ratio(self) -> float:
        """Input pixels computed / output pixels: 1 is no overhead; the rest is halo, overlap and
        the part of the last tiles beyond the image."""
        return self.num_tiles * math.prod(self.tile_input) / math.prod(self.image_shape)

    def summary(self) -> str:
        """One line for people: tiles, sizes, overhead and memory."""

        def fmt(shape: Sequence[int]) -> str:
            return "x".join(map(str, shape))

        return (
            f"{fmt(self.image_shape)} image, {self.padding} padding: {fmt(self.tiles_per_axis)} = {self.num_tiles} "
            f"tiles of {fmt(self.tile_input)} -> {fmt(self.tile_output)} (halo {fmt(self.halo)}), "
            f"computed/output pixels {self.computed_ratio:.2f}, "
            f"~{format_bytes(self.memory_bytes)} per batch of {min(self.batch_size, self.num_tiles)}"
        )


def format_bytes(n: int) -> str:
    """A byte count for people: 512 bytes, 12 KiB, 382 MiB, 1.5 GiB, 4.2e+09 GiB."""
    if n < 1 << 10:
        return f"{n} bytes"
    if n < 1 << 20:
        return f"{n / 2**10:.0f} KiB"
    if n < 1 << 30:
        return f"{n / 2**20:.0f} MiB"
    if n.bit_length() > 1000:
        return f"about 2**{n.bit_length() - 1} bytes"
    return f"{n / 2**30:.3g} GiB"
