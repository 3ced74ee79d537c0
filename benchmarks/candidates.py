"""Benchmark candidates, declared as data, and the factories that build them.

A candidate is ``factory(workload, **kwargs)`` in ``module``, returning an ``nn.Module``. Hooks are
``"module:function"`` strings, or ``("module:function", kwargs)`` pairs, that take a model and return
the model to time: ``train_hook`` is applied for the training step and memory columns, ``eval_hook``
to a deep copy in eval mode for the eval column. ``measure`` picks the columns a candidate fills
(e.g. an eval-only fast path). Factories import their library lazily, and a candidate whose
``requires`` do not import is skipped, with the reason printed under the table.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from benchmarks.reference import ReferenceUNet
from benchmarks.workloads import Workload

Hook = str | tuple[str, dict[str, Any]]


@dataclass(frozen=True)
class Candidate:
    module: str
    factory: str
    kwargs: dict[str, Any] = field(default_factory=dict)
    train_hook: Hook | None = None
    eval_hook: Hook | None = None
    measure: tuple[str, ...] = ("train", "eval", "memory")
    requires: tuple[str, ...] = ()  # modules that must import, else the candidate is skipped
    note: str = ""


HERE = "benchmarks.candidates"
UNETGEN = ("unetgen",)

CANDIDATES: dict[str, Candidate] = {
    "reference": Candidate(HERE, "reference", note="hand-written U-Net, benchmarks/reference.py"),
    "ref-AA": Candidate(
        HERE, "reference", note="a second, identical reference in its own process: the A/A noise control"
    ),
    "unetgen": Candidate(HERE, "unetgen_unet", requires=UNETGEN, note="unetgen.build_unet at the workload's config"),
    "unetgen-ckpt": Candidate(
        HERE,
        "unetgen_unet",
        kwargs={"options": {"checkpointing": True}},
        measure=("train", "memory"),
        requires=UNETGEN,
        note='unetgen.build_unet with {"checkpointing": true}',
    ),
    "unetgen-infer": Candidate(
        HERE,
        "unetgen_unet",
        eval_hook="unetgen:optimize_for_inference",
        requires=UNETGEN,
        note=(
            "unetgen.build_unet, then unetgen.optimize_for_inference(model) for eval; its train column is the "
            "plain model's, run so that the process's allocator state matches the other candidates'"
        ),
    ),
    "unetgen-cl": Candidate(
        HERE,
        "unetgen_unet",
        train_hook=f"{HERE}:channels_last",
        eval_hook=f"{HERE}:channels_last",
        measure=("train", "eval"),
        requires=UNETGEN,
        note="unetgen.build_unet, model and input in channels_last memory format (train and eval)",
    ),
    "monai": Candidate(
        HERE,
        "monai_basic_unet",
        requires=("monai.networks.nets",),
        note=(
            "monai.networks.nets.BasicUNet(features=(b, 2b, 4b, 8b, 16b, b), act=ReLU, norm=batch or none, "
            "bias=not batch norm, upsample='deconv'). Differs: always same padding (on valid workloads it "
            "sees the same input but computes a larger output); depth fixed at 4 (an extra level on depth-3 "
            "workloads); the last up-convolution keeps 2b channels instead of halving to b; a skip whose "
            "size is odd is matched by replicate-padding the upsampled map."
        ),
    ),
    "nnunet": Candidate(
        HERE,
        "nnunet_plain_conv_unet",
        requires=("dynamic_network_architectures.architectures.unet",),
        note=(
            "dynamic_network_architectures PlainConvUNet(features b..16b, kernel 3, 2 convs per stage, "
            "BatchNorm or no norm, ReLU, conv bias only without norm; nnU-Net's own defaults are instance "
            "norm and leaky ReLU). Differs: always same padding; downsamples with a stride-2 3x3 conv "
            "instead of max pooling; concatenates [up, skip]; the input is zero-padded to a multiple of "
            "2**depth (e.g. 572 -> 576) because it cannot match odd skip sizes; the parameter count includes its "
            "unused 1x1 deep-supervision heads."
        ),
    ),
    "nnunet-AA": Candidate(
        HERE,
        "nnunet_plain_conv_unet",
        requires=("dynamic_network_architectures.architectures.unet",),
        note="a second, identical `nnunet` candidate in its own process: the A/A noise of PlainConvUNet itself",
    ),
    "unetgen-nnunet": Candidate(
        HERE,
        "unetgen_from_nnunet",
        requires=("unetgen", "dynamic_network_architectures.architectures.unet"),
        note=(
            "the `nnunet` candidate's PlainConvUNet converted by unetgen.interop.convert (same config, same "
            "weights, same function): the same zero-padding wrapper, so the two differ only in who builds the net"
        ),
    ),
}


def reference(w: Workload) -> nn.Module:
    return ReferenceUNet(w.in_channels, w.out_channels, w.base, w.depth, w.padding, w.batch_norm, w.dims)


def unetgen_unet(w: Workload, options: dict[str, Any] | None = None) -> nn.Module:
    from unetgen import build_unet

    return build_unet({**w.unetgen_config(), **(options or {})})


class ChannelsLast(nn.Module):
    """Run `net` with weights and input in channels-last memory format."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.fmt = torch.channels_last if next(net.parameters()).dim() == 4 else torch.channels_last_3d
        self.net = net.to(memory_format=self.fmt)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x.contiguous(memory_format=self.fmt))


