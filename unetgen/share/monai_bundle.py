"""MONAI bundles: `export_monai_bundle` writes one (for MONAI's bundle tools and MONAI Deploy).

    configs/metadata.json    versions, task, authors, copyright, references and
                             `network_data_format` (the input and output tensors: channels, valid
                             spatial shapes as MONAI's expressions in `n`, dtype, channel meanings)
    configs/inference.json   `network_def`: a `_target_` node on `unetgen.build_unet` with the
                             config (`unetgen.share.MirrorPadded` for valid padding, so that the
                             output keeps the input's size, as MONAI's inferers expect), the
                             checkpoint path, the preprocessing as MONAI transforms, a sliding
                             window inferer and the postprocessing (softmax or sigmoid, argmax)
    models/model.pt          the state dict (`torch.save`), loadable into either network
    docs/README.md           the model card
    LICENSE                  the licence (also docs/license.txt, where MONAI's bundle spec puts it)

unetgen writes bundles and never loads them: MONAI's config parser evaluates the strings of a
bundle's configs (``$`` expressions), so reading one is running it. Load unetgen's own formats
instead (a checkpoint, a Hub folder, a bioimage.io package).
"""

from __future__ import annotations

import importlib.metadata
import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..analysis import shapes
from ..config.preprocessing import (
    Clip,
    Preprocessing,
    PreprocessingSource,
    ScaleLinear,
    ScaleRange,
    Step,
    ZeroMeanUnitVariance,
    check_channels,
    load_preprocessing,
)
from ..model.unet import UNet
from .info import (
    ModelInfo,
    closing_lines,
    describe_preprocessing,
    input_sizes,
    model_info,
    output_names,
    size_lines,
)

__all__ = ["METADATA_SCHEMA", "export_monai_bundle", "monai_transforms"]

METADATA_SCHEMA = (
    "https://github.com/Project-MONAI/MONAI-extra-test-data/releases/download/0.8.1/meta_schema_20240725.json"
)
"""The schema URL MONAI's bundles name in metadata.json (`monai.bundle.verify_metadata` downloads it,
or reads the copy given as `filepath`)."""
MIN_MONAI = "1.3.0"
"""Written as monai_version when MONAI is not installed (the oldest the `peers` extra allows)."""


def _version(package: str, default: str) -> str:
    try:
        return importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        return default


def _step_transform(step: Step, channels: int) -> dict[str, Any] | None:
    """One unetgen step as one MONAI dictionary transform on "image" (None: a no-op)."""
    match step:
        case ScaleRange(mode="per_sample"):
            return {
                "_target_": "ScaleIntensityRangePercentilesd",
                "keys": "image",
                "lower": step.min_percentile,
                "upper": step.max_percentile,
                "b_min": 0.0,
                "b_max": 1.0,
                "channel_wise": step.per_channel,
            }
        case ScaleRange():  # (x - low) / (high - low + eps)
            low = np.broadcast_to(np.asarray(step.low, dtype=np.float64), (channels,))
            high = np.broadcast_to(np.asarray(step.high, dtype=np.float64), (channels,))
            return _normalize(low, high - low + step.eps)
        case ZeroMeanUnitVariance(mode="per_sample"):
            return {"_target_": "NormalizeIntensityd", "keys": "image", "channel_wise": step.per_channel}
        case ZeroMeanUnitVariance():
            mean = np.broadcast_to(np.asarray(step.mean, dtype=np.float64), (channels,))
            std = np.broadcast_to(np.asarray(step.std, dtype=np.float64), (channels,))
            return _normalize(mean, std + step.eps)
        case ScaleLinear():  # x * gain + offset = (x - (-offset / gain)) / (1 / gain)
            gain = np.broadcast_to(np.asarray(step.gain, dtype=np.float64), (channels,))
            offset = np.broadcast_to(np.asarray(step.offset, dtype=np.float64), (channels,))
            return None if np.all(gain == 1) and np.all(offset == 0) else _normalize(-offset / gain, 1 / gain)
        case Clip():  # an identity range map that clips
            low, high = (-np.inf if step.min is None else step.min), (np.inf if step.max is None else step.max)
            return _clip(low, high)
    raise AssertionError(step)


