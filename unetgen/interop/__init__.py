"""Interchange with the U-Nets people already run: nnU-Net plans, nnU-Net and MONAI modules.

- `plans`: nnU-Net plans files -> `UNetConfig` (`from_nnunet_plans`) and back
  (`to_nnunet_architecture`), and the YAML of `unetgen import nnunet` (`nnunet_yaml`).
- `convert`: an instantiated peer module as a unetgen `UNet` with its weights, through the
  converters of `registry` (`nnunet`: dynamic_network_architectures' networks; `monai`:
  BasicUNet, DynUNet).
- `weights`: `copy_weights`, the generic fallback for hand-written U-Nets, and the pairing and
  checks the converters use.

The peers are never imported: modules are recognised by their class name and module path, and
plans are plain data. This package re-exports the public names (those outside `__all__` as
redundant aliases)."""

from .convert import convert
from .options import UP_FIRST as UP_FIRST
from .options import UnsupportedModelError
from .plans import MAX_PLANS_BYTES as MAX_PLANS_BYTES
from .plans import NNUNET_CLASSES as NNUNET_CLASSES
from .plans import from_nnunet_plans, to_nnunet_architecture
from .plans import nnunet_yaml as nnunet_yaml
from .registry import register_converter as register_converter
from .registry import register_refusal as register_refusal
from .weights import copy_weights

__all__ = ["UnsupportedModelError", "convert", "copy_weights", "from_nnunet_plans", "to_nnunet_architecture"]
