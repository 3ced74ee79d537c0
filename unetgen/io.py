"""Compatibility path: the code lives in unetgen/config/io.py."""

from .config.io import *  # noqa: F403
from .config.io import MAX_SHOWN, SUFFIXES, __all__  # noqa: F401  (public, but not in __all__)
