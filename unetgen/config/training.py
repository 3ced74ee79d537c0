"""The training schema: `TrainingConfig`, what `unetgen train TRAINING.yaml` reads.

One file says everything a training run needs: the data (pairs of image and mask files or
folders, their axes, a validation split by file or by region), the model (a config file, a
preset, an inline config or a checkpoint to continue from), the preprocessing the model keeps
(stored in the checkpoint, so that `unetgen predict` applies it), the patches (chosen by the
memory planner from a budget unless given), the augmentation, the targets (class masks, or
instance masks with the paper's separation borders and weight map), the loss, the optimiser and
its schedule, the number of steps, the seed and the device.

Options with parameters are discriminated unions keyed by ``type`` (``loss: dice`` or ``loss:
{type: dice, include_background: true}``), as in `UNetConfig`. Files are checked as config files
are (`load_training`): strictly as JSON, every problem at once with FILE:LINE:COL; relative paths
are relative to the file's folder. The JSON Schema is ``schemas/training.schema.json``.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator
from pydantic_core import InitErrorDetails, PydanticCustomError

from .documents import KeyPath
from .io import ConfigError, parse_file, validate_as
from .options import BareString
from .preprocessing import Axes, Preprocessing
from .schema import SCHEMA_DIALECT, with_required_tags
from .unet_config import UNetConfig

__all__ = [
    "MAX_STEPS",
    "Adam",
    "AdamW",
    "Augmentation",
    "ClassMasks",
    "Constant",
    "CrossEntropy",
    "Data",
    "Dice",
    "DiceCrossEntropy",
    "Elastic",
    "FileSplit",
    "InstanceMasks",
    "Intensity",
    "LoadedTraining",
    "NoSplit",
    "Patches",
    "Poly",
    "RegionSplit",
    "SGD",
    "TrainingConfig",
    "WeightMap",
    "load_training",
    "training_json_schema",
]

SCHEMA_ID = "urn:unetgen:training"
SCHEMA_PATH = "schemas/training.schema.json"
"""Where the schema is committed, relative to the repository root."""
MAX_STEPS = 10**9
"""The most steps a run may have."""
MAX_PATHS = 10_000
"""The most image (or mask) entries a file may list."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _as_tuple(value: Any) -> Any:
    """One string is a list of one."""
    return (value,) if isinstance(value, str) else value