def _normalize(sub: np.ndarray, div: np.ndarray) -> dict[str, Any]:
    """NormalizeIntensityd with a subtrahend and divisor per channel (one number when alike)."""
    same = bool(np.all(sub == sub[0]) and np.all(div == div[0]))
    return {
        "_target_": "NormalizeIntensityd",
        "keys": "image",
        "subtrahend": float(sub[0]) if same else sub.tolist(),
        "divisor": float(div[0]) if same else div.tolist(),
        "channel_wise": not same,
    }


def _clip(low: float, high: float) -> dict[str, Any]:
    lo = -3.4e38 if low == -np.inf else float(low)
    hi = 3.4e38 if high == np.inf else float(high)
    return {
        "_target_": "ScaleIntensityRanged",
        "keys": "image",
        "a_min": lo,
        "a_max": hi,
        "b_min": lo,
        "b_max": hi,
        "clip": True,
    }


def monai_transforms(spec: Preprocessing | None, channels: int) -> list[dict[str, Any]]:
    """`spec`'s normalisation as MONAI dictionary transforms on the key "image" (configs, not
    objects): per-sample `scale_range` is `ScaleIntensityRangePercentilesd` (no eps: a constant
    image maps to 0 there), per-sample `zero_mean_unit_variance` `NormalizeIntensityd`, stored
    values and `scale_linear` `NormalizeIntensityd` with a subtrahend and divisor, `clip` an
    identity `ScaleIntensityRanged` with clip."""
    if spec is None:
        return []
    return [t for step in spec.normalize if (t := _step_transform(step, channels)) is not None]


def _tensor_format(config: Any, spec: Preprocessing | None, padded: bool) -> dict[str, Any]:
    sizes = input_sizes(config, mirror_padded=padded)
    shape = [f"{lo}+{step}*n" for lo, step in sizes]
    names = output_names(config, spec)
    image = {
        "type": "image",
        "format": "magnitude",
        "modality": "n/a",
        "num_channels": config.in_channels,
        "spatial_shape": shape,
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": True,
        "channel_def": {str(c): f"channel{c}" for c in range(config.in_channels)},
    }
    pred = {
        "type": "image",
        "format": "labels" if config.out_channels > 1 else "classes",
        "modality": "n/a",
        "num_channels": config.out_channels,
        "spatial_shape": shape,
        "dtype": "float32",
        "value_range": [],
        "is_patch_data": True,
        "channel_def": {str(c): n for c, n in enumerate(names)},
    }
    return {"inputs": {"image": image}, "outputs": {"pred": pred}}


def _metadata(config: Any, spec: Preprocessing | None, info: ModelInfo, padded: bool) -> dict[str, Any]:
    authors = ", ".join(a.name for a in info.authors) or "unknown"
    names = output_names(config, spec)
    return {
        "schema": METADATA_SCHEMA,
        "version": info.version,
        "changelog": {info.version: f"exported by unetgen {__version__}"},
        "monai_version": _version("monai", MIN_MONAI),
        "pytorch_version": torch.__version__.split("+")[0],
        "numpy_version": np.__version__,
        "required_packages_version": {"unetgen": __version__},  # MONAI 1.4+'s name for optional_packages_version
        "name": info.name,
        "task": info.description,
        "description": f"{info.description} A {config.spatial_dims}D U-Net built with unetgen "
        f"({config.padding} padding); see docs/README.md.",
        "authors": authors,
        "copyright": f"Copyright (c) {authors}",
        "license": info.license,
        "data_type": "numpy",
        "image_classes": f"{config.in_channels} channel(s), preprocessed as configs/inference.json says",
        "pred_classes": f"{config.out_channels} channel(s) of logits: {', '.join(names)}",
        "intended_use": "See docs/README.md.",
        "references": [c.text + (f" https://doi.org/{c.doi}" if c.doi else "") for c in info.citations],
        "network_data_format": _tensor_format(config, spec, padded),
    }


