"""How tiles are computed: the inference fast path (`inference_model`), autocast on CUDA (`amp`)
and test-time mirroring (`tta="flip"`), each checked with a ValueError naming the option.

- **Fast path** (`optimize=True`, the default of `predict_tiled`, `unetgen predict` and
  `predict_distributed`): a unetgen `UNet` runs as `optimize_for_inference(model)`, an eval-only
  copy with batch norm folded into the convolutions and channels-last layout (2D/3D on CPU and
  CUDA), made once per run; the user's model is never changed. Its outputs equal the eager
  model's to float rounding. `torch.compile` is not part of it: on CPU it measured no faster for
  2D tiles and about 10% faster for 3D ones after 15-35 s of compiling (docs/tiling.md); pass
  `optimize_for_inference(model, compile=True)` as the model to use it anyway.
- **Autocast** (`amp="bf16"` or `"fp16"`): the forward runs under `torch.autocast` on CUDA, the
  tiles' outputs are cast back to the model's dtype before they are blended, averaged or
  converted. Refused on other devices: CPU autocast measured about 10x slower than float32 on a
  CPU without bf16 units (docs/tiling.md). Its error can only be measured on a GPU
  (`benchmarks/sliding_window.py --device cuda --amp bf16`).
- **Test-time mirroring** (`tta="flip"`, nnU-Net's mirroring): every tile is predicted once per
  combination of flips of the `tta_axes` (default: every spatial axis; 2**k passes for k axes),
  each prediction flipped back, and the predictions averaged: probabilities (softmax, sigmoid for
  one channel) for `output_type` "probabilities" and "labels", logits for "logits" (as
  nnU-Net v2's `nnUNetPredictor._internal_maybe_mirror_and_predict` averages the network's
  outputs; the softmax of averaged logits is not the average of the softmaxes).
"""

from __future__ import annotations

import contextlib
import itertools
from collections.abc import Sequence
from typing import Any, get_args

import torch
from torch import nn

from ..model.optimize import optimize_for_inference
from ..model.unet import UNet
from ..reprs import short_repr
from .options import Amp, Tta, as_index

__all__ = ["AMP_DTYPES", "autocast", "check_amp", "check_optimize", "inference_model", "mirror_axes", "mirror_flips"]

AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def check_optimize(optimize: Any) -> bool:
    if not isinstance(optimize, bool):
        raise ValueError(f"optimize={short_repr(optimize)} must be True (the inference fast path) or False (eager)")
    return optimize


def check_amp(amp: Any, device: torch.device, dtype: torch.dtype) -> Amp | None:
    """`amp` if the model (on `device`, of `dtype`) can run under it, else a ValueError saying why."""
    if amp is None:
        return None
    if amp not in get_args(Amp):
        raise ValueError(f"amp={short_repr(amp)} must be None, 'bf16' or 'fp16' (autocast on CUDA)")
    if device.type != "cuda":
        raise ValueError(
            f"amp={amp!r} runs on CUDA only, the model is on {device.type}: autocast on CPU measured about 10x "
            "slower than float32 (no bf16/fp16 units; docs/tiling.md); move the model to a GPU or drop amp"
        )
    if dtype != torch.float32:
        raise ValueError(f"amp={amp!r} needs a float32 model, the model is {str(dtype).removeprefix('torch.')}")
    if amp == "bf16" and torch.cuda.is_available() and not torch.cuda.is_bf16_supported():  # on a client: its workers
        raise ValueError(f"amp='bf16': this GPU ({torch.cuda.get_device_name(device)}) has no bfloat16; use 'fp16'")
    return amp


def mirror_axes(tta: Any, tta_axes: Any, dims: int) -> tuple[int, ...]:
    """The spatial axes test-time mirroring flips (sorted, distinct); () without `tta`."""
    if tta is None:
        if tta_axes is not None:
            raise ValueError(f"tta_axes={short_repr(tta_axes)} needs tta='flip'")
        return ()
    if tta not in get_args(Tta):
        raise ValueError(f"tta={short_repr(tta)} must be None or 'flip' (test-time mirroring)")
    if tta_axes is None:
        return tuple(range(dims))
    valid = f"distinct spatial axes in 0..{dims - 1} (0 is the first spatial axis), e.g. {tuple(range(dims))}"
    try:
        if isinstance(tta_axes, (str, bytes)):
            raise TypeError
        axes = tuple(as_index(a) for a in tta_axes)
    except TypeError:
        raise ValueError(f"tta_axes={short_repr(tta_axes)} must be {valid}") from None
    if not axes or len(set(axes)) != len(axes) or not all(0 <= a < dims for a in axes):
        raise ValueError(f"tta_axes={short_repr(tta_axes)} must be {valid}")
    return tuple(sorted(axes))


def mirror_flips(axes: Sequence[int]) -> list[tuple[int, ...]]:
    """Every combination of flips of the spatial `axes`, as tensor dims of an (N, C, *spatial)
    batch, the identity first, then by number of axes (nnU-Net's order): 2**len(axes) items."""
    dims = [2 + a for a in axes]
    return [c for k in range(len(dims) + 1) for c in itertools.combinations(dims, k)]


def inference_model(model: nn.Module, optimize: bool) -> nn.Module:
    """The module that computes the tiles: with `optimize`, a unetgen `UNet` becomes
    `optimize_for_inference(model)` (a copy: the model's weights once more in memory, less for
    the folded norms; see `unetgen.model.optimize`); anything else (an `InferenceUNet`, a compiled
    model, `optimize=False`) runs as given."""
    if optimize and isinstance(model, UNet):  # not an InferenceUNet or a compiled model: those run as given
        return optimize_for_inference(model)
    return model


def autocast(amp: Amp | None, device: torch.device) -> contextlib.AbstractContextManager[Any]:
    """`torch.autocast` for `amp` on `device` (checked by `check_amp`), or a no-op."""
    if amp is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=AMP_DTYPES[amp])
