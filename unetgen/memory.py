"""Compatibility path: the code lives in unetgen/analysis/memory.py."""

from .analysis.memory import *  # noqa: F403
from .analysis.memory import BLOCK, Optimizer, __all__  # noqa: F401  (public, but not in __all__)
