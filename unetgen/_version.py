"""The package version, in a module of its own so that modules inside the package need not
import the package `__init__` to read it."""

__version__ = "0.1.0"
