"""Interchange with the U-Nets people already run: nnU-Net plans, nnU-Net and MONAI modules.
The code lives in `convert` (see its docstring); this package re-exports its public names
(those outside `__all__` as redundant aliases)."""

from .convert import MAX_PLANS_BYTES as MAX_PLANS_BYTES
from .convert import NNUNET_CLASSES as NNUNET_CLASSES
from .convert import UP_FIRST as UP_FIRST
from .convert import (
    UnsupportedModelError,
    convert,
    copy_weights,
    from_nnunet_plans,
    to_nnunet_architecture,
)
from .convert import nnunet_yaml as nnunet_yaml

__all__ = ["UnsupportedModelError", "convert", "copy_weights", "from_nnunet_plans", "to_nnunet_architecture"]
