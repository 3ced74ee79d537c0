"""bioimage.io packages (model format 0.5): `export_bioimageio` writes one, `load_package` reads
one that unetgen wrote back into a `UNet`.

The package holds ``rdf.yaml`` (written with PyYAML: exporting needs no bioimage.io library),
the weights three ways (``pytorch_state_dict`` with the architecture `unetgen.build_unet` and
the config as its kwargs, TorchScript, ONNX), a test input and its expected output (.npy), the
network diagram as the cover, a README with a "Validation" section, and the licence, authors
and citations of `ModelInfo`. The preprocessing spec becomes bioimage.io's preprocessing steps
(`bioimageio_preprocessing`), and is also kept whole under ``config.unetgen`` so that
`load_package` gives it back unchanged.

Valid-padding networks are exported as `MirrorPadded` (architecture
`unetgen.share.MirrorPadded`, the same weights): the output keeps the input's size and the
output axes declare the halo, which bioimage.io's block-wise prediction crops off each block.
Input sizes are ``min + step * n`` per axis (`info.input_sizes`).
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import json
import os
import pickle
import shutil
import tempfile
import warnings
import zipfile
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
import yaml

from .. import atomic
from .._version import __version__
from ..analysis import shapes
from ..build import build_unet
from ..checkpoint import CheckpointError
from ..config import documents
from ..config.io import ConfigError, validate_document
from ..config.preprocessing import (
    Clip,
    Preprocessing,
    ScaleLinear,
    ScaleRange,
    Step,
    ZeroMeanUnitVariance,
    check_channels,
    load_preprocessing,
)
from ..draw import draw_unet
from ..export import to_onnx, to_torchscript
from ..model.unet import UNet
from ..outputs import check_replaceable
from ..predict.preprocess import preprocess, to_model_layout
from ..reprs import short_path, short_text
from .info import (
    ModelInfo,
    closing_lines,
    describe_preprocessing,
    input_sizes,
    model_info,
    output_names,
    size_lines,
)
from .padded import mirror_padded

__all__ = [
    "FORMAT_VERSION",
    "WEIGHT_FORMATS",
    "bioimageio_preprocessing",
    "export_bioimageio",
    "load_package",
    "rdf_json",
]

FORMAT_VERSION = "0.5.4"
"""The bioimage.io model format written (tools that read 0.5 read it; bioimageio.spec updates it)."""
WEIGHT_FORMATS = ("pytorch_state_dict", "torchscript", "onnx")
ONNX_OPSET = 17
RDF = "rdf.yaml"
MAX_PACKAGE_FILE = 4 << 30
"""Largest weights file `load_package` reads from a zip (4 GiB)."""
MAX_RDF_BYTES = 1 << 20
"""Largest rdf.yaml `load_package` reads (1 MiB)."""
_AXES = "zyx"


def _axis_ids(config: Any) -> str:
    return _AXES[3 - config.spatial_dims :]


class _Dumper(yaml.SafeDumper):
    """PyYAML's safe dumper that also quotes y/n (booleans in YAML 1.1, which PyYAML leaves bare),
    so that the axis ids `y` read as strings everywhere."""


def _str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "'" if value in ("y", "Y", "n", "N") else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _str)


def dump_yaml(data: Any) -> str:
    """`data` as YAML that YAML 1.1 and 1.2 readers (bioimage.io's, Java's, PyYAML) read alike."""
    return yaml.dump(data, Dumper=_Dumper, sort_keys=False, allow_unicode=True)


def _identifier(name: str) -> str:
    """`name` as a bioimage.io identifier (channel names): letters, digits and underscores."""
    out = "".join(ch if ch.isalnum() or ch == "_" else "_" for ch in name.strip())
    return out if out and not out[0].isdigit() else f"c_{out}"


# ---------------------------------------------------------------------------------------------
# preprocessing


def _kwargs_values(value: float | tuple[float, ...]) -> float | list[float]:
    return list(value) if isinstance(value, tuple) else value


def _reduce_axes(config: Any, per_channel: bool) -> list[str]:
    return ([] if per_channel else ["channel"]) + list(_axis_ids(config))


def _step_descr(step: Step, config: Any) -> dict[str, Any] | None:
    """One unetgen step as one bioimage.io preprocessing step (None: a no-op, left out)."""
    match step:
        case ScaleRange(mode="per_sample"):
            kwargs = {"axes": _reduce_axes(config, step.per_channel), "min_percentile": step.min_percentile}
            return {"id": "scale_range", "kwargs": kwargs | {"max_percentile": step.max_percentile, "eps": step.eps}}
        case ScaleRange():  # stored values: (x - low) / (high - low + eps) is a fixed linear map
            n = config.in_channels
            low = np.broadcast_to(np.asarray(step.low, dtype=np.float64), (n,))
            high = np.broadcast_to(np.asarray(step.high, dtype=np.float64), (n,))
            gain = 1.0 / (high - low + step.eps)
            return _linear([float(g) for g in gain], [float(-lo * g) for lo, g in zip(low, gain, strict=True)])
        case ZeroMeanUnitVariance(mode="per_sample"):
            return {"id": "zero_mean_unit_variance", "kwargs": {"axes": _reduce_axes(config, step.per_channel)}}
        case ZeroMeanUnitVariance():  # bioimage.io divides by std + 1e-6: fold the rest of eps into std
            std = np.asarray(step.std, dtype=np.float64) + step.eps - 1e-6
            kwargs = {"mean": _kwargs_values(step.mean), "std": std.tolist()}
            if isinstance(step.mean, tuple) or isinstance(step.std, tuple):
                n = config.in_channels
                kwargs = {
                    "mean": np.broadcast_to(np.asarray(step.mean, dtype=np.float64), (n,)).tolist(),
                    "std": np.broadcast_to(std, (n,)).tolist(),
                    "axis": "channel",
                }
            return {"id": "fixed_zero_mean_unit_variance", "kwargs": kwargs}
        case ScaleLinear():
            return _linear(_kwargs_values(step.gain), _kwargs_values(step.offset))
        case Clip():
            return {"id": "clip", "kwargs": {k: v for k, v in (("min", step.min), ("max", step.max)) if v is not None}}
    raise AssertionError(step)


def _linear(gain: float | list[float], offset: float | list[float]) -> dict[str, Any] | None:
    if not isinstance(gain, list) and not isinstance(offset, list):
        return (
            None if (gain, offset) == (1.0, 0.0) else {"id": "scale_linear", "kwargs": {"gain": gain, "offset": offset}}
        )
    return {"id": "scale_linear", "kwargs": {"gain": gain, "offset": offset, "axis": "channel"}}


def bioimageio_preprocessing(spec: Preprocessing | None, config: Any) -> list[dict[str, Any]]:
    """`spec`'s normalisation as bioimage.io 0.5 preprocessing steps: per-sample `scale_range` and
    `zero_mean_unit_variance` reduce over the spatial axes (and the channel axis unless
    per_channel); stored `scale_range` values become `scale_linear`, stored mean and std
    `fixed_zero_mean_unit_variance`; a `scale_linear` that changes nothing is left out."""
    if spec is None:
        return []
    return [d for step in spec.normalize if (d := _step_descr(step, config)) is not None]


# ---------------------------------------------------------------------------------------------
# the package's parts


def _network(model: UNet) -> tuple[UNet, bool]:
    """The network to export (`MirrorPadded` for valid padding) and whether it is mirror-padded."""
    if not isinstance(model, UNet):
        raise TypeError(f"export_bioimageio needs a unetgen UNet, got {type(model).__name__}")
    config = model.config
    if any(shapes.axis_rule(config, a).stem != 1 for a in range(config.spatial_dims)):
        raise ValueError(
            "a network with stem_stride > 1 predicts at a lower resolution than its input, which bioimage.io's "
            "output axes cannot say; export a network with stem_stride: 1"
        )
    if config.padding == "valid":
        return mirror_padded(model), True
    return model.eval(), False


def _test_input(config: Any, spec: Preprocessing | None, image: Any, sizes: list[tuple[int, int]]) -> np.ndarray:
    """The raw test input (1, C, *spatial) float32: `image` (in `spec.axes`'s layout) cropped at
    its centre to the largest size the package takes, or (None) a deterministic random image of
    the smallest size."""
    if image is None:
        rng = np.random.default_rng(0)
        shape = (1, config.in_channels, *(m for m, _ in sizes))
        return rng.gamma(2.0, 100.0, size=shape).astype(np.float32)
    x = np.asarray(to_model_layout(np.asarray(image), spec), dtype=np.float32)
    if x.ndim == config.spatial_dims:
        x = x[None]
    if x.shape[0] != config.in_channels or x.ndim != config.spatial_dims + 1:
        raise ValueError(
            f"test_image of shape {np.shape(image)} is not one image of {config.in_channels} channels and "
            f"{config.spatial_dims} spatial axes (in the layout of preprocessing.axes)"
        )
    crop = []
    for n, (lo, step) in zip(x.shape[1:], sizes, strict=True):
        if n < lo:
            raise ValueError(f"test_image of shape {np.shape(image)} is smaller than the smallest input, {lo} per axis")
        size = lo + (n - lo) // step * step
        crop.append(slice((n - size) // 2, (n - size) // 2 + size))
    return np.ascontiguousarray(x[(slice(None), *crop)])[None]


def _run(net: UNet, spec: Preprocessing | None, raw: np.ndarray) -> tuple[np.ndarray, torch.Tensor]:
    """The expected output of the raw test input, and the network's input (preprocessed)."""
    laid = None if spec is None else spec.model_copy(update={"axes": None})
    x = torch.from_numpy(np.asarray(preprocess(raw[0], laid))[None]).to(next(net.parameters()).dtype)
    with torch.no_grad():
        out = net(x)
    return out.to(torch.float32).numpy(), x


def _space_axes(config: Any, spec: Preprocessing | None, sizes: Sequence[Any], *, halo: Sequence[int] | None) -> list:
    """The spatial axes of the input (`sizes`: (min, step) per axis) or output (`halo`)."""
    axes = []
    for a, ax in enumerate(_axis_ids(config)):
        entry: dict[str, Any] = {"type": "space", "id": ax}
        if halo is None:
            entry["size"] = {"min": sizes[a][0], "step": sizes[a][1]}
        else:
            entry["size"] = {"tensor_id": "input", "axis_id": ax}
            if halo[a] > 0:
                entry["halo"] = halo[a]
        if spec is not None and spec.pixel_size and ax in spec.pixel_size:
            entry |= {"scale": spec.pixel_size[ax], "unit": spec.unit}
        axes.append(entry)
    return axes


def _file(root: Path, name: str) -> dict[str, str]:
    return {"source": name, "sha256": hashlib.sha256((root / name).read_bytes()).hexdigest()}


def _authors(info: ModelInfo) -> list[dict[str, Any]]:
    return [a.model_dump(exclude_none=True) for a in info.authors]


def _weights(root: Path, unet: UNet, net: UNet, padded: bool, example: torch.Tensor, formats: Sequence[str]) -> dict:
    """Write the weights in `formats` under `root` and return the rdf's `weights`."""
    torch_version = torch.__version__.split("+")[0]
    kwargs = {"config": unet.config.model_dump(mode="json")}
    architecture = (
        {"callable": "MirrorPadded", "import_from": "unetgen.share", "kwargs": kwargs}
        if padded
        else {"callable": "build_unet", "import_from": "unetgen", "kwargs": kwargs}
    )
    out: dict[str, Any] = {}
    if "pytorch_state_dict" in formats:
        torch.save({k: v.detach().cpu() for k, v in unet.state_dict().items()}, root / "weights.pt")
        entry = {**_file(root, "weights.pt"), "architecture": architecture, "pytorch_version": torch_version}
        out["pytorch_state_dict"] = entry
    parent = {"parent": "pytorch_state_dict"} if "pytorch_state_dict" in formats else {}
    if "torchscript" in formats:
        torch.jit.save(to_torchscript(net, example), str(root / "weights_torchscript.pt"))
        out["torchscript"] = {**_file(root, "weights_torchscript.pt"), "pytorch_version": torch_version, **parent}
    if "onnx" in formats:
        with warnings.catch_warnings():  # the mirror padding's slices: a note from torch's exporter, no problem
            warnings.filterwarnings("ignore", message="Constant folding - Only steps=1", category=UserWarning)
            to_onnx(net, root / "weights.onnx", example=example, opset_version=ONNX_OPSET)
        out["onnx"] = {**_file(root, "weights.onnx"), "opset_version": ONNX_OPSET, **parent}
    return out


def _readme(info: ModelInfo, config: Any, spec: Preprocessing | None, padded: bool, sizes: Sequence[Any]) -> str:
    axes = _axis_ids(config)
    size_text = ", ".join(f"{ax}: {lo} + {step}·n" for ax, (lo, step) in zip(axes, sizes, strict=True))
    padding = (
        [
            "The network has valid padding: it is packaged mirror-padded by its halo "
            f"({shapes.halo(config)}) so that the output has the input's size; the output axes declare the halo, "
            "which block-wise prediction crops off each block, so blocks join seamlessly."
        ]
        if padded
        else []
    )
    lines = [
        f"# {info.name}",
        "",
        info.description,
        "",
        "![network](cover.svg)",
        "",
        "## Network",
        "",
        *size_lines(config),
        f"- this package takes inputs of {size_text} pixels per axis",
        "",
        *padding,
        "",
        "## Preprocessing",
        "",
        *describe_preprocessing(spec),
        "",
        "## Output",
        "",
        f"Logits, one channel per class: {', '.join(output_names(config, spec))} "
        + ("(sigmoid for the probability)." if config.out_channels == 1 else "(softmax over the channels)."),
        "",
        "## Validation",
        "",
        "The test input (`test_input.npy`, raw) and its expected output (`test_output.npy`) were computed by "
        f"unetgen {__version__}: the preprocessing above, then the packaged network, in float32. Check the "
        "package with bioimage.io's own model test, which runs every weight format on the test input and on "
        "inputs of the declared sizes:",
        "",
        "```",
        "bioimageio test model.zip",
        "```",
        "",
        "unetgen's tests run that check for a valid-padding 2D network, a same-padding 3D network and the paper's "
        "network, and compare bioimage.io's block-wise prediction with `unetgen.predict_tiled` away from the "
        "image border.",
        "",
        *closing_lines(info),
    ]
    return "\n".join(lines)


def _rdf(info: ModelInfo, config: Any, spec: Preprocessing | None, parts: Mapping[str, Any]) -> dict[str, Any]:
    root, padded, sizes = parts["root"], parts["padded"], parts["sizes"]
    halo = shapes.halo(config) if padded else None
    channel_in = {"type": "channel", "channel_names": [f"channel{c}" for c in range(config.in_channels)]}
    names = [_identifier(n) for n in output_names(config, spec)]
    unetgen_config = {"version": __version__, "config": config.model_dump(mode="json")}
    if spec is not None:
        unetgen_config["preprocessing"] = spec.model_dump(mode="json")
    rdf: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "type": "model",
        "name": info.name,
        "description": info.description,
        "version": info.version,
        "authors": _authors(info),
        "cite": [c.model_dump(exclude_none=True) for c in info.citations],
        "license": info.license,
        "tags": list(info.tags) or ["unet", "segmentation", f"{config.spatial_dims}d", "unetgen"],
        "documentation": "README.md",
        "covers": ["cover.svg"] if parts["cover"] else [],
        "inputs": [
            {
                "id": "input",
                "axes": [{"type": "batch"}, channel_in, *_space_axes(config, spec, sizes, halo=None)],
                "test_tensor": _file(root, "test_input.npy"),
                "data": {"type": "float32"},
                "preprocessing": bioimageio_preprocessing(spec, config),
            }
        ],
        "outputs": [
            {
                "id": "output",
                "axes": [
                    {"type": "batch"},
                    {"type": "channel", "channel_names": names},
                    *_space_axes(config, spec, sizes, halo=halo or (0,) * config.spatial_dims),
                ],
                "test_tensor": _file(root, "test_output.npy"),
                "data": {"type": "float32"},
            }
        ],
        "weights": parts["weights"],
        "config": {"unetgen": unetgen_config},
    }
    if not rdf["covers"]:
        del rdf["covers"]
    return rdf


