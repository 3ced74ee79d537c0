"""What a shared model says about itself: `ModelInfo` (name, description, authors, licence,
citations, tags), and the words every package's README uses (valid input sizes, parameters,
preprocessing, output channels, citations), so that the bioimage.io package, the Hub folder and
the MONAI bundle describe a model alike."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from .._version import __version__
from ..analysis import costs, shapes
from ..config.preprocessing import Clip, Preprocessing, ScaleLinear, ScaleRange, ZeroMeanUnitVariance
from ..config.unet_config import UNetConfig

__all__ = [
    "PAPER",
    "Author",
    "Citation",
    "ModelInfo",
    "citation_lines",
    "describe_preprocessing",
    "input_sizes",
    "model_info",
    "output_names",
    "size_lines",
]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, use_attribute_docstrings=True)


class Author(_Model):
    """A person who made the model."""

    name: str = Field(min_length=1, max_length=200)
    """Full name."""
    affiliation: str | None = None
    """Institute or company."""
    email: str | None = None
    """Contact address."""
    orcid: str | None = Field(None, pattern=r"^\d{4}-\d{4}-\d{4}-\d{3}[\dX]$")
    """ORCID iD, e.g. 0000-0001-2345-6789."""
    github_user: str | None = None
    """GitHub user name."""


class Citation(_Model):
    """A work to cite: its text and a DOI or a URL."""

    text: str = Field(min_length=1)
    """How to cite it, e.g. "Ronneberger et al. U-Net. MICCAI 2015"."""
    doi: str | None = None
    """The DOI without https://doi.org/, e.g. 10.1007/978-3-319-24574-4_28."""
    url: str | None = None
    """A web address."""


PAPER = Citation(
    text="Ronneberger, Fischer, Brox. U-Net: Convolutional Networks for Biomedical Image Segmentation. MICCAI 2015",
    doi="10.1007/978-3-319-24574-4_28",
)
"""The U-Net paper, cited by every package unless the caller's citations already include it."""


class ModelInfo(_Model):
    """What a package says about the model besides its weights: name, description, authors,
    licence (an SPDX identifier), citations, tags and version."""

    name: str = Field("unetgen U-Net", min_length=5, max_length=128, pattern=r"^[A-Za-z0-9_+\- ()]+$")
    """A human-friendly name (bioimage.io allows letters, digits, spaces and _+-() only)."""
    description: str = Field("A U-Net built with unetgen.", max_length=1024)
    """One or two sentences: what the model segments, in which images."""
    authors: tuple[Author, ...] = ()
    """Who made the model (bioimage.io needs at least one)."""
    license: str = "MIT"
    """The licence of the weights, as an SPDX identifier (MIT, Apache-2.0, CC-BY-4.0, ...)."""
    cite: tuple[Citation, ...] = ()
    """Works to cite; the U-Net paper is added when missing."""
    tags: tuple[str, ...] = ()
    """Keywords, e.g. nuclei, fluorescence, 3d."""
    version: str = "0.1.0"
    """The model's own version."""
    documentation: str = ""
    """More text for the README (Markdown): training data, intended use, limitations."""

    @property
    def citations(self) -> tuple[Citation, ...]:
        """`cite` with the U-Net paper first when it is not there already."""
        return self.cite if any(c.doi == PAPER.doi for c in self.cite) else (PAPER, *self.cite)


def model_info(info: ModelInfo | Mapping[str, Any] | None) -> ModelInfo:
    """`info` as a `ModelInfo` (None: the defaults); a mapping is validated (`ValidationError`)."""
    if info is None:
        return ModelInfo()
    return info if isinstance(info, ModelInfo) else ModelInfo.model_validate(info)


def input_sizes(config: UNetConfig, *, mirror_padded: bool = False) -> list[tuple[int, int]]:
    """(min, step) per spatial axis of the sizes the network takes: ``offset + period * b``; with
    `mirror_padded`, of the image that a `MirrorPadded` network takes: the valid inputs less twice
    the halo, and more than twice the halo (bioimage.io crops the halo off both sides of a block;
    reflection padding needs more than the halo). The whole shape (all axes at their minimum) is
    also valid."""
    rules = [shapes.axis_rule(config, a) for a in range(config.spatial_dims)]
    mins = list(shapes.min_input_shape(config))
    if mirror_padded:
        halo = shapes.halo(config)
        for a, rule in enumerate(rules):
            while mins[a] - 2 * halo[a] <= 2 * halo[a]:
                mins[a] += rule.period
        mins = [m - 2 * h for m, h in zip(mins, halo, strict=True)]
    return [(m, r.period) for m, r in zip(mins, rules, strict=True)]


