"""Compatibility path: the code lives in unetgen/analysis/shapes.py."""

from .analysis.shapes import *  # noqa: F403
from .analysis.shapes import __all__  # noqa: F401
