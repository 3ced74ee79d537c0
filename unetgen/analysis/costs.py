"""What a config costs, from integer arithmetic alone (no model, no memory).

`count_parameters` equals ``sum(p.numel() for p in build_unet(config).parameters())``.

`count_macs` counts the multiply-adds of every convolution and transposed convolution, the way
`torch.utils.flop_counter.FlopCounterMode` does (its FLOPs / 2): output positions x kernel
volume x input channels x output channels per conv (input positions for a transposed conv, which
for kernel = stride is the same total as output positions x 1; an interpolation's 1x1 conv runs on
the coarser map, before the interpolation). Bias additions, norms,
activations, pooling, interpolation, crops, concatenations and the attention gate's elementwise
products are not counted (they are cheap, and FlopCounterMode ignores them too).

torchinfo's "mult-adds" charge a transposed conv its whole weight at every *output* position:
stride**dims times its true cost (4x for the paper's 2x2 up-convolutions), and add the biases,
so for the paper's network at 572x572 torchinfo reports 167.46 G (167.34 G with batch norm, whose
convs have no bias) where the convolutions do 150.43 G.

Both are sums over the network's ops (`unetgen.analysis.ops`); sizes come from `op_shapes`, after
`unetgen.shapes` has checked the input.
"""

from __future__ import annotations

from collections.abc import Sequence

from ..config.io import ConfigSource, resolve_config
from . import shapes
from .arguments import as_count, as_flag
from .ops import INPUT, network_ops, op_shapes

__all__ = ["DEFAULT_MAX_PARAMETERS", "ParameterBudgetError", "check_parameter_budget", "count_macs", "count_parameters"]

DEFAULT_MAX_PARAMETERS = 2_000_000_000
"""`build_unet` refuses configs with more parameters (8 GB of float32 weights) unless the caller
passes a larger `max_parameters` (or None); the paper's network has 31,030,658."""


class ParameterBudgetError(ValueError):
    """A config with more parameters than the caller allowed."""


def count_parameters(config: ConfigSource) -> int:
    """The number of learnable parameters of the model `config` describes: the sum over its ops."""
    config = resolve_config(config)
    return sum(op.parameters for op in network_ops(config))


def count_macs(config: ConfigSource, input_shape: Sequence[int], *, training: bool = False) -> int:
    """Multiply-adds of all convolutions for one sample of spatial `input_shape` (multiply by the
    batch size for a batch), as FlopCounterMode counts them (FLOPs / 2). `training` adds the
    deep-supervision heads, which run only in training mode. Raises `InputShapeError` for an
    invalid shape."""
    config, training = resolve_config(config), as_flag("training", training)
    shape = shapes.as_shape(config, input_shape)
    shapes.output_shape(config, shape)  # validates, with the helpful error
    out = op_shapes(config, shape)
    total = 0
    for op in network_ops(config):
        if op.training_only and not training:
            continue
        source = shape if op.inputs[0] == INPUT else out[op.inputs[0]]
        total += op.macs(source, out[op.index])
    return total


def check_parameter_budget(config: ConfigSource, max_parameters: int | None = DEFAULT_MAX_PARAMETERS) -> int:
    """The parameter count of `config`; raises `ParameterBudgetError` if it exceeds `max_parameters`
    (None: no limit)."""
    config = resolve_config(config)
    max_parameters = None if max_parameters is None else as_count("max_parameters", max_parameters, minimum=0)
    count = count_parameters(config)
    if max_parameters is not None and count > max_parameters:
        raise ParameterBudgetError(
            f"the config has {count:,} parameters ({count * 4 / 2**30:.1f} GiB as float32), more than "
            f"max_parameters={max_parameters:,}; pass build_unet(..., max_parameters={count}) or "
            "max_parameters=None to build it anyway, or device='meta' to inspect it without memory"
        )
    return count