def channels_last(model: nn.Module) -> nn.Module:
    return ChannelsLast(model)


def monai_basic_unet(w: Workload) -> nn.Module:
    from monai.networks.nets import BasicUNet

    b = w.base
    return BasicUNet(
        spatial_dims=w.dims,
        in_channels=w.in_channels,
        out_channels=w.out_channels,
        features=(b, 2 * b, 4 * b, 8 * b, 16 * b, b),
        act=("relu", {"inplace": True}),
        norm="batch" if w.batch_norm else None,  # type: ignore[arg-type]  # None means no norm layer
        bias=not w.batch_norm,
        dropout=None,  # type: ignore[arg-type]  # None adds no dropout layer at all
        upsample="deconv",
    )


class PadToMultiple(nn.Module):
    """Zero-pad the spatial dims of the input at the end up to a multiple of `multiple`."""

    def __init__(self, net: nn.Module, multiple: int) -> None:
        super().__init__()
        self.net = net
        self.multiple = multiple

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pad: list[int] = []
        for size in reversed(x.shape[2:]):
            pad += [0, -size % self.multiple]
        return self.net(F.pad(x, pad) if any(pad) else x)


def nnunet_plain_conv_unet(w: Workload) -> nn.Module:
    from dynamic_network_architectures.architectures.unet import PlainConvUNet

    conv = {2: nn.Conv2d, 3: nn.Conv3d}[w.dims]
    norm = {2: nn.BatchNorm2d, 3: nn.BatchNorm3d}[w.dims] if w.batch_norm else None
    net = PlainConvUNet(
        input_channels=w.in_channels,
        n_stages=w.depth + 1,
        features_per_stage=[w.base * 2**i for i in range(w.depth + 1)],
        conv_op=conv,
        kernel_sizes=3,
        strides=[1] + [2] * w.depth,
        n_conv_per_stage=2,
        num_classes=w.out_channels,
        n_conv_per_stage_decoder=2,
        conv_bias=not w.batch_norm,
        norm_op=norm,
        norm_op_kwargs={},
        nonlin=nn.ReLU,
        nonlin_kwargs={"inplace": True},
    )
    return PadToMultiple(net, 2**w.depth)


def unetgen_from_nnunet(w: Workload) -> nn.Module:
    from unetgen.interop import convert

    padded = nnunet_plain_conv_unet(w)
    assert isinstance(padded, PadToMultiple)
    return PadToMultiple(convert(padded.net), padded.multiple)
