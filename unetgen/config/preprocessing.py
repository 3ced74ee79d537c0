"""What a model expects of its input and what its output means, as typed, validated data.

A `Preprocessing` spec travels with a model (in its checkpoint, its bioimage.io package, its
model card): the axes of the raw image, its pixel size, the normalisation steps the model was
trained with, and the names of the output channels. The words are bioimage.io's (model format
0.5), so the spec maps onto a bioimage.io package one to one:

- `scale_range`: ``(x - low) / (high - low + eps)``, where `low` and `high` are percentiles of
  the image (``mode: per_sample``) or values measured once on the training data and stored
  (``mode: per_dataset``, e.g. the 1st and 99.8th percentiles of the training set);
- `zero_mean_unit_variance`: ``(x - mean) / (std + eps)``, per sample or with stored values;
- `scale_linear`: ``x * gain + offset``;
- `clip`: values below `min` or above `max` are set to them.

Steps run in order; each per-sample statistic is taken over the output of the steps before it.
Every value may be one number or one per channel. Files are checked as config files are
(`load_preprocessing`): strictly as JSON, every problem with FILE:LINE:COL.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, model_validator

from .io import ConfigError, parse_file, validate_as
from .options import BareString
from .schema import SCHEMA_DIALECT, with_required_tags

__all__ = [
    "AXES",
    "Clip",
    "Outputs",
    "Preprocessing",
    "PreprocessingSource",
    "ScaleLinear",
    "ScaleRange",
    "Step",
    "ZeroMeanUnitVariance",
    "check_channels",
    "dump_preprocessing",
    "load_preprocessing",
    "preprocessing_json_schema",
]

AXES = ("x", "yx", "zyx", "cx", "cyx", "czyx", "xc", "yxc", "zyxc")
"""The input layouts: the spatial axes in bioimage.io's order (z, y, x) with the channel axis
first (`cyx`), last (`yxc`) or absent (one channel)."""
Axes = Literal["x", "yx", "zyx", "cx", "cyx", "czyx", "xc", "yxc", "zyxc"]
SpaceUnit = Literal["angstrom", "nanometer", "micrometer", "millimeter", "centimeter", "meter"]
SCHEMA_ID = "urn:unetgen:preprocessing"
SCHEMA_PATH = "schemas/preprocessing.schema.json"
"""Where the schema is committed, relative to the repository root."""


def _list_to_tuple(value: Any) -> Any:
    # a JSON array reaches the options (behind `BareString`'s validator) as a list, which strict
    # validation refuses as a tuple; the items are still checked strictly
    return tuple(value) if isinstance(value, list) else value


Values = Annotated[float | tuple[float, ...], BeforeValidator(_list_to_tuple)]
"""One number for every channel, or one per channel."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


def _count(value: Values | None) -> int | None:
    return len(value) if isinstance(value, tuple) else None


class ScaleRange(_Model):
    """Percentile normalisation: ``(x - low) / (high - low + eps)`` (bioimage.io's `scale_range`)."""

    type: Literal["scale_range"] = "scale_range"
    mode: Literal["per_sample", "per_dataset"] = "per_sample"
    """`per_sample`: `low` and `high` are the percentiles of each image; `per_dataset`: the stored
    `low` and `high` (measured once, on the training data) are used for every image."""
    min_percentile: float = Field(1.0, ge=0, lt=100)
    """The percentile mapped to 0 (0 to 100)."""
    max_percentile: float = Field(99.8, gt=1, le=100)
    """The percentile mapped to 1 (1 to 100: 99.8 means 99.8 %, not 0.998)."""
    low: Values | None = None
    """`per_dataset` only: the value at `min_percentile` on the training data (one, or one per channel)."""
    high: Values | None = None
    """`per_dataset` only: the value at `max_percentile` on the training data (one, or one per channel)."""
    per_channel: bool = True
    """Take the percentiles of each channel on its own (true) or of all channels together."""
    eps: float = Field(1e-6, gt=0, le=0.1)
    """Added to ``high - low`` so that a constant image does not divide by zero."""

    @model_validator(mode="after")
    def _values(self) -> ScaleRange:
        if self.min_percentile >= self.max_percentile:
            raise ValueError(f"min_percentile={self.min_percentile} must be below max_percentile={self.max_percentile}")
        _stored(self.mode, {"low": self.low, "high": self.high}, "scale_range")
        if self.mode == "per_dataset":
            _same_count({"low": self.low, "high": self.high})
            if any(lo >= hi for lo, hi in _pairs(self.low, self.high)):
                raise ValueError(f"low={self.low} must be below high={self.high} (channel by channel)")
        return self


