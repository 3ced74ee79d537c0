"""Compatibility path: the code lives in unetgen/predict/tiling.py."""

from .predict.tiling import *  # noqa: F403
from .predict.tiling import (  # noqa: F401  (public, but not in __all__)
    GAUSSIAN_SIGMA,
    ArraySource,
    Blend,
    Job,
    Journal,
    Sink,
    TensorSource,
    __all__,
    prepare,
    run,
)
