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

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.modules.conv import _ConvNd
from torch.nn.modules.instancenorm import _InstanceNorm

from ..analysis.ops import Act, Conv, Linear, NormOp, Op, network_ops
from ..analysis.shapes import InputShapeError
from ..config.diagnostics import short_repr
from ..config.options import PReLU
from ..model.unet import UNet
from ..reprs import short_text
from .options import UnsupportedModelError
from .registry import find_output

__all__ = [
    "PAIRED",
    "check_outputs_agree",
    "copy_paired",
    "copy_weights",
    "main_output",
    "signature",
    "unetgen_layers",
]

PAIRED = (_ConvNd, _BatchNorm, _InstanceNorm, nn.GroupNorm, nn.PReLU, nn.Linear)
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
    if isinstance(m, nn.Linear):  # a squeeze-and-excitation's (unetgen's ChannelLinear keeps the singleton axes)
        return ("linear", m.in_features, m.out_features, m.bias is not None)
    raise AssertionError(type(m))


# =============================================================================================
# a unetgen model and a converted peer's layers


def _paired_op(op: Op) -> bool:
    """Whether the module of `op` has weights or statistics (a `PAIRED` layer)."""
    return isinstance(op, (Conv, NormOp, Linear)) or (isinstance(op, Act) and isinstance(op.option, PReLU))


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
        for i, (s, t) in enumerate(zip(source, target, strict=True)):
            mine, theirs = t.state_dict(), s.state_dict()
            if set(theirs) != set(mine):
                raise UnsupportedModelError(
                    f"{peer}: layer {i} ({type(s).__name__}) holds {short_repr(sorted(theirs))}, unetgen's "
                    f"{short_repr(sorted(mine))}"
                )
            for key, value in theirs.items():
                mine[key].copy_(value)


# =============================================================================================
# copy_weights: the generic fallback


def copy_weights(source: nn.Module, target: nn.Module, example_input: torch.Tensor) -> None:
    """Copy the weights and buffers of `source` (any U-Net) into `target` (usually a unetgen
    `UNet` built to match) by pairing their parametric layers (convs, transposed convs, norms,
    PReLUs, linear layers) in forward-execution order on `example_input`, checking kinds and shapes, then
    checking each pair numerically in eval mode: where a layer's input in `target` is the
    source's with its channel groups rotated (a concatenation in the other order), the input
    channels of the target's weight are permuted to match. Raises `UnsupportedModelError` naming
    the first layer that cannot be paired or whose input differs, or when the two models' outputs
    on `example_input` still differ after the copy (hooks, an overridden forward). An
    `example_input` that is not a floating-point (N, C, *spatial) tensor either model can run
    (channels, dtype, device) is a `ValueError` naming what the models expect."""
    _check_example(source, target, example_input)
    if isinstance(target, UNet):  # its op walk's order, the deep-supervision heads included (training only)
        src_layers = _peer_order(source) or _execution_order(source, example_input, "source")
        tgt_layers = unetgen_layers(target)
    else:
        src_layers = _execution_order(source, example_input, "source")
        tgt_layers = _execution_order(target, example_input, "target")
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
    shape = tuple(example_input.shape)
    theirs = main_output(source, example_input, "source", find_output(source))  # a known peer: its logits
    check_outputs_agree(theirs, main_output(target, example_input, "target"), "copy_weights", shape)


def _peer_order(source: nn.Module) -> list[nn.Module] | None:
    """A peer that `convert` knows: its parametric layers as its converter pairs them (nnU-Net's
    residual units run their shortcut before their convs; its deep-supervision heads run in eval
    mode too), or None where no converter reads it (then: execution order)."""
    from .registry import find_converter  # the converters import this module

    try:
        return find_converter(source)(source, True)[1]
    except (UnsupportedModelError, AttributeError, TypeError, IndexError, KeyError, ValueError):
        return None


