"""Compatibility path: the code lives in unetgen/predict/arrays.py."""

from .predict.arrays import *  # noqa: F403
from .predict.arrays import __all__  # noqa: F401
