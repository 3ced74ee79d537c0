"""Compatibility path: the code lives in unetgen/config/documents.py."""

from .config.documents import *  # noqa: F403
from .config.documents import MAX_PATH, __all__  # noqa: F401  (public, but not in __all__)