def _check_example(source: Any, target: Any, x: Any) -> None:
    """Two modules and a floating-point (N, C, *spatial) tensor whose channels the target (a
    unetgen UNet: its config; else its first conv) and the source's first conv take."""
    for name, model in (("source", source), ("target", target)):
        if not isinstance(model, nn.Module):
            raise ValueError(f"copy_weights: {name} must be a torch nn.Module, not {type(model).__name__}")
    if not isinstance(x, torch.Tensor):
        raise ValueError(f"copy_weights: example_input must be a torch.Tensor (N, C, *spatial), not {type(x).__name__}")
    if not x.is_floating_point() or x.dim() < 3:
        raise ValueError(
            f"copy_weights: example_input of shape {tuple(x.shape)} and dtype {x.dtype} must be a floating-point "
            "tensor (N, C, *spatial), e.g. torch.randn(1, C, 64, 64)"
        )
    if not bool(torch.isfinite(x).all()):
        raise ValueError("copy_weights: example_input holds NaN or infinity; pass finite values, e.g. torch.randn")
    for name, model in (("target", target), ("source", source)):
        expected = _input_channels(model)
        if expected is not None and x.shape[1] != expected[0]:
            raise ValueError(
                f"copy_weights: example_input of shape {tuple(x.shape)} has {x.shape[1]} channels, but the {name} "
                f"takes {expected[0]} ({expected[1]}): pass a tensor of shape (N, {expected[0]}, *spatial)"
            )
    if isinstance(target, UNet):
        target.check_input(x)  # InputShapeError naming the nearest valid sizes


def _input_channels(model: nn.Module) -> tuple[int, str] | None:
    """(channels, what says so) of what `model` takes: a unetgen UNet's in_channels, else its
    first conv's (in registration order); None if it has no conv."""
    if isinstance(model, UNet):
        return model.config.in_channels, "its config's in_channels"
    for name, m in model.named_modules():
        if isinstance(m, _ConvNd):
            return m.in_channels, f"its first conv {name!r}"
    return None


def main_output(
    model: nn.Module, x: torch.Tensor, name: str, call: Callable[[nn.Module, torch.Tensor], Any] | None = None
) -> torch.Tensor:
    """The main output of `model` on `x` in eval mode, without gradients (the mode restored;
    nnU-Net's list of outputs: its first); `call(model, x)` runs it where given (a peer's
    logits, `registry.find_output`). A forward that fails, or returns no tensor, is an
    `UnsupportedModelError` naming `name`."""
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            out: Any = model(x) if call is None else call(model, x)
    except InputShapeError:
        raise
    except Exception as err:  # the model's own code: any failure is a reason not to trust the copy
        raise UnsupportedModelError(
            f"{name}: its forward fails on an input of shape {tuple(x.shape)} ({type(err).__name__}: "
            f"{short_text(str(err))}); unetgen cannot check that the two compute the same function"
        ) from None
    finally:
        model.train(was_training)
    if isinstance(out, (list, tuple)) and out:
        out = out[0]
    if not isinstance(out, torch.Tensor):
        raise UnsupportedModelError(f"{name}: its forward returns a {type(out).__name__}, not a tensor")
    return out


_TOLERANCE = {torch.float64: 1e-9, torch.float32: 1e-4}  # relative to the output's scale; 1e-2 otherwise
_ACCELERATOR_TOLERANCE = 1e-2  # off the CPU, float32 convs may run in TF32 and pick other algorithms per call


def check_outputs_agree(theirs: torch.Tensor, mine: torch.Tensor, name: str, shape: tuple[int, ...]) -> None:
    """`mine` (the unetgen model's output) equals `theirs` (the peer's) to round-off for their
    dtype, NaN and infinities where both have them; else `UnsupportedModelError` naming the
    largest difference and the likely causes."""
    likely = (
        "likely causes: forward hooks, a subclass or a patched class that overrides forward, or a submodule "
        "swapped for one that computes something else; unetgen copies only the network its layers describe"
    )
    if theirs.shape != mine.shape:
        raise UnsupportedModelError(
            f"{name}: on an input of shape {shape} the source returns {tuple(theirs.shape)}, the unetgen model "
            f"{tuple(mine.shape)}; {likely}"
        )
    a, b = theirs.detach().double(), mine.detach().double()
    tol = _TOLERANCE.get(theirs.dtype, 1e-2)
    if theirs.device.type != "cpu" and theirs.dtype != torch.float64:
        tol = _ACCELERATOR_TOLERANCE
    scale = max(1.0, float(a.nan_to_num(nan=0.0, posinf=0.0, neginf=0.0).abs().max())) if a.numel() else 1.0
    close = torch.isclose(a, b, rtol=tol, atol=tol * scale, equal_nan=True)
    if bool(close.all()):
        return
    worst = float((a - b).abs()[~close].nan_to_num(nan=math.inf).max())
    raise UnsupportedModelError(
        f"{name}: the unetgen model does not compute the same function as the source: on an input of shape "
        f"{shape} their outputs differ by up to {worst:.3g} (tolerance {tol * scale:.1g}); {likely}"
    )


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
    """As many layers on both sides, of the same kinds and shapes, pair by pair; else the first
    position where the two differ, with both layers' names, kinds and shapes."""
    for i, (s, t) in enumerate(zip(src_layers, tgt_layers, strict=False)):
        ss, st_ = _shape_signature(s), _shape_signature(t)
        if ss != st_:
            count = (
                f"source runs {len(src_layers)} parametric layers, target {len(tgt_layers)}; "
                if len(src_layers) != len(tgt_layers)
                else ""
            )
            raise UnsupportedModelError(
                f"{count}the two part at layer {i}: cannot pair source layer {names_s[s]!r} {ss} with target layer "
                f"{names_t[t]!r} {st_} (layers 0..{i - 1} pair)"
            )
    if len(src_layers) != len(tgt_layers):
        n = min(len(src_layers), len(tgt_layers))
        longer, which = (src_layers, "source") if len(src_layers) > n else (tgt_layers, "target")
        names = names_s if which == "source" else names_t
        extra = short_repr([f"{names[m]} {_shape_signature(m)}" for m in longer[n : n + 3]])
        raise UnsupportedModelError(
            f"source runs {len(src_layers)} parametric layers, target {len(tgt_layers)}: the first {n} pair, then "
            f"the {which} has {len(longer) - n} more from layer {n}: {extra} (deep-supervision heads? a target "
            "built without deep_supervision, or a source that runs its heads in eval mode)"
        )


