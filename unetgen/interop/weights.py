"""Weights from one network into another: the layers with weights or statistics (`PAIRED`),
paired one to one, checked to agree in everything but their values, then copied.

- `unetgen_layers(model)`: a unetgen `UNet`'s paired layers in the order its forward runs them,
  read from `unetgen.analysis.ops.network_ops`; the converters list the peer's in that order and
  `copy_paired` copies one list onto the other.
- `copy_weights(source, target, example_input)`: the generic fallback for hand-written U-Nets:
  pairs the layers of both models in forward-execution order (found with hooks) and checks each
  pair numerically.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from ..analysis.ops import Act, Conv, NormOp, Op, network_ops
from ..config.diagnostics import short_repr
from ..config.options import PReLU
from ..model.unet import UNet
from .options import UnsupportedModelError

__all__ = ["PAIRED", "copy_paired", "copy_weights", "signature", "unetgen_layers"]

PAIRED = (_ConvNd, _BatchNorm, _InstanceNorm, nn.GroupNorm, nn.PReLU)
"""The layer classes with weights or statistics that a weight copy pairs."""


def signature(m: nn.Module) -> tuple[Any, ...]:
    """Everything about a layer that must agree for a weight copy to give the same function."""
    if isinstance(m, _ConvNd):
        kind = "transposed conv" if m.transposed else "conv"
        extra = (m.output_padding,) if m.transposed else ()
        return (kind, m.in_channels, m.out_channels, m.kernel_size, m.stride, m.padding, m.dilation, m.groups,
                m.bias is not None, m.padding_mode, *extra)  # fmt: skip
    if isinstance(m, _BatchNorm):
        return ("batch norm", m.num_features, m.eps, m.momentum, m.affine, m.track_running_stats)
    if isinstance(m, _InstanceNorm):
        return ("instance norm", m.num_features, m.eps, m.affine, m.track_running_stats)
    if isinstance(m, nn.GroupNorm):
        return ("group norm", m.num_groups, m.num_channels, m.eps, m.affine)
    if isinstance(m, nn.PReLU):
        return ("prelu", m.num_parameters)
    raise AssertionError(type(m))


# =============================================================================================
# a unetgen model and a converted peer's layers


def _paired_op(op: Op) -> bool:
    """Whether the module of `op` has weights or statistics (a `PAIRED` layer)."""
    return isinstance(op, (Conv, NormOp)) or (isinstance(op, Act) and isinstance(op.option, PReLU))


def unetgen_layers(model: UNet) -> list[nn.Module]:
    """The `PAIRED` layers of `model` in the order its forward runs them in training mode (the
    deep-supervision heads included, after their decoder level)."""
    return [model.get_submodule(op.module) for op in network_ops(model.config) if op.module and _paired_op(op)]


def copy_paired(source: list[nn.Module], target: list[nn.Module], peer: str) -> None:
    """Check that `source[i]` and `target[i]` agree in everything but their values, then copy."""
    if len(source) != len(target):
        raise UnsupportedModelError(
            f"{peer}: {len(source)} parametric layers but the unetgen model has {len(target)}; "
            "the inferred config does not reproduce the network"
        )
    for i, (s, t) in enumerate(zip(source, target, strict=True)):
        if signature(s) != signature(t):
            raise UnsupportedModelError(
                f"{peer}: layer {i} ({type(s).__name__}) does not match unetgen's: {signature(s)} vs {signature(t)}"
            )
    with torch.no_grad():
        for s, t in zip(source, target, strict=True):
            mine = t.state_dict()
            for key, value in s.state_dict().items():
                mine[key].copy_(value)


# =============================================================================================
# copy_weights: the generic fallback


def copy_weights(source: nn.Module, target: nn.Module, example_input: torch.Tensor) -> None:
    """Copy the weights and buffers of `source` (any U-Net) into `target` (usually a unetgen
    `UNet` built to match) by pairing their parametric layers (convs, transposed convs, norms,
    PReLUs) in forward-execution order on `example_input`, checking kinds and shapes, then
    checking each pair numerically in eval mode: where a layer's input in `target` is the
    source's with its channel groups rotated (a concatenation in the other order), the input
    channels of the target's weight are permuted to match. Raises `UnsupportedModelError` naming
    the first layer that cannot be paired or whose input differs."""
    src_layers = _execution_order(source, example_input)
    tgt_layers = _execution_order(target, example_input)
    names_s = {m: n for n, m in source.named_modules()}
    names_t = {m: n for n, m in target.named_modules()}
    _check_pairs(src_layers, tgt_layers, names_s, names_t)
    with torch.no_grad():
        for s, t in zip(src_layers, tgt_layers, strict=True):
            tgt_state = t.state_dict()
            for key, value in s.state_dict().items():
                if key not in tgt_state:
                    raise UnsupportedModelError(f"target layer {names_t[t]!r} has no {key!r} (source {names_s[s]!r})")
                tgt_state[key].copy_(value)
    _check_inputs(source, target, src_layers, tgt_layers, example_input, names_s, names_t)


def _kinds(layers: Iterable[nn.Module]) -> str:
    return short_repr([type(m).__name__ for m in layers])


def _shape_signature(m: nn.Module) -> tuple[Any, ...]:
    return (signature(m)[0], *(tuple(p.shape) for p in m.state_dict().values()))


def _check_pairs(
    src_layers: list[nn.Module],
    tgt_layers: list[nn.Module],
    names_s: dict[nn.Module, str],
    names_t: dict[nn.Module, str],
) -> None:
    """As many layers on both sides, of the same kinds and shapes, pair by pair."""
    if len(src_layers) != len(tgt_layers):
        raise UnsupportedModelError(
            f"source runs {len(src_layers)} parametric layers, target {len(tgt_layers)}: "
            f"{_kinds(src_layers)} vs {_kinds(tgt_layers)}"
        )
    for s, t in zip(src_layers, tgt_layers, strict=True):
        ss, st_ = _shape_signature(s), _shape_signature(t)
        if ss != st_:
            raise UnsupportedModelError(
                f"cannot pair source layer {names_s[s]!r} {ss} with target layer {names_t[t]!r} {st_}"
            )


def _run_hooked(model: nn.Module, layers: Iterable[nn.Module], hook: Callable[..., None], x: torch.Tensor) -> None:
    """One eval-mode forward of `x` with `hook` as a forward pre-hook on `layers`; the model's
    mode is restored and the hooks removed afterwards."""
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _execution_order(model: nn.Module, x: torch.Tensor) -> list[nn.Module]:
    order: list[nn.Module] = []
    seen: set[int] = set()

    def hook(m: nn.Module, *_: Any) -> None:
        if id(m) not in seen:
            seen.add(id(m))
            order.append(m)

    _run_hooked(model, (m for m in model.modules() if isinstance(m, PAIRED)), hook, x)
    return order


def _record_inputs(model: nn.Module, layers: list[nn.Module], x: torch.Tensor) -> list[torch.Tensor]:
    inputs: dict[int, torch.Tensor] = {}

    def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
        inputs.setdefault(id(m), args[0].detach().clone())

    _run_hooked(model, layers, hook, x)
    return [inputs[id(m)] for m in layers]


def _check_inputs(
    source: nn.Module,
    target: nn.Module,
    src_layers: list[nn.Module],
    tgt_layers: list[nn.Module],
    x: torch.Tensor,
    names_s: dict[nn.Module, str],
    names_t: dict[nn.Module, str],
) -> None:
    """Each target layer's input equals its source layer's, in order; where it is the source's
    with the channels rotated, the target's weight is permuted to match and the check reruns."""
    src_in = _record_inputs(source, src_layers, x)
    rotated: dict[int, int] = {}  # layer index -> channel rotation of its input, weight permuted
    start = 0
    for _ in range(len(tgt_layers) + 1):  # each pass permutes one more layer, or ends
        tgt_in = _record_inputs(target, tgt_layers, x)
        for k in range(start, len(tgt_layers)):
            a, b = src_in[k], tgt_in[k]
            if k in rotated:
                a = torch.roll(a, -rotated[k], dims=1)
            if a.shape == b.shape and _close(a, b):
                continue
            shift = None if k in rotated else _rotation(a, b)
            t = tgt_layers[k]
            if shift is None or not isinstance(t, _ConvNd) or t.transposed:
                raise UnsupportedModelError(
                    f"after copying every earlier layer, the input of target layer {names_t[t]!r} "
                    f"{tuple(b.shape)} differs from that of source layer {names_s[src_layers[k]]!r} "
                    f"{tuple(a.shape)}: the two models are not the same function up to there"
                )
            with torch.no_grad():
                t.weight.copy_(torch.roll(src_layers[k].weight, -shift, dims=1))
            rotated[k], start = shift, k
            break
        else:
            return
    raise AssertionError("copy_weights did not converge")


def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    scale = max(1.0, float(a.abs().max())) if a.numel() else 1.0
    tol = (1e-9 if a.dtype == torch.float64 else 1e-4) * scale
    return bool((a - b).abs().max() <= tol) if a.numel() else True


def _rotation(a: torch.Tensor, b: torch.Tensor) -> int | None:
    """k such that b == roll(a, -k) along channels (b = cat(a[:, k:], a[:, :k])), if any."""
    if a.shape != b.shape or a.dim() < 2:
        return None
    for k in range(1, a.shape[1]):
        if _close(torch.roll(a, -k, dims=1), b):
            return k
    return None
