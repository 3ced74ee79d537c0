"""Model folders laid out as the Hugging Face Hub lays them out: `save_folder` writes one,
`load_folder` reads it back.

    config.json          the UNetConfig, every field (`build_unet("DIR/config.json")` builds it)
    model.safetensors    the weights, with unetgen's metadata and the preprocessing spec: a unetgen
                         checkpoint (`load_unet` reads it, and the folder too)
    preprocessing.json   the preprocessing spec, when there is one (`load_preprocessing` reads it)
    README.md            the model card: Hub front matter, diagram, valid sizes, parameters,
                         preprocessing, output channels, licence, citation
    diagram.svg          the network diagram (`draw_unet`)

`huggingface_hub`'s `from_pretrained` works on such a folder through `unetgen.share.hf.UNetHub`
(needs the `hub` extra; offline for local folders); uploading is `huggingface_hub.upload_folder`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from ..build import FOLDER_CONFIG
from ..checkpoint import CheckpointError, load_unet, save_unet
from ..config.io import dump_config, load_config
from ..config.preprocessing import Preprocessing, PreprocessingSource, check_channels, load_preprocessing
from ..draw import draw_unet
from ..model.unet import UNet
from ..outputs import check_replaceable
from ..reprs import short_path
from .info import ModelInfo, closing_lines, describe_preprocessing, model_info, output_names, size_lines

__all__ = ["CONFIG", "PREPROCESSING", "WEIGHTS", "load_folder", "model_card", "save_folder"]

CONFIG = FOLDER_CONFIG
WEIGHTS = "model.safetensors"
PREPROCESSING = "preprocessing.json"


def model_card(model: UNet, spec: Preprocessing | None, info: ModelInfo, *, diagram: bool = True) -> str:
    """The README.md model card: Hub front matter (library, licence, tags, pipeline), then the
    network, its sizes and parameters, the preprocessing, the outputs, licence and citation."""
    config = model.config
    tags = ["unetgen", "unet", "image-segmentation", f"{config.spatial_dims}d", *info.tags]
    front = [
        "---",
        "library_name: unetgen",
        f"license: {info.license.lower()}",
        "pipeline_tag: image-segmentation",
        "tags:",
        *(f"- {json.dumps(t)}" for t in dict.fromkeys(tags)),
        "---",
    ]
    lines = [
        *front,
        "",
        f"# {info.name}",
        "",
        info.description,
        "",
        *(["![network](diagram.svg)", ""] if diagram else []),
        "## Network",
        "",
        *size_lines(config),
        "",
        "## Preprocessing",
        "",
        *describe_preprocessing(spec),
        "",
        "## Output",
        "",
        f"Logits, one channel per class: {', '.join(output_names(config, spec))}.",
        "",
        "## Use",
        "",
        "```python",
        "import unetgen",
        'model = unetgen.load_unet(".")  # this folder; or load_unet("model.safetensors")',
        "```",
        "",
        *closing_lines(info),
    ]
    return "\n".join(lines)


def save_folder(
    model: UNet,
    directory: str | os.PathLike[str],
    *,
    preprocessing: PreprocessingSource | None = None,
    info: ModelInfo | Mapping[str, Any] | None = None,
    metadata: Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` as a Hub-style folder (created if missing) and return it: config.json,
    model.safetensors (`save_unet`, with `metadata`, the spec and the model's training patch, if it
    carries one), preprocessing.json (given a spec),
    README.md (`model_card`) and diagram.svg. An existing model.safetensors in it is replaced only
    if unetgen wrote it (`unetgen.outputs`), checked before anything is written."""
    if not isinstance(model, UNet):
        raise TypeError(f"save_folder needs a unetgen UNet, got {type(model).__name__}")
    spec = None if preprocessing is None else load_preprocessing(preprocessing)
    if spec is not None:
        check_channels(spec, model.config.in_channels, model.config.out_channels)
    about = model_info(info)
    root = Path(directory)
    if root.is_dir():  # a foreign model.safetensors is refused before anything is written (unetgen.outputs)
        check_replaceable(root / WEIGHTS, "the folder's weights")
    root.mkdir(parents=True, exist_ok=True)
    dump_config(model.config, root / CONFIG)
    patch = getattr(model, "patch_size", None)  # the training patch, when the model was loaded with one
    save_unet(model, root / WEIGHTS, metadata=metadata, preprocessing=spec, patch_size=patch)
    if spec is not None:
        (root / PREPROCESSING).write_text(json.dumps(spec.model_dump(mode="json"), indent=2) + "\n", encoding="utf-8")
    elif (root / PREPROCESSING).exists():
        (root / PREPROCESSING).unlink()  # a stale spec would be read back with these weights
    try:
        (root / "diagram.svg").write_text(draw_unet(model.config), encoding="utf-8")
        diagram = True
    except ValueError:  # a network the diagram cannot draw
        diagram = False
    (root / "README.md").write_text(model_card(model, spec, about, diagram=diagram), encoding="utf-8")
    return root


def load_folder(directory: str | os.PathLike[str], *, device: torch.device | str | None = None) -> UNet:
    """The model of a folder `save_folder` wrote, in eval mode (`load_unet` of its
    model.safetensors), with `preprocessing` (the spec of preprocessing.json, else the one stored
    in model.safetensors, or None; the two must agree when both are there) and `metadata`
    attributes. config.json must describe the same network as the weights' stored config
    (`CheckpointError` otherwise: one of them was replaced)."""
    root = Path(directory)
    if not root.is_dir():
        raise CheckpointError(f"{short_path(root)}: not a folder")
    if not (root / WEIGHTS).is_file():
        raise CheckpointError(
            f"{short_path(root)}: a folder without {WEIGHTS}; a model folder is what save_folder writes "
            "(config.json, model.safetensors, README.md), else give the .safetensors checkpoint itself"
        )
    model = load_unet(root / WEIGHTS, device=device)
    if (root / CONFIG).is_file() and load_config(root / CONFIG) != model.config:
        raise CheckpointError(
            f"{short_path(root)}: {CONFIG} describes another network than {WEIGHTS}'s stored config; "
            f"write the folder again with save_folder"
        )
    spec_file = root / PREPROCESSING
    if spec_file.is_file():
        spec = load_preprocessing(spec_file)
        if model.preprocessing is not None and spec != model.preprocessing:
            raise CheckpointError(
                f"{short_path(root)}: {PREPROCESSING} differs from the spec stored in {WEIGHTS}; "
                "write the folder again with save_folder"
            )
        model.preprocessing = spec
    return model
