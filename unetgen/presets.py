"""Compatibility path: the code lives in unetgen/config/presets.py."""

from .config.presets import *  # noqa: F403
from .config.presets import __all__  # noqa: F401
