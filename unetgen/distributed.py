"""Compatibility path: the code lives in unetgen/predict/distributed.py."""

from .predict.distributed import *  # noqa: F403
from .predict.distributed import __all__  # noqa: F401