class ZeroMeanUnitVariance(_Model):
    """Standardisation: ``(x - mean) / (std + eps)`` (bioimage.io's `zero_mean_unit_variance`,
    and `fixed_zero_mean_unit_variance` for stored values)."""

    type: Literal["zero_mean_unit_variance"] = "zero_mean_unit_variance"
    mode: Literal["per_sample", "per_dataset"] = "per_sample"
    """`per_sample`: the mean and standard deviation of each image; `per_dataset`: the stored `mean`
    and `std` (measured on the training data)."""
    mean: Values | None = None
    """`per_dataset` only: the mean (one, or one per channel)."""
    std: Values | None = None
    """`per_dataset` only: the standard deviation (one, or one per channel; > 0)."""
    per_channel: bool = True
    """Standardise each channel on its own (true) or all channels together."""
    eps: float = Field(1e-6, gt=0, le=0.1)
    """Added to the standard deviation so that a constant image does not divide by zero."""

    @model_validator(mode="after")
    def _values(self) -> ZeroMeanUnitVariance:
        _stored(self.mode, {"mean": self.mean, "std": self.std}, "zero_mean_unit_variance")
        if self.mode == "per_dataset":
            _same_count({"mean": self.mean, "std": self.std})
            if any(s <= 0 for s in _as_list(self.std)):
                raise ValueError(f"std={self.std} must be positive")
        return self


class ScaleLinear(_Model):
    """A fixed affine map: ``x * gain + offset`` (bioimage.io's `scale_linear`)."""

    type: Literal["scale_linear"] = "scale_linear"
    gain: Values = 1.0
    """The factor (one, or one per channel)."""
    offset: Values = 0.0
    """Added after the factor (one, or one per channel)."""

    @model_validator(mode="after")
    def _values(self) -> ScaleLinear:
        _same_count({"gain": self.gain, "offset": self.offset})
        return self


class Clip(_Model):
    """Clip the values to [`min`, `max`] (bioimage.io's `clip`)."""

    type: Literal["clip"] = "clip"
    min: float | None = None
    """Values below it become it (none: no lower bound)."""
    max: float | None = None
    """Values above it become it (none: no upper bound)."""

    @model_validator(mode="after")
    def _values(self) -> Clip:
        if self.min is None and self.max is None:
            raise ValueError("clip needs min, max or both (for example min: 0, max: 1)")
        if self.min is not None and self.max is not None and self.min >= self.max:
            raise ValueError(f"min={self.min} must be below max={self.max}")
        return self


Step = Annotated[ScaleRange | ZeroMeanUnitVariance | ScaleLinear | Clip, Field(discriminator="type"), BareString()]


class Outputs(_Model):
    """What the output channels mean."""

    classes: tuple[str, ...] = ()
    """One name per output channel, e.g. ``[background, nucleus]`` (empty: unnamed). With one
    channel, its logit is the foreground's (sigmoid); with several, softmax over the channels."""
    description: str = Field("", max_length=4000)
    """What the output is, in words (shown in model cards and packages)."""

    @model_validator(mode="after")
    def _names(self) -> Outputs:
        if len(set(self.classes)) != len(self.classes):
            twice = sorted({c for c in self.classes if self.classes.count(c) > 1})
            raise ValueError(f"classes names {twice} more than one channel; give each channel its own name")
        if any(not c.strip() for c in self.classes):
            raise ValueError("a class name is empty; name every channel")
        return self


class Preprocessing(_Model):
    """What a model expects of its input and what its output means: the raw image's axes and
    pixel size, the normalisation steps, and the names of the output channels."""

    axes: Axes | None = None
    """The layout of the raw image, e.g. `zyx` (3D, one channel), `cyx` or `yxc` (2D, channels
    first or last); none: as unetgen takes it, ``(C, *spatial)`` or ``(*spatial)`` with one channel."""
    pixel_size: dict[Literal["z", "y", "x"], Annotated[float, Field(gt=0)]] | None = None
    """The size of a pixel (voxel) along each spatial axis, in `unit`, e.g. ``{z: 0.5, y: 0.1, x: 0.1}``."""
    unit: SpaceUnit = "micrometer"
    """The unit of `pixel_size`."""
    normalize: tuple[Step, ...] = ()
    """The normalisation steps, applied in order before the network (empty: none)."""
    outputs: Outputs = Outputs()
    """What the output channels mean."""

    @model_validator(mode="after")
    def _axes(self) -> Preprocessing:
        if self.pixel_size is not None and self.axes is not None:
            spatial = self.axes.replace("c", "")
            if extra := [a for a in self.pixel_size if a not in spatial]:
                raise ValueError(f"pixel_size names the axes {extra}, which axes={self.axes!r} does not have")
        return self

    @property
    def spatial_axes(self) -> str | None:
        """The spatial axes of `axes` (`zyx`, `yx` or `x`), or None when `axes` is not given."""
        return None if self.axes is None else self.axes.replace("c", "")

    @property
    def channel_axis(self) -> int | None:
        """The position of the channel axis in `axes`, or None (no channel axis, or no `axes`)."""
        return None if self.axes is None or "c" not in self.axes else self.axes.index("c")