# ---------------------------------------------------------------------------------------------
# export


def export_bioimageio(
    model: UNet,
    path: str | os.PathLike[str],
    *,
    preprocessing: Preprocessing | Mapping[str, Any] | str | os.PathLike[str] | None = None,
    info: ModelInfo | Mapping[str, Any] | None = None,
    test_image: Any = None,
    weight_formats: Sequence[str] = WEIGHT_FORMATS,
) -> Path:
    """Write `model` as a bioimage.io package (format 0.5) and return its path: a ``.zip`` file,
    or a folder for any other `path` (its files, flat, with ``rdf.yaml``).

    `preprocessing`: the spec the model was trained with (a `Preprocessing`, mapping or file);
    `info`: name, description, authors, licence, citations, tags (`ModelInfo`); `test_image`: a
    raw image (in `preprocessing.axes`'s layout) for the test tensors, cropped to a size the
    package takes (default: a random image of the smallest size); `weight_formats`: any of
    pytorch_state_dict, torchscript, onnx (ONNX needs the `export` extra).

    Only what unetgen wrote is replaced (`unetgen.outputs`): an existing ``.zip`` must be a
    package unetgen wrote (``config.unetgen`` in its rdf.yaml), an existing folder must be empty
    or hold such a package; a symbolic link is never replaced nor followed. Anything else raises
    `ValueError` ("give a new name, or remove it yourself") before any work is done."""
    target = _check_target(path)
    unknown = sorted(set(weight_formats) - set(WEIGHT_FORMATS))
    if unknown or not weight_formats:
        raise ValueError(f"weight_formats={list(weight_formats)}: choose from {list(WEIGHT_FORMATS)}")
    spec = None if preprocessing is None else load_preprocessing(preprocessing)
    about = model_info(info)
    config = model.config
    if spec is not None:
        check_channels(spec, config.in_channels, config.out_channels)
    net, padded = _network(model)
    sizes = input_sizes(config, mirror_padded=padded)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        raw = _test_input(config, spec, test_image, sizes)
        expected, example = _run(net, spec, raw)
        np.save(root / "test_input.npy", raw)
        np.save(root / "test_output.npy", expected)
        weights = _weights(root, model, net, padded, example, weight_formats)
        cover = _write_cover(root, config)
        parts = {"root": root, "padded": padded, "sizes": sizes, "weights": weights, "cover": cover}
        (root / "README.md").write_text(_readme(about, config, spec, padded, sizes), encoding="utf-8")
        (root / RDF).write_text(dump_yaml(_rdf(about, config, spec, parts)), encoding="utf-8")
        return _place(root, target)


