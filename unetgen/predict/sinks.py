"""Where finished blocks are written: `Sink` (a tensor, or any array-like that supports slice
assignment: NumPy, a memmap, zarr), `check_out` (an `out=` array fits the prediction) and
`output_layout` (shape, dtype and chunks of a prediction, without reading the image)."""

from __future__ import annotations

from collections.abc import MutableMapping, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from .geometry import axis_blocks, default_block_shape
from .journal import Journal
from .options import OutputType, config_of, output_dtype, positive_ints
from .plan import TilePlan, plan_tiles
from .sources import open_source, spatial_shape

__all__ = ["Sink", "check_out", "output_layout", "stored_record"]


class Sink:
    """Writes finished blocks into `target` ((N, ...) for batched images): a tensor (blocks of
    logits are accumulated in place) or an array-like that supports slice assignment."""

    def __init__(self, target: Any, batched: bool, in_place: bool) -> None:
        self.target, self.batched, self.in_place = target, batched, in_place
        self.device = target.device if isinstance(target, torch.Tensor) else torch.device("cpu")

    @property
    def attrs(self) -> MutableMapping[str, Any] | None:
        """The target's zarr-like `attrs` mapping, where a resumable run keeps its `Journal`; None if it has none."""
        attrs = getattr(self.target, "attrs", None)
        return attrs if isinstance(attrs, MutableMapping) else None

    def stored_attrs(self) -> Any:
        """The target's `Journal` record as stored now (`stored_record`)."""
        return stored_record(self.target)

    def _index(self, n: int, region: Sequence[slice]) -> tuple[Any, ...]:
        return ((n,) if self.batched else ()) + (Ellipsis, *region)

    def view(self, n: int, region: Sequence[slice]) -> torch.Tensor | None:
        """The block of the result itself, to accumulate into (tensor targets of logits)."""
        return self.target[self._index(n, region)] if self.in_place else None

    def write(self, n: int, region: Sequence[slice], value: torch.Tensor) -> None:
        if self.in_place:
            return
        if isinstance(self.target, torch.Tensor):
            self.target[self._index(n, region)] = value.to(self.device)
        else:
            value = value.float() if value.dtype == torch.bfloat16 else value
            self.target[self._index(n, region)] = value.cpu().numpy()


def stored_record(target: Any) -> Any:
    """The `Journal` record of `target` as stored now, read again from its store (a zarr array's
    `attrs` are cached when it is opened, so another writer's changes would go unseen); None if
    it has none or cannot be read."""
    store_path = getattr(target, "store_path", None)
    attrs = getattr(target, "attrs", None)
    if store_path is None:
        return attrs.get(Journal.KEY) if isinstance(attrs, MutableMapping) else None
    import zarr

    try:
        return zarr.open_array(store=store_path, mode="r").attrs.get(Journal.KEY)
    except Exception:  # removed or replaced meanwhile (zarr raises several types): no record of this run
        return None


def check_out(out: Any, shape: tuple[int, ...], output_type: OutputType, out_channels: int) -> None:
    """`out` is a writable array of `shape` whose dtype holds `output_type`, or a clear error."""
    got = tuple(getattr(out, "shape", ()))
    if got != shape or not hasattr(out, "__setitem__"):
        raise ValueError(
            f"out of shape {got} cannot hold the {output_type} of this image: it must be a writable array of "
            f"shape {shape} (unetgen.arrays.create_output makes one)"
        )
    if isinstance(out, torch.Tensor):
        kind = "f" if out.is_floating_point() else "b" if out.dtype == torch.bool else "i"
        top = torch.iinfo(out.dtype).max if kind == "i" else None
    else:
        kind, top = np.dtype(out.dtype).kind, None
        top = np.iinfo(out.dtype).max if kind in "iu" else None
    if output_type == "instances":
        if kind not in "iu" or top is None or top < (1 << 31) - 1:
            raise ValueError(f"out of dtype {out.dtype} cannot hold instance labels: use uint32")
        return
    if output_type != "labels" and kind != "f":
        raise ValueError(f"out of dtype {out.dtype} cannot hold {output_type}: use a float dtype")
    if output_type == "labels" and (top is None or top < max(out_channels - 1, 1)):
        raise ValueError(f"out of dtype {out.dtype} cannot hold labels of {out_channels} classes: use uint8 or uint16")


def output_layout(
    model: nn.Module,
    image: Any,
    *,
    output_type: OutputType = "logits",
    block_shape: int | Sequence[int] | None = None,
    plan: TilePlan | None = None,
    **options: Any,
) -> tuple[tuple[int, ...], torch.dtype, tuple[int, ...]]:
    """Shape, dtype and chunks (one chunk per block: see `predict_tiled`) of the prediction of
    `image`, without reading it: what `unetgen.arrays.create_output` creates. `options` are
    `plan_tiles`'s (`tile_size`, `batch_size`, `overlap`, `memory_budget`)."""
    config = config_of(model)
    dtype = next(model.parameters()).dtype
    _, batched, images = open_source(config, image, dtype)
    spatial = spatial_shape(config, image)
    plan = plan if plan is not None else plan_tiles(model, spatial, **options, dtype=dtype)
    channels = () if output_type in ("labels", "instances") else (config.out_channels,)
    block = positive_ints(
        "block_shape", default_block_shape(plan) if block_shape is None else block_shape, len(spatial), broadcast=True
    )
    lengths = []
    for a in range(len(spatial)):
        bounds = axis_blocks(plan, a, block[a]).bounds
        lengths.append(bounds[1] - bounds[0])
    lead = (images,) if batched else ()
    shape = lead + channels + spatial
    chunks = (1,) * len(lead) + channels + tuple(lengths)
    return shape, output_dtype(output_type, config.out_channels, dtype), chunks