def _as_list(value: Values | None) -> list[float]:
    return [] if value is None else list(value) if isinstance(value, tuple) else [value]


def _pairs(a: Values | None, b: Values | None) -> list[tuple[float, float]]:
    """Channel by channel, a single number standing for every channel."""
    xs, ys = _as_list(a), _as_list(b)
    n = max(len(xs), len(ys))
    return [(xs[i % len(xs)], ys[i % len(ys)]) for i in range(n)] if xs and ys else []


def _stored(mode: str, values: Mapping[str, Values | None], step: str) -> None:
    """`per_dataset` needs every stored value, `per_sample` none."""
    names = " and ".join(values)
    if mode == "per_dataset" and any(v is None for v in values.values()):
        missing = [k for k, v in values.items() if v is None]
        raise ValueError(
            f"{step} with mode per_dataset needs the stored {names} (missing: {', '.join(missing)}); "
            "or use mode per_sample to measure each image"
        )
    if mode == "per_sample" and any(v is not None for v in values.values()):
        raise ValueError(f"{step} with mode per_sample measures each image: remove {names}, or set mode: per_dataset")


def _same_count(values: Mapping[str, Values | None]) -> None:
    counts = {k: n for k, v in values.items() if (n := _count(v)) is not None}
    if len(set(counts.values())) > 1:
        shown = ", ".join(f"{k} has {n}" for k, n in counts.items())
        raise ValueError(f"per-channel values must have one entry per channel alike ({shown})")


def check_channels(spec: Preprocessing, in_channels: int, out_channels: int) -> None:
    """Raise `ValueError` unless every per-channel value of `spec` has `in_channels` entries and
    `outputs.classes` (when given) `out_channels` names."""
    for i, step in enumerate(spec.normalize):
        for name in ("low", "high", "mean", "std", "gain", "offset"):
            n = _count(getattr(step, name, None))
            if n is not None and n != in_channels:
                raise ValueError(
                    f"normalize[{i}].{name} has {n} values but the model has in_channels={in_channels}; "
                    "give one value per input channel, or a single number for all"
                )
    classes = spec.outputs.classes
    if classes and len(classes) != out_channels:
        raise ValueError(
            f"outputs.classes names {len(classes)} channels but the model has out_channels={out_channels}; "
            "name each output channel"
        )


PreprocessingSource = Preprocessing | Mapping[str, Any] | str | os.PathLike[str]


def load_preprocessing(source: PreprocessingSource) -> Preprocessing:
    """A validated `Preprocessing` from a spec, a mapping, or a .json/.yaml/.yml file (checked
    strictly, as JSON; every problem reported with its FILE:LINE:COL as a `ConfigError`)."""
    if isinstance(source, Preprocessing):
        return source
    if isinstance(source, Mapping):
        return validate_as(Preprocessing, source, "<preprocessing>", strict=False)
    if isinstance(source, (str, os.PathLike)):
        doc = parse_file(source)
        return validate_as(Preprocessing, doc.value, os.fspath(source), doc.positions)
    raise ConfigError(
        f"cannot load a preprocessing spec from {type(source).__name__}; pass a Preprocessing, a mapping or a "
        ".json/.yaml path"
    )


def preprocessing_json_schema() -> dict[str, Any]:
    """The JSON Schema (draft 2020-12) of a preprocessing file, as committed in
    ``schemas/preprocessing.schema.json``."""
    schema = with_required_tags(Preprocessing.model_json_schema())
    schema["properties"] = {
        "$schema": {
            "description": "The JSON Schema of this file, for editors; ignored when loading.",
            "type": "string",
        },
        **schema["properties"],
    }
    return {"$schema": SCHEMA_DIALECT, "$id": SCHEMA_ID, "title": "Preprocessing", **schema}


def schema_text() -> str:
    """The schema as committed: indented JSON and a final newline."""
    return json.dumps(preprocessing_json_schema(), indent=2) + "\n"


def dump_preprocessing(spec: Preprocessing, path: str | Path) -> None:
    """Write `spec` as JSON or YAML (by suffix); `load_preprocessing` reads it back equal."""
    p, data = Path(path), spec.model_dump(mode="json")
    if p.suffix.lower() == ".json":
        p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    elif p.suffix.lower() in (".yaml", ".yml"):
        p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    else:
        raise ConfigError(f"{p}: unknown file type {p.suffix!r}; use .json, .yaml or .yml")
