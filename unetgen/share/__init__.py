"""Packages that take a unetgen model elsewhere, each writing a format its own tools check:

- `bioimageio`: bioimage.io model packages (format 0.5) for Fiji/deepImageJ, ilastik, QuPath,
  napari and bioimageio.core (`export_bioimageio`, and `load_package` for the ones unetgen wrote);
- `hub`: Hugging Face-style model folders (`config.json`, `model.safetensors`, a README model
  card): `save_folder`, `load_folder`, and `UNetHub` for `huggingface_hub`'s `from_pretrained`;
- `monai_bundle`: MONAI bundles (`export_monai_bundle`; unetgen writes bundles, never loads them);
- `info`: what every package says about a model (`ModelInfo`: authors, licence, citations);
- `padded`: `MirrorPadded`, the size-keeping form of a valid-padding network that block-wise
  predictors need.

Functions take a built model plus its preprocessing spec and `ModelInfo`; none depends on the
checkpoint's internals.
"""

from .info import Author, Citation, ModelInfo
from .padded import MirrorPadded

__all__ = ["Author", "Citation", "MirrorPadded", "ModelInfo"]