def _run_hooked(
    model: nn.Module, layers: Iterable[nn.Module], hook: Callable[..., None], x: torch.Tensor, which: str
) -> None:
    """One eval-mode forward of `x` with `hook` as a forward pre-hook on `layers`; the model's
    mode is restored and the hooks removed afterwards. A forward that fails is a `ValueError`
    naming `which` model and what may be wrong with `x`."""
    handles = [m.register_forward_pre_hook(hook) for m in layers]
    was_training = model.training
    try:
        model.eval()
        with torch.no_grad():
            model(x)
    except InputShapeError:
        raise
    except Exception as err:  # the model's own code (a hand-written U-Net): say what was run
        raise ValueError(
            f"copy_weights: the {which} model fails on example_input of shape {tuple(x.shape)}, {x.dtype}, "
            f"{x.device} ({type(err).__name__}: {short_text(str(err))}){_hint(model, x)}"
        ) from None
    finally:
        for h in handles:
            h.remove()
        model.train(was_training)


def _execution_order(model: nn.Module, x: torch.Tensor, which: str) -> list[nn.Module]:
    order: list[nn.Module] = []
    seen: set[int] = set()

    def hook(m: nn.Module, *_: Any) -> None:
        if id(m) not in seen:
            seen.add(id(m))
            order.append(m)

    _run_hooked(model, (m for m in model.modules() if isinstance(m, PAIRED)), hook, x, which)
    return order


def _hint(model: nn.Module, x: torch.Tensor) -> str:
    """What about `x` may not fit `model`: its dtype or device against the weights'."""
    ref = next(iter(model.parameters()), None)
    if ref is not None and ref.dtype != x.dtype:
        return f"; the weights are {ref.dtype}: pass example_input.to({ref.dtype})"
    if ref is not None and ref.device != x.device:
        return f"; the weights are on {ref.device}: pass example_input.to({str(ref.device)!r})"
    return ""


def _record_inputs(model: nn.Module, layers: list[nn.Module], x: torch.Tensor, which: str) -> list[torch.Tensor | None]:
    """Each layer's input in one eval-mode forward of `x` (None: a layer eval mode does not run,
    a unetgen deep-supervision head)."""
    inputs: dict[int, torch.Tensor] = {}

    def hook(m: nn.Module, args: tuple[Any, ...]) -> None:
        inputs.setdefault(id(m), args[0].detach().clone())

    _run_hooked(model, layers, hook, x, which)
    return [inputs.get(id(m)) for m in layers]


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
    src_in = _record_inputs(source, src_layers, x, "source")
    rotated: dict[int, int] = {}  # layer index -> channel rotation of its input, weight permuted
    start = 0
    for _ in range(len(tgt_layers) + 1):  # each pass permutes one more layer, or ends
        tgt_in = _record_inputs(target, tgt_layers, x, "target")
        for k in range(start, len(tgt_layers)):
            a, b = src_in[k], tgt_in[k]
            if a is None or b is None:  # not run in eval mode on one side: its output is checked in training only
                continue
            if k in rotated:
                a = torch.roll(a, -rotated[k], dims=1)
            if isinstance(tgt_layers[k], nn.Linear) and a.numel() == b.numel():  # (B, C) vs (B, C, 1, ..., 1)
                a = a.reshape(b.shape)
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
