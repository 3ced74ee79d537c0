"""unetgen: U-Nets declared as data, with exact shape arithmetic."""

from .config import UNetConfig
from .costs import count_macs, count_parameters
from .io import ConfigError, dump_config, load_config
from .presets import PRESETS, get_preset
from .shapes import (
    InputShapeError,
    aux_shapes,
    halo,
    input_size_for_output,
    is_valid_input_shape,
    nearest_valid_input_size,
    output_shape,
    skip_crops,
    trace,
    valid_input_sizes,
)
from .unet import UNet, build_unet

__version__ = "0.1.0"

__all__ = [
    "PRESETS",
    "ConfigError",
    "InputShapeError",
    "UNet",
    "UNetConfig",
    "__version__",
    "aux_shapes",
    "build_unet",
    "count_macs",
    "count_parameters",
    "dump_config",
    "get_preset",
    "halo",
    "input_size_for_output",
    "is_valid_input_shape",
    "load_config",
    "nearest_valid_input_size",
    "output_shape",
    "skip_crops",
    "trace",
    "valid_input_sizes",
]