def _check_target(path: Any) -> Path:
    """`path` as the package's target, if it may be written (`export_bioimageio`'s rule)."""
    if isinstance(path, (str, os.PathLike)) and Path(path).suffix.lower() == ".zip":
        return check_replaceable(path, "the package")
    if isinstance(path, (str, os.PathLike)) and os.path.isdir(path) and not os.path.islink(path):
        target = Path(path)  # an existing folder: checked below
    else:
        target = atomic.check_target(path, "the package")  # a str or os.PathLike, in an existing folder
    if os.path.islink(target):
        raise ValueError(
            f"the package {short_path(target)} is a symbolic link; unetgen never replaces a link nor writes "
            "through it: give a new name, or remove it yourself"
        )
    if target.is_dir() and any(target.iterdir()) and not _is_package_folder(target):
        raise ValueError(
            f"the package folder {short_path(target)} holds files and no package unetgen wrote; unetgen never "
            "replaces what it did not write: give a new name, or remove it yourself"
        )
    if target.exists() and not target.is_dir():
        raise ValueError(f"the package folder {short_path(target)} exists and is not a folder: give a new name")
    return target


def _is_package_folder(root: Path) -> bool:
    try:
        with _reader(root) as read:
            doc = _read_rdf(read)
    except Exception:  # no rdf.yaml, not YAML, too large: not a package unetgen wrote
        return False
    config = doc.get("config") if isinstance(doc, dict) else None
    return isinstance(config, dict) and isinstance(config.get("unetgen"), dict)