def output_names(config: UNetConfig, spec: Preprocessing | None) -> list[str]:
    """The output channels' names: `outputs.classes`, or class0, class1, ..."""
    if spec is not None and spec.outputs.classes:
        return list(spec.outputs.classes)
    return [f"class{i}" for i in range(config.out_channels)]


def _values(value: Any) -> str:
    return ", ".join(f"{v:g}" for v in value) if isinstance(value, tuple) else f"{value:g}"


def _step_text(step: Any) -> str:
    match step:
        case ScaleRange(mode="per_sample"):
            scope = "each channel" if step.per_channel else "all channels together"
            return (
                f"scale_range: (x - p{step.min_percentile:g}) / (p{step.max_percentile:g} - p{step.min_percentile:g}"
                f" + {step.eps:g}), percentiles of each image, {scope}"
            )
        case ScaleRange():
            return (
                f"scale_range: (x - {_values(step.low)}) / ({_values(step.high)} - low + {step.eps:g}), stored values"
            )
        case ZeroMeanUnitVariance(mode="per_sample"):
            scope = "each channel" if step.per_channel else "all channels together"
            return f"zero_mean_unit_variance: (x - mean) / (std + {step.eps:g}), of each image, {scope}"
        case ZeroMeanUnitVariance():
            return f"zero_mean_unit_variance: (x - {_values(step.mean)}) / ({_values(step.std)} + {step.eps:g})"
        case ScaleLinear():
            return f"scale_linear: x * {_values(step.gain)} + {_values(step.offset)}"
        case Clip():
            low, high = ("-inf" if step.min is None else step.min), ("inf" if step.max is None else step.max)
            return f"clip to [{low}, {high}]"
    raise AssertionError(step)


def describe_preprocessing(spec: Preprocessing | None) -> list[str]:
    """Markdown bullet lines: layout, pixel size, each normalisation step, output channels."""
    if spec is None:
        return ["- none stored: the network takes the image as it is, (C, *spatial), as float32"]
    lines = [f"- raw image axes: `{spec.axes}`" if spec.axes else "- raw image axes: (C, *spatial)"]
    if spec.pixel_size:
        sizes = ", ".join(f"{a}: {v:g}" for a, v in spec.pixel_size.items())
        lines.append(f"- pixel size ({spec.unit}): {sizes}")
    lines += [f"- {i + 1}. {_step_text(step)}" for i, step in enumerate(spec.normalize)] or ["- no normalisation"]
    if spec.outputs.classes:
        lines.append(f"- output channels: {', '.join(spec.outputs.classes)}")
    if spec.outputs.description:
        lines.append(f"- output: {spec.outputs.description}")
    return lines


def size_lines(config: UNetConfig) -> list[str]:
    """Markdown bullet lines: valid sizes, halo, parameters."""
    axes = "zyx"[3 - config.spatial_dims :]
    rules = [shapes.axis_rule(config, a) for a in range(config.spatial_dims)]
    sizes = ", ".join(f"{ax}: {r.offset} + {r.period}·b (b ≥ {r.b_min})" for ax, r in zip(axes, rules, strict=True))
    lines = [
        f"- {config.spatial_dims}D, {config.in_channels} input and {config.out_channels} output channels, "
        f"padding `{config.padding}`",
        f"- valid input sizes: {sizes}; smallest input {shapes.min_input_shape(config)}",
        f"- parameters: {costs.count_parameters(config):,}",
    ]
    if config.padding == "valid" and all(r.stem == 1 for r in rules):
        lines.append(f"- halo (context lost on each side): {shapes.halo(config)}")
    return lines


def citation_lines(info: ModelInfo) -> list[str]:
    """Markdown bullet lines, one per citation."""
    out = []
    for c in info.citations:
        link = f" https://doi.org/{c.doi}" if c.doi else f" {c.url}" if c.url else ""
        out.append(f"- {c.text}.{link}")
    return [*out, f"- Built with unetgen {__version__}."]


def closing_lines(info: ModelInfo) -> list[str]:
    """The end of every model card (README): the documentation, the licence and the citation."""
    return [
        *([info.documentation, ""] if info.documentation else []),
        "## Licence",
        "",
        info.license,
        "",
        "## Citation",
        "",
        *citation_lines(info),
        "",
    ]
