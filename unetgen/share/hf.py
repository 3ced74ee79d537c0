"""`UNetHub`: `huggingface_hub`'s `from_pretrained` / `save_pretrained` for unetgen folders.

Needs `huggingface_hub` (the `hub` extra: a few pure-Python packages and the small `hf-xet`
wheel, nothing heavy). `UNetHub.from_pretrained("DIR")` on a folder written by
`unetgen.share.hub.save_folder` works offline: `huggingface_hub` reads config.json (the
UNetConfig fields, passed to `UNetHub(**fields)`) and loads model.safetensors into it (the
state dict of a `UNetHub` is a `UNet`'s); preprocessing.json, when there, becomes its
`preprocessing`. A repository id (``"user/model"``) downloads from the Hub instead.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from huggingface_hub import PyTorchModelHubMixin

from ..analysis import costs
from ..checkpoint import save_unet
from ..config.io import load_config
from ..config.preprocessing import load_preprocessing
from ..model.unet import UNet
from .hub import PREPROCESSING, WEIGHTS

__all__ = ["UNetHub"]


class UNetHub(
    UNet,
    PyTorchModelHubMixin,
    library_name="unetgen",
    tags=["unetgen", "unet", "image-segmentation"],
    pipeline_tag="image-segmentation",
):
    """A `UNet` with `from_pretrained`, `save_pretrained` and `push_to_hub`; built from config
    fields (as config.json holds them): ``UNetHub(depth=3, padding="same")``."""

    def __init__(self, **fields: Any) -> None:
        config = load_config(fields)
        costs.check_parameter_budget(config)  # config.json may come from anywhere
        super().__init__(config)
        self.preprocessing = None

    def _save_pretrained(self, save_directory: Path) -> None:
        """The weights as a unetgen checkpoint (`load_unet` reads it), and the spec, if any."""
        patch = getattr(self, "patch_size", None)  # the training patch, when loaded with one
        save_unet(self, Path(save_directory) / WEIGHTS, preprocessing=self.preprocessing, patch_size=patch)
        if self.preprocessing is not None:
            text = json.dumps(self.preprocessing.model_dump(mode="json"), indent=2) + "\n"
            (Path(save_directory) / PREPROCESSING).write_text(text, encoding="utf-8")

    @classmethod
    def _from_pretrained(cls, *, model_id: str, **kwargs: Any) -> UNetHub:  # type: ignore[override]
        model = super()._from_pretrained(model_id=model_id, **kwargs)
        spec = Path(model_id) / PREPROCESSING
        if spec.is_file():
            model.preprocessing = load_preprocessing(spec)
        return model.eval()