def _inference(config: Any, spec: Preprocessing | None, padded: bool) -> dict[str, Any]:
    roi = [lo + step for lo, step in input_sizes(config, mirror_padded=padded)]
    target = "unetgen.share.MirrorPadded" if padded else "unetgen.build_unet"
    post = (
        [{"_target_": "Activationsd", "keys": "pred", "sigmoid": True}]
        if config.out_channels == 1
        else [
            {"_target_": "Activationsd", "keys": "pred", "softmax": True},
            {"_target_": "AsDiscreted", "keys": "pred", "argmax": True},
        ]
    )
    return {
        "imports": ["$import unetgen", "$import unetgen.share"],
        "bundle_root": ".",
        "device": "$torch.device('cuda:0' if torch.cuda.is_available() else 'cpu')",
        "ckpt_path": "$@bundle_root + '/models/model.pt'",
        "network_def": {"_target_": target, "config": config.model_dump(mode="json")},
        "network": "$@network_def.to(@device)",
        "preprocessing": {
            "_target_": "Compose",
            "transforms": [
                {"_target_": "LoadImaged", "keys": "image"},
                {"_target_": "EnsureChannelFirstd", "keys": "image"},
                {"_target_": "EnsureTyped", "keys": "image", "dtype": "$torch.float32"},
                *monai_transforms(spec, config.in_channels),
            ],
        },
        "inferer": {"_target_": "SlidingWindowInferer", "roi_size": roi, "sw_batch_size": 1, "overlap": 0.25},
        "postprocessing": {"_target_": "Compose", "transforms": post},
    }


def _readme(model: UNet, spec: Preprocessing | None, info: ModelInfo, padded: bool) -> str:
    config = model.config
    padding = (
        [f"The network has valid padding; `network_def` mirror-pads by its halo {shapes.halo(config)} first.", ""]
        if padded
        else []
    )
    lines = [
        f"# {info.name}",
        "",
        info.description,
        "",
        "## Network",
        "",
        *size_lines(config),
        "",
        *padding,
        "## Preprocessing",
        "",
        *describe_preprocessing(spec),
        "",
        "`configs/inference.json` states it as MONAI transforms.",
        "",
        *closing_lines(info),
    ]
    return "\n".join(lines)


def export_monai_bundle(
    model: UNet,
    directory: str | os.PathLike[str],
    *,
    preprocessing: PreprocessingSource | None = None,
    info: ModelInfo | Mapping[str, Any] | None = None,
) -> Path:
    """Write `model` as a MONAI bundle folder (created if missing) and return it; see the module
    docstring for the files. Check it with MONAI's `verify_metadata` and `verify_net_in_out`."""
    if not isinstance(model, UNet):
        raise TypeError(f"export_monai_bundle needs a unetgen UNet, got {type(model).__name__}")
    config = model.config
    if any(shapes.axis_rule(config, a).stem != 1 for a in range(config.spatial_dims)):
        raise ValueError(
            "a network with stem_stride > 1 predicts at a lower resolution; export one with stem_stride: 1"
        )
    spec = None if preprocessing is None else load_preprocessing(preprocessing)
    if spec is not None:
        check_channels(spec, config.in_channels, config.out_channels)
    about = model_info(info)
    padded = config.padding == "valid"
    root = Path(directory)
    for sub in ("configs", "models", "docs"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    dump = {"indent": 2}
    (root / "configs" / "metadata.json").write_text(json.dumps(_metadata(config, spec, about, padded), **dump) + "\n")
    (root / "configs" / "inference.json").write_text(json.dumps(_inference(config, spec, padded), **dump) + "\n")
    torch.save({k: v.detach().cpu() for k, v in model.state_dict().items()}, root / "models" / "model.pt")
    (root / "docs" / "README.md").write_text(_readme(model, spec, about, padded), encoding="utf-8")
    licence = f"SPDX-License-Identifier: {about.license}\n"
    (root / "LICENSE").write_text(licence, encoding="utf-8")
    (root / "docs" / "license.txt").write_text(licence, encoding="utf-8")  # where the bundle spec looks
    return root