def _list_to_tuple(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


_MEMORY = r"^\s*[0-9]+(\.[0-9]+)?\s*[a-zA-Z]{0,3}\s*$"
_DEVICE = r"^(cpu(:0)?|cuda(:[0-9]{1,3})?|mps|auto)$"


def _matching(pattern: str, what: str) -> AfterValidator:
    """A string field checked against `pattern` (also its JSON Schema's), refused as "is not `what`"
    (a sentence a user can act on, not the regular expression)."""
    compiled = re.compile(pattern)

    def check(value: str) -> str:
        if not compiled.match(value):
            raise PydanticCustomError("value_error", "{value} is not {what}", {"value": repr(value[:50]), "what": what})
        return value

    return AfterValidator(check)


PathText = Annotated[str, Field(min_length=1, max_length=4096, pattern=r"^[^\x00]*$")]
Paths = Annotated[
    PathText | Annotated[tuple[PathText, ...], Field(min_length=1, max_length=MAX_PATHS)], AfterValidator(_as_tuple)
]
"""One path, or a list of them (read as a tuple)."""


# ---------------------------------------------------------------------------------------------
# data


class FileSplit(_Model):
    """Hold out whole pairs: the last ones in pairing order (sorted by name within a folder)."""

    type: Literal["files"] = "files"
    count: Annotated[int, Field(ge=1)] | None = None
    """How many pairs to hold out (none: `fraction` of them, rounded up)."""
    fraction: float = Field(0.2, gt=0, lt=1)
    """The fraction of the pairs to hold out when `count` is not given (at least one pair is held
    out and at least one kept)."""


class RegionSplit(_Model):
    """Hold out the far end of every image along one axis: the last `fraction` of it is for
    validation, the rest for training (what `examples/train_nuclei.py` does: the right quarter)."""

    type: Literal["region"] = "region"
    fraction: float = Field(0.25, gt=0, lt=1)
    """The fraction of each image, along `axis`, held out (rounded up to whole pixels)."""
    axis: Literal["x", "y", "z"] = "x"
    """The spatial axis the images are cut along."""


class NoSplit(_Model):
    """No validation: no metrics, and the checkpoint kept is the last one."""

    type: Literal["none"] = "none"


Split = Annotated[FileSplit | RegionSplit | NoSplit, Field(discriminator="type"), BareString()]


class Data(_Model):
    """The training data: pairs of an image and its mask."""

    images: Paths
    """Image files, or folders of them (.tif/.tiff, .png, .npy, .zarr; hidden files are skipped):
    one path or a list. Relative paths are relative to the training file's folder."""
    masks: Paths
    """The masks, as `images`: one per image, of the image's spatial shape, holding integers (class
    ids, or instance ids with `targets: instances`)."""
    pairing: Literal["auto", "name", "order"] = "auto"
    """How images and masks pair: `name` = the same file name without its suffix (in any folder),
    `order` = the n-th image with the n-th mask (folders listed sorted by name); `auto`: by name
    when every name pairs, else by order when both are given as the same number of files."""
    axes: Axes | None = None
    """The layout of the image files, e.g. `zyx`, `cyx` or `yxc` (none: as unetgen takes arrays,
    ``(C, *spatial)`` or ``(*spatial)`` with one channel). The masks have the spatial axes only.
    Stored in the checkpoint, so that `unetgen predict` reads the raw files alike."""
    validation: Split = RegionSplit()
    """The validation split: by `region` (the far end of every image), by `files` or `none`."""


# ---------------------------------------------------------------------------------------------
# patches, augmentation, targets


class Patches(_Model):
    """The training patches: their size and how many make a batch."""

    size: Annotated[int, Field(ge=1)] | Annotated[tuple[Annotated[int, Field(ge=1)], ...], BeforeValidator(
        _list_to_tuple
    )] | None = None  # fmt: skip
    """The input patch size: one valid input size for every spatial axis, or one per axis (none:
    the largest that fits `memory`, from the memory planner, `unetgen plan`)."""
    batch: Annotated[int, Field(ge=1, le=4096)] | None = None
    """Patches per step (none: the planner's choice, 2 unless the whole image fits in memory, then
    more, up to as many patches as cover 5 % of the training pixels; 2 when `size` is given). Under
    `torchrun` the batch is split among the processes."""
    memory: Annotated[str, Field(max_length=40, json_schema_extra={"pattern": _MEMORY}), _matching(
        _MEMORY, "a memory size; write e.g. 2GiB, 512MiB, 16GB or a number of bytes"
    )] = "2GiB"  # fmt: skip
    """The memory budget of one training step, e.g. `2GiB`, `512MiB`, `16GB`: it chooses the patch
    and batch when they are not given, and a given patch and batch whose step needs more (as
    `estimate_training_memory` counts it) are refused before anything is allocated."""
    foreground: float = Field(0.0, ge=0, le=1)
    """The share of patches placed over a random voxel of a random foreground class of their image
    (nnU-Net oversamples 0.33 of them; for masks that cover little of the images); the rest, and
    all with 0 (the paper's way), lie anywhere in the image."""


class Intensity(_Model):
    """Random intensity changes of the normalised image: ``x * (1 + a) + b``, `a` and `b` uniform
    in ``[-scale, scale]`` and ``[-shift, shift]``, drawn per patch."""

    scale: float = Field(0.1, ge=0, lt=1)
    """The largest relative change of contrast."""
    shift: float = Field(0.1, ge=0, le=10)
    """The largest change of brightness (in normalised units)."""


def _sigma(value: Any) -> Any:
    return tuple(value) if isinstance(value, list) else value


class Elastic(_Model):
    """The paper's elastic deformation (`unetgen.training.elastic_deform`): Gaussian displacements
    on a coarse grid of `points` per axis, interpolated with cubic B-splines."""

    sigma: Annotated[float | tuple[Annotated[float, Field(ge=0, le=1000)], ...], BeforeValidator(_sigma), Field()] = (
        10.0
    )
    """The displacement's standard deviation in pixels: one number for every axis, or one per
    spatial axis (smaller along a coarsely sampled axis of anisotropic data, e.g. ``[2, 10, 10]``)."""
    points: int = Field(3, ge=1, le=32)
    """Grid points per axis (the paper: 3 x 3)."""
    probability: float = Field(1.0, ge=0, le=1)
    """The chance that a patch is deformed."""

    @model_validator(mode="after")
    def _range(self) -> Elastic:
        if isinstance(self.sigma, float) and not 0 <= self.sigma <= 1000:
            raise ValueError(f"sigma={self.sigma} must be a number of pixels from 0 to 1000")
        if isinstance(self.sigma, tuple) and not 1 <= len(self.sigma) <= 3:
            raise ValueError(f"sigma={list(self.sigma)} must have one value per spatial axis (1 to 3)")
        return self


class Augmentation(_Model):
    """Random changes of each training patch (before the target is cropped to the output)."""

    flips: bool = True
    """Mirror the patch along each spatial axis with probability 1/2."""
    rot90: bool = True
    """Turn the patch by a random multiple of 90 degrees in the plane of its last two axes (y, x),
    where the patch is square in that plane."""
    intensity: Intensity | None = Intensity()
    """Random contrast and brightness changes (null: none)."""
    elastic: Elastic | None = Elastic()
    """The paper's elastic deformation (null: none)."""


class WeightMap(_Model):
    """The weight map of Ronneberger et al. 2015, eq. 2 (`unetgen.training.border_weight_map`)."""

    w0: float = Field(10.0, ge=0, le=1e6)
    """The weight of the border term."""
    sigma: float = Field(5.0, gt=0, le=1e4)
    """The border term's width, in pixels (in `preprocessing.pixel_size` units when that is given)."""
    class_weights: Literal["balanced", "none"] = "balanced"
    """w_c: `balanced` weighs background and foreground pixels so that both count alike; `none`: 1."""


class ClassMasks(_Model):
    """Masks of class ids, 0..out_channels-1, trained as they are."""

    type: Literal["classes"] = "classes"


class InstanceMasks(_Model):
    """Instance masks (0 = background, one id per object): the target is background/foreground
    (the model needs out_channels 2), with the paper's separation borders between touching objects
    and its weight map."""

    type: Literal["instances"] = "instances"
    separate: bool = True
    """Open a background gap between touching objects (`separate_touching`), as the paper does."""
    weight_map: WeightMap | None = WeightMap()
    """The pixel weights of the cross-entropy (null: every pixel weighs 1)."""


Targets = Annotated[ClassMasks | InstanceMasks, Field(discriminator="type"), BareString()]


# ---------------------------------------------------------------------------------------------
# loss, optimiser, schedule


class CrossEntropy(_Model):
    """The paper's energy: pixel-wise softmax cross-entropy, weighted by the weight map if any."""

    type: Literal["cross_entropy"] = "cross_entropy"


class Dice(_Model):
    """1 - soft Dice over the batch (nnU-Net's batch Dice), `unetgen.training.soft_dice_loss`."""

    type: Literal["dice"] = "dice"
    include_background: bool = False
    """Count class 0 too."""
    smooth: float = Field(1e-5, ge=0, le=1e3)
    """Added to the numerator and denominator of every class's Dice."""


class DiceCrossEntropy(_Model):
    """``dice * Dice + cross_entropy * cross-entropy`` (nnU-Net's default loss)."""

    type: Literal["dice_cross_entropy"] = "dice_cross_entropy"
    dice: float = Field(1.0, ge=0, le=1e3)
    """The Dice term's factor."""
    cross_entropy: float = Field(1.0, ge=0, le=1e3)
    """The cross-entropy term's factor."""
    include_background: bool = False
    """Count class 0 in the Dice term too."""


Loss = Annotated[CrossEntropy | Dice | DiceCrossEntropy, Field(discriminator="type"), BareString()]


class SGD(_Model):
    """Stochastic gradient descent with momentum (the paper: momentum 0.99)."""

    type: Literal["sgd"] = "sgd"
    lr: float = Field(0.01, gt=0, le=10)
    """The learning rate."""
    momentum: float = Field(0.99, ge=0, lt=1)
    """The momentum (0: plain SGD)."""
    nesterov: bool = False
    """Nesterov momentum (nnU-Net: true, momentum 0.99, lr 0.01)."""
    weight_decay: float = Field(0.0, ge=0, le=1)
    """L2 penalty."""


class Adam(_Model):
    """Adam."""

    type: Literal["adam"] = "adam"
    lr: float = Field(1e-3, gt=0, le=10)
    """The learning rate."""
    weight_decay: float = Field(0.0, ge=0, le=1)
    """L2 penalty."""


class AdamW(_Model):
    """Adam with decoupled weight decay."""

    type: Literal["adamw"] = "adamw"
    lr: float = Field(1e-3, gt=0, le=10)
    """The learning rate."""
    weight_decay: float = Field(0.01, ge=0, le=1)
    """The decoupled weight decay."""


Optimizer = Annotated[SGD | Adam | AdamW, Field(discriminator="type"), BareString()]


class Constant(_Model):
    """The learning rate stays as given."""

    type: Literal["constant"] = "constant"


class Poly(_Model):
    """nnU-Net's poly schedule: ``lr * (1 - step / steps) ** exponent``."""

    type: Literal["poly"] = "poly"
    exponent: float = Field(0.9, gt=0, le=10)
    """The exponent (nnU-Net: 0.9)."""


Schedule = Annotated[Constant | Poly, Field(discriminator="type"), BareString()]

_DEFAULT_NORMALIZE = {"normalize": [{"type": "scale_range", "min_percentile": 1.0, "max_percentile": 99.8}]}


class TrainingConfig(_Model):
    """A training run: data, model, preprocessing, patches, augmentation, targets, loss, optimiser,
    schedule, steps, seed, device and how often to validate and save."""

    data: Data
    """The images and masks, their layout and the validation split."""
    model: Annotated[str, Field(min_length=1, max_length=4096)] | UNetConfig
    """The network: a config file (.yaml/.yml/.json), a preset name (`unetgen presets`), a unetgen
    checkpoint (.safetensors) to continue from (its weights, and its preprocessing unless
    `preprocessing` is given), or the config itself as a mapping."""
    preprocessing: Preprocessing | None = None
    """The normalisation (and pixel size, output class names) the model is trained with and keeps
    in its checkpoint (its `axes` come from `data.axes`). None: a checkpoint's own, else per-sample
    percentiles (`scale_range`, 1 to 99.8 %)."""
    patches: Patches = Patches()
    """The patch size and batch."""
    augmentation: Augmentation = Augmentation()
    """Random changes of each patch."""
    targets: Targets = ClassMasks()
    """What the masks are: class ids (`classes`) or objects (`instances`)."""
    loss: Loss = CrossEntropy()
    """The loss: every head of a model with deep supervision gets it (weighted by `head_weights`)."""
    head_weights: tuple[Annotated[float, Field(ge=0, le=1e3)], ...] | None = None
    """With deep supervision: one loss weight per head, the main head first, then each level
    ascending (none: halved per level and normalised to sum to 1, as nnU-Net does)."""
    optimizer: Optimizer = Adam()
    """The optimiser: `sgd` (the paper: momentum 0.99), `adam` or `adamw`."""
    schedule: Schedule = Constant()
    """The learning-rate schedule: `constant` or nnU-Net's `poly`."""
    steps: int = Field(1000, ge=1, le=MAX_STEPS)
    """Optimiser steps (one batch each)."""
    seed: int = Field(0, ge=0, le=2**63 - 1)
    """Every random choice (initial weights, patches, augmentation, dropout) follows from the seed
    and the step, so that a resumed run ends exactly as an uninterrupted one."""
    device: Annotated[str, Field(json_schema_extra={"pattern": _DEVICE}), _matching(
        _DEVICE, "a device unetgen trains on; give cpu, cuda, cuda:N (the GPU's index), mps or auto"
    )] = "cpu"  # fmt: skip
    """Where to train: `cpu`, `cuda`, `cuda:N`, `mps`, or `auto` (a GPU when there is one). Under
    `torchrun` on GPUs each process takes the GPU of its local rank."""
    validate_every: int = Field(100, ge=1, le=MAX_STEPS)
    """Validate every this many steps (and after the last one)."""
    save_every: int = Field(100, ge=1, le=MAX_STEPS)
    """Write the `last` checkpoint and the training state every this many steps (and after the last one)."""
    best_metric: Literal["auto", "iou", "dice", "object_f1"] = "auto"
    """The validation metric the `best` checkpoint maximises: mean foreground IoU or Dice, or
    object F1 at IoU 0.5 (instances only). `auto`: object F1 for instance masks, IoU otherwise."""

    @model_validator(mode="after")
    def _check(self) -> TrainingConfig:
        problems: list[tuple[tuple[str | int, ...], str]] = []
        pre = self.preprocessing
        if pre is not None and pre.axes is not None and pre.axes != self.data.axes:
            problems.append(
                (
                    ("preprocessing", "axes"),
                    f"preprocessing.axes={pre.axes!r} differs from data.axes={self.data.axes!r}; the layout of the "
                    "images is data.axes (the checkpoint stores it): remove preprocessing.axes",
                )
            )
        split = self.data.validation
        if isinstance(split, RegionSplit) and self.data.axes is not None and split.axis not in self.data.axes:
            problems.append(
                (
                    ("data", "validation", "axis"),
                    f"axis {split.axis!r} is not one of the images' axes {self.data.axes!r}; pick one of "
                    f"{', '.join(repr(a) for a in self.data.axes.replace('c', ''))}",
                )
            )
        if self.best_metric == "object_f1" and not isinstance(self.targets, InstanceMasks):
            problems.append((("best_metric",), "object_f1 needs instance masks (targets: instances); use iou or dice"))
        if self.best_metric != "auto" and isinstance(split, NoSplit):
            problems.append(
                (
                    ("best_metric",),
                    f"{self.best_metric} needs validation data; set data.validation or best_metric: auto",
                )
            )
        if problems:
            raise ValidationError.from_exception_data(
                type(self).__name__,
                [
                    InitErrorDetails(type=PydanticCustomError("value_error", "{message}", {"message": m}), loc=loc)
                    for loc, m in problems
                ],
            )
        return self

    @property
    def spec(self) -> Preprocessing | None:
        """The given preprocessing with the images' axes (None when not given)."""
        if self.preprocessing is None:
            return None
        return self.preprocessing.model_copy(update={"axes": self.data.axes})

    def default_spec(self) -> Preprocessing:
        """The default preprocessing with the images' axes: per-sample percentiles 1..99.8."""
        return Preprocessing.model_validate({**_DEFAULT_NORMALIZE, "axes": self.data.axes})


# ---------------------------------------------------------------------------------------------
# files


@dataclass(frozen=True)
class LoadedTraining:
    """A validated `TrainingConfig` and where it came from: the file (`source`, for messages),
    the folder its relative paths are relative to (`base`) and the position of every key
    (`positions`), so that checks needing the data or the model point at the line too."""

    config: TrainingConfig
    source: str = "<training>"
    base: Path = field(default_factory=Path)
    positions: Mapping[KeyPath, tuple[int, int]] | None = None

    def resolve(self, path: str) -> Path:
        """A path of the config, relative to `base` unless absolute."""
        p = Path(os.path.expanduser(path))
        return p if p.is_absolute() else self.base / p

    def problem(self, where: tuple[str | int, ...], message: str) -> ConfigError:
        """A `ConfigError` about the field at `where`, with its FILE:LINE:COL when known."""
        from .diagnostics import Problem, format_path

        line = column = None
        if self.positions is not None:
            line, column = 1, 1
            for end in range(len(where), 0, -1):
                if where[:end] in self.positions:
                    line, column = self.positions[where[:end]]
                    break
        return ConfigError([Problem(self.source, line, column, format_path(where), message)])


def load_training(source: TrainingConfig | Mapping[str, Any] | str | os.PathLike[str]) -> LoadedTraining:
    """A validated training config from a `TrainingConfig`, a mapping (validated as Python; its
    relative paths are relative to the working folder), or a .yaml/.yml/.json file (checked
    strictly, as JSON; every problem with its FILE:LINE:COL, all at once, as a `ConfigError`)."""
    if isinstance(source, TrainingConfig):
        return LoadedTraining(source)
    if isinstance(source, Mapping):
        return LoadedTraining(validate_as(TrainingConfig, source, "<training>", strict=False))
    if isinstance(source, (str, os.PathLike)):
        doc = parse_file(source)
        name = os.fspath(source)
        config = validate_as(TrainingConfig, doc.value, name, doc.positions)
        return LoadedTraining(config, name, Path(name).parent, doc.positions)
    raise ConfigError(
        f"cannot load a training config from {type(source).__name__}; pass a TrainingConfig, a mapping or a "
        ".yaml/.json path"
    )


def training_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a training file, as committed in
    ``schemas/training.schema.json``."""
    schema = with_required_tags(TrainingConfig.model_json_schema())
    schema["properties"] = {
        "$schema": {
            "description": "The JSON Schema of this file, for editors; ignored when loading.",
            "type": "string",
        },
        **schema["properties"],
    }
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, "title": "TrainingConfig", **schema}


def schema_text() -> str:
    """The schema as committed: indented JSON and a final newline."""
    return json.dumps(training_json_schema(), indent=2) + "\n"
