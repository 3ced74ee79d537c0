"""unetgen: U-Nets declared as data, with exact shape arithmetic."""

from ._version import __version__
from .analysis.costs import count_macs, count_parameters
from .analysis.shapes import (
    InputShapeError,
    aux_shapes,
    halo,
    input_size_for_output,
    is_valid_input_shape,
    min_input_shape,
    nearest_valid_input_size,
    output_shape,
    skip_crops,
    trace,
    valid_input_sizes,
)
from .build import build_unet
from .checkpoint import (
    CheckpointError,
    checkpoint_config,
    checkpoint_metadata,
    checkpoint_preprocessing,
    save_unet,
)
from .config.io import ConfigError, dump_config, load_config
from .config.presets import PRESETS, get_preset
from .config.unet_config import UNetConfig
from .draw import draw_unet
from .model.optimize import optimize_for_inference
from .model.unet import UNet
from .predict.plan import TilePlan, plan_tiles
from .predict.run import predict_tiled
from .share.load import load_unet

__all__ = [
    "PRESETS",
    "CheckpointError",
    "ConfigError",
    "InputShapeError",
    "TilePlan",
    "UNet",
    "UNetConfig",
    "__version__",
    "aux_shapes",
    "build_unet",
    "checkpoint_config",
    "checkpoint_metadata",
    "checkpoint_preprocessing",
    "count_macs",
    "count_parameters",
    "draw_unet",
    "dump_config",
    "get_preset",
    "halo",
    "input_size_for_output",
    "is_valid_input_shape",
    "load_unet",
    "load_config",
    "min_input_shape",
    "nearest_valid_input_size",
    "optimize_for_inference",
    "output_shape",
    "plan_tiles",
    "predict_tiled",
    "save_unet",
    "skip_crops",
    "trace",
    "valid_input_sizes",
]