def _write_cover(root: Path, config: Any) -> bool:
    try:
        svg = draw_unet(config)
    except ValueError:  # a network the diagram cannot draw: no cover
        return False
    (root / "cover.svg").write_text(svg, encoding="utf-8")
    return True


def _place(root: Path, target: Path) -> Path:
    """Zip the files of `root` into `target` (.zip) or copy them into the folder `target`."""
    if target.suffix.lower() != ".zip":
        target.mkdir(parents=True, exist_ok=True)
        for f in sorted(root.iterdir()):  # through a temporary renamed over its file: never through a link
            with atomic.replacing(target / f.name) as out, open(f, "rb") as src:
                shutil.copyfileobj(src, out, 1 << 20)
        return target
    with atomic.replacing(target) as out, zipfile.ZipFile(out, "w", compression=zipfile.ZIP_DEFLATED) as z:
        for f in sorted(root.iterdir()):  # an exclusive temporary beside the target, renamed onto it
            # weights are stored: deflate gains ~7 % on float weights and took 17 s for the paper's 124 MB
            stored = f.suffix in (".pt", ".onnx")
            z.write(f, f.name, compress_type=zipfile.ZIP_STORED if stored else None)
    return target


# ---------------------------------------------------------------------------------------------
# load


def _read_member(z: zipfile.ZipFile, name: str, limit: int) -> bytes:
    try:
        info = z.getinfo(name)
    except KeyError:
        raise CheckpointError(f"the package has no {name!r}") from None
    if info.file_size > limit:
        raise CheckpointError(f"the package's {name!r} is {info.file_size:,} bytes; the limit is {limit:,}")
    with z.open(info) as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise CheckpointError(f"the package's {name!r} is larger than {limit:,} bytes")
    return data


