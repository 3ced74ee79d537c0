"""Compatibility path: the code lives in unetgen/predict/ (plan.py, geometry.py, sources.py,
sinks.py, journal.py, run.py, options.py). Names imported `as` themselves are public too, but
not in `__all__`."""

from .predict.geometry import GAUSSIAN_SIGMA as GAUSSIAN_SIGMA
from .predict.geometry import default_block_shape
from .predict.journal import Journal as Journal
from .predict.options import Blend as Blend
from .predict.options import OutputType, output_dtype
from .predict.plan import (
    DEFAULT_MEMORY_BUDGET,
    DEFAULT_MEMORY_LIMIT,
    DEFAULT_OVERLAP,
    EvenStarts,
    TilePlan,
    check_memory,
    estimate_tile_memory,
    plan_tiles,
)
from .predict.run import Job as Job
from .predict.run import predict_tiled
from .predict.run import prepare as prepare
from .predict.run import run as run
from .predict.sinks import Sink as Sink
from .predict.sinks import output_layout
from .predict.sources import ArraySource as ArraySource
from .predict.sources import TensorSource as TensorSource
from .predict.sources import check_image

__all__ = [
    "DEFAULT_MEMORY_BUDGET",
    "DEFAULT_MEMORY_LIMIT",
    "DEFAULT_OVERLAP",
    "EvenStarts",
    "OutputType",
    "TilePlan",
    "check_image",
    "check_memory",
    "default_block_shape",
    "estimate_tile_memory",
    "output_dtype",
    "output_layout",
    "plan_tiles",
    "predict_tiled",
]
