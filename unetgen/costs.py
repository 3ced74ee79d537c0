"""Compatibility path: the code lives in unetgen/analysis/costs.py."""

from .analysis.costs import *  # noqa: F403
from .analysis.costs import __all__  # noqa: F401