@contextlib.contextmanager
def _reader(path: Path) -> Iterator[Callable[[str, int], bytes]]:
    """A function (name, size limit) -> bytes over the files of a package zip or folder."""
    if path.is_dir():

        def read_dir(name: str, limit: int) -> bytes:
            file = path / name
            if file.name != name or not file.is_file():
                raise CheckpointError(f"the package has no {name!r}")
            if file.stat().st_size > limit:
                raise CheckpointError(f"the package's {name!r} is larger than {limit:,} bytes")
            return file.read_bytes()

        yield read_dir
        return
    with zipfile.ZipFile(path) as z:
        yield lambda name, limit: _read_member(z, name, limit)


def _read_rdf(read: Callable[[str, int], bytes]) -> Any:
    return documents.parse(read(RDF, MAX_RDF_BYTES).decode("utf-8"), "yaml").value


def load_package(path: str | os.PathLike[str], *, device: torch.device | str | None = None) -> UNet:
    """The `UNet` of a bioimage.io package that unetgen wrote (a .zip or its folder), in eval mode:
    built from the config stored under ``config.unetgen`` and loaded with the pytorch_state_dict
    weights (read with ``torch.load(weights_only=True)``: no code runs). Its `preprocessing`
    attribute holds the stored spec (None if none) and `metadata` the package's name,
    description, licence and authors. Raises `CheckpointError` for anything else."""
    p = Path(path)
    shown = short_path(p)
    try:
        with _reader(p) as read:
            doc = _read_rdf(read)
            stored, state = _stored(doc, read)
        config = validate_document(stored["config"], f"{shown}: config.unetgen.config")
        spec = load_preprocessing(stored["preprocessing"]) if stored.get("preprocessing") is not None else None
    except (
        OSError,
        zipfile.BadZipFile,
        UnicodeDecodeError,
        KeyError,
        TypeError,
        AttributeError,
        RuntimeError,
        pickle.UnpicklingError,
    ) as err:
        raise CheckpointError(f"{shown}: not a readable bioimage.io package ({short_text(str(err))})") from None
    except (documents.ParseError, ConfigError) as err:
        raise CheckpointError(f"{shown}: {short_text(str(err))}") from None
    except CheckpointError as err:
        raise CheckpointError(f"{shown}: {err}") from None
    model = build_unet(config, device=device)
    try:
        model.load_state_dict(state)
    except RuntimeError as err:
        raise CheckpointError(f"{shown}: the weights do not fit the stored config ({short_text(str(err))})") from None
    model.preprocessing = spec
    model.metadata = {k: doc[k] for k in ("name", "description", "license", "authors", "version") if k in doc}
    return model.eval()


def _stored(doc: Any, read: Callable[[str, int], bytes]) -> tuple[dict[str, Any], dict[str, torch.Tensor]]:
    """(config.unetgen, the pytorch_state_dict weights) of a package's rdf."""
    stored = (doc.get("config") or {}).get("unetgen") if isinstance(doc, dict) else None
    if not isinstance(stored, dict) or not isinstance(stored.get("config"), dict):
        raise CheckpointError("its rdf.yaml has no config.unetgen.config: not a package unetgen wrote")
    source = doc["weights"]["pytorch_state_dict"]["source"]
    if not isinstance(source, str):
        raise CheckpointError("its weights.pytorch_state_dict.source is not a file name")
    state = torch.load(io.BytesIO(read(source, MAX_PACKAGE_FILE)), map_location="cpu", weights_only=True)
    return stored, state


def rdf_json(path: str | os.PathLike[str]) -> dict[str, Any]:
    """The rdf.yaml of a package (a .zip or a folder) as plain values, for inspection."""
    with _reader(Path(path)) as read:
        return json.loads(json.dumps(_read_rdf(read)))
