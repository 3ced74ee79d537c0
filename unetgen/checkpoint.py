"""Checkpoints: one `.safetensors` file with the weights, the config and the unetgen version.

safetensors stores raw tensors behind a JSON header, so loading never unpickles and cannot
run code. The metadata holds `format` ("unetgen"), `unetgen_version`, `state_format`, `config`
(the whole config as a JSON object), when given, `preprocessing` (the `Preprocessing` spec the
model was trained with, as a JSON object; `unetgen.config.preprocessing`), `patch_size` (the
input patch it was trained on, a JSON list) and `user_metadata`
(the caller's JSON object: epoch, notes...). `load_unet` rebuilds the model from that config
and checks that the stored tensors are exactly the ones the model has, names, shapes and dtypes,
before copying any of them.

A checkpoint is untrusted input: only a regular file is opened (never a FIFO or device), the
stored config must be a JSON object within the limits config files have (never a path or a
preset name, so no other file is ever read), and every message echoes bounded values only.
"""

from __future__ import annotations

import codecs
import json
import os
import re
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from . import atomic
from .analysis import shapes
from .build import build_unet
from .config import documents
from .config.io import ConfigError, validate_as, validate_document
from .config.preprocessing import Preprocessing, PreprocessingSource, check_channels, load_preprocessing
from .config.unet_config import UNetConfig
from .model.unet import UNet
from .outputs import check_replaceable
from .reprs import short_path, short_repr, short_text

FORMAT = "unetgen"
STATE_FORMAT = "2"
"""The module layout of the stored weights. 2: one module per level (`encoder.{i}.down`,
`encoder.{i}.block`, `decoder.{i}.aux`); unetgen 0.1 wrote `down.{i}`, `encoder.{i}.body` and
`aux_heads.{i}` (no `state_format` entry)."""


RESERVED_METADATA = frozenset(
    {"format", "unetgen_version", "state_format", "config", "preprocessing", "patch_size", "user_metadata"}
)
"""Metadata entries unetgen writes itself; `save_unet(metadata=...)` refuses them as keys."""
MAX_METADATA_BYTES = 1 << 20
"""Largest `metadata` (as JSON text) `save_unet` writes and the loaders read: 1 MiB."""
MAX_METADATA_VALUES = 100_000
"""Most values (counting every list item and mapping value) in `metadata`."""
MAX_HEADER_BYTES = 16 << 20
"""Largest safetensors header read (tensor names and shapes, config, metadata): 16 MiB."""
MAX_CONFIG_BYTES = documents.MAX_BYTES
"""Largest stored config (JSON text) read: the limit config files have."""
MAX_PREPROCESSING_BYTES = documents.MAX_BYTES
"""Largest stored preprocessing spec (JSON text) read: the limit config files have."""
_FLOAT_DTYPES = {"F16": torch.float16, "BF16": torch.bfloat16, "F32": torch.float32, "F64": torch.float64}


class CheckpointError(ValueError):
    """A file that is not a readable unetgen checkpoint, or whose weights do not fit its config;
    the message names the file and what differs."""


def _unwrap(model: nn.Module) -> UNet:
    """The `UNet` inside `DistributedDataParallel` (`.module`) or `torch.compile` (`._orig_mod`)."""
    inner: Any = model
    while not isinstance(inner, UNet):
        nxt = getattr(inner, "module", None)
        nxt = nxt if nxt is not None else getattr(inner, "_orig_mod", None)
        if not isinstance(nxt, nn.Module):
            raise TypeError(f"save_unet needs a unetgen UNet (or a DDP/compiled wrapper of one), got {type(model)}")
        inner = nxt
    return inner


def save_unet(
    model: nn.Module,
    path: str | Path,
    *,
    metadata: Mapping[str, Any] | None = None,
    preprocessing: PreprocessingSource | None = None,
    patch_size: int | Sequence[int] | None = None,
) -> Path:
    """Write `model`'s weights and config to `path` (.safetensors) atomically and return the path.

    `preprocessing` is what the model expects of its input (axes, pixel size, normalisation,
    output class names): a `Preprocessing`, a mapping or a .json/.yaml file, validated as
    `load_preprocessing` does and checked against the model's channels (`check_channels`).
    `load_unet(path).preprocessing` and `checkpoint_preprocessing(path)` give it back.

    `patch_size` is the input patch the model was trained on (an int for every axis, or one per
    axis; a valid input size, else `InputShapeError` with the nearest valid ones). `load_unet(path)
    .patch_size` gives it back (None if not given), and prediction tiles with it by default when
    the model's output depends on the tile (instance, group or layer norm, a global pool:
    `unetgen.analysis.ops.tile_dependence`), as the model saw its inputs in training.

    `metadata` is yours to keep with the weights (normalisation statistics, epoch, class
    names...): a mapping with string keys (not one of `RESERVED_METADATA`) and JSON values
    (dicts with string keys, lists or tuples, strings, finite floats, ints up to 64 bits,
    booleans, None), at most `MAX_METADATA_BYTES` as JSON and `MAX_METADATA_VALUES` values.
    `checkpoint_metadata(path)` and `load_unet(path).metadata` give it back (tuples as lists).

    The file is written to a new file created exclusively next to `path` (never an existing file or
    a planted symlink), flushed to disk and renamed over `path`, so a crash or a full disk mid-save
    leaves any previous checkpoint at `path` intact and no partial file behind. An existing file at
    `path` is replaced only if it is a checkpoint unetgen wrote (its header's ``format: unetgen``,
    `unetgen.outputs`); another file or a symbolic link raises `CheckpointError`."""
    unet = _unwrap(model)
    p = _checked_save_path(path)
    spec = _preprocessing_json(preprocessing, unet.config) if preprocessing is not None else None
    patch = None if patch_size is None else shapes.valid_input_shape(unet.config, patch_size, "patch_size")
    header = {
        "format": FORMAT,
        "unetgen_version": _version(),
        "state_format": STATE_FORMAT,
        "config": _config_json(unet.config),
    }
    if spec is not None:
        header["preprocessing"] = spec
    if patch is not None:
        header["patch_size"] = json.dumps(list(patch))
    if metadata is not None:
        header["user_metadata"] = _metadata_json(metadata)
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
    try:
        with atomic.replacing_path(p) as where:
            save_file(tensors, where, metadata=header)
    except OSError as err:
        raise CheckpointError(f"{short_path(p)}: cannot write the checkpoint: {atomic.reason(err)}") from err
    except Exception as err:  # safetensors' own error: a failed write, tensors sharing memory
        raise CheckpointError(f"{short_path(p)}: cannot write the checkpoint: {_safetensors_reason(err)}") from err
    return p


def _safetensors_reason(err: Exception) -> str:
    """safetensors' words for a failed write ("No space left on device (os error 28)") as
    `atomic.reason` gives them for an OSError."""
    text = str(err)
    code = re.search(r"\(os error (\d+)\)", text)
    return atomic.reason(OSError(int(code.group(1)), text)) if code else short_text(text)


def _checked_save_path(path: Any) -> Path:
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise CheckpointError(f"a checkpoint path must be a str or os.PathLike, not {type(path).__name__}")
    p = Path(path)
    if "\0" in str(p):
        raise CheckpointError(f"{short_path(p)}: the path contains a NUL byte, which no file name can hold")
    if p.suffix != ".safetensors":
        raise CheckpointError(f"{short_path(p)}: a checkpoint path must end in .safetensors")
    if len(str(p)) > documents.MAX_PATH or len(os.fsencode(p.name)) > 255:
        raise CheckpointError(
            f"{short_path(p)}: the path is too long ({len(str(p)):,} characters; a file name has at most 255 "
            f"bytes, a path {documents.MAX_PATH} characters)"
        )
    try:
        return check_replaceable(p, "the checkpoint")  # new, or a checkpoint unetgen wrote; in an existing folder
    except ValueError as err:
        raise CheckpointError(str(err)) from None


def _metadata_json(metadata: Any) -> str:
    """`metadata` as JSON text, or `CheckpointError` naming the offending key."""
    if not isinstance(metadata, Mapping):
        raise CheckpointError(f"metadata must be a mapping of names to JSON values, not {type(metadata).__name__}")
    for key, value in metadata.items():
        if not isinstance(key, str):
            raise CheckpointError(f"metadata keys must be strings, got {short_repr(key)} ({type(key).__name__})")
        if key in RESERVED_METADATA:
            raise CheckpointError(
                f"metadata key {key!r} is reserved (unetgen writes {', '.join(sorted(RESERVED_METADATA))} "
                "itself); rename it, e.g. 'my_" + key + "'"
            )
        try:
            documents.check_limits(value, max_nodes=MAX_METADATA_VALUES)
            _string_keys(value)
            json.dumps(value, allow_nan=False)
        except documents.ParseError as err:
            raise CheckpointError(f"metadata[{short_repr(key)}]: {err.message}") from None
        except (TypeError, ValueError, RecursionError) as err:
            what = short_text(str(err))
            raise CheckpointError(
                f"metadata[{short_repr(key)}] is not JSON ({what}); store plain values, e.g. float(x), "
                "x.tolist(), str(path); NaN and infinity are not JSON"
            ) from None
    try:
        documents.check_limits(dict(metadata), max_nodes=MAX_METADATA_VALUES)
    except documents.ParseError as err:
        raise CheckpointError(f"metadata: {err.message}") from None
    text = json.dumps(dict(metadata), allow_nan=False, ensure_ascii=False)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_METADATA_BYTES:
        raise CheckpointError(
            f"metadata is {len(text):,} characters as JSON; the limit is {MAX_METADATA_BYTES:,} bytes "
            "(store large arrays in a file of their own)"
        )
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise CheckpointError("metadata holds a lone surrogate character, which is not Unicode text") from None
    return text


def _string_keys(value: Any) -> None:
    """Refuse mappings with keys that are not strings anywhere in `value` (JSON would silently
    turn ``{1: 2}`` into ``{"1": 2}``); `value` is already known to be small and shallow."""
    stack = [value]
    while stack:
        item = stack.pop()
        if isinstance(item, Mapping):
            if bad := [k for k in item if not isinstance(k, str)]:
                raise TypeError(f"a key {short_repr(bad[0])} is not a string (JSON keys are strings)")
            stack.extend(item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend(item)


def _preprocessing_json(source: PreprocessingSource, config: UNetConfig) -> str:
    """The spec, validated (a `ConfigError` with FILE:LINE:COL for a file) and checked against the
    model's channels (`CheckpointError`), as JSON text with every field written out."""
    spec = load_preprocessing(source)
    try:
        check_channels(spec, config.in_channels, config.out_channels)
    except ValueError as err:
        raise CheckpointError(f"preprocessing: {err}") from None
    return json.dumps(spec.model_dump(mode="json"), sort_keys=True)


def _config_json(config: UNetConfig) -> str:
    """Every field written out, so a later version's defaults cannot change the architecture."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def _version() -> str:
    from ._version import __version__

    return __version__


def _open(path: Any) -> Any:
    """A safetensors reader of the regular file at `path`. The path is checked (stat) and opened
    non-blocking, the descriptor checked again (fstat), and on Linux safetensors reads that very
    descriptor (through /proc/self/fd), so nothing swapped in between can block or be read. A file
    that does not start as a safetensors file does is named by its first bytes (`sniff`): a config,
    a torch pickle, a zip, HDF5, an empty file..., with what to do instead."""
    try:
        fd = documents.open_regular(path)
    except documents.ParseError as err:
        raise CheckpointError(f"{short_path(path)}: {err.message}") from None
    try:
        _check_start(path, os.read(fd, SNIFF_BYTES), os.fstat(fd).st_size)
        proc = f"/proc/self/fd/{fd}"
        return safe_open(proc if os.path.exists(proc) else os.fspath(path), framework="pt", device="cpu")
    except CheckpointError:
        raise
    except Exception as err:  # safetensors raises its own SafetensorError for any malformed file
        raise CheckpointError(f"{short_path(path)}: not a complete safetensors file ({short_text(str(err))})") from None
    finally:
        os.close(fd)


def _check_start(path: Any, head: bytes, size: int) -> None:
    """Refuse a file whose first bytes are not a safetensors header's, saying what it is."""
    found = sniff_bytes(head, size)
    if found.kind == "safetensors":
        return
    if found.kind != "unknown":
        raise CheckpointError(f"{short_path(path)}: not a safetensors checkpoint: this is {found.what}; {found.advice}")
    claimed = int.from_bytes(head[:8], "little")
    if len(head) < 8 or claimed > MAX_HEADER_BYTES:
        raise CheckpointError(
            f"{short_path(path)}: not a complete safetensors file (its header claims {claimed:,} bytes; a "
            f"checkpoint's header, with the tensor names, config and metadata, is at most {MAX_HEADER_BYTES:,})"
        )


# -- what a file is, from its first bytes -------------------------------------------------------

SNIFF_BYTES = 512
"""Bytes read from the start of a file to say what it is (`sniff`)."""


@dataclass(frozen=True)
class Sniffed:
    """What a file is, from its first bytes: `kind` (one of `SNIFFED_KINDS`), `what` it is in
    words ("a torch pickle (torch.save ...)") and the `advice` for someone who took it for a
    checkpoint or for weights."""

    kind: str
    what: str
    advice: str


_TORCH_ADVICE = (
    "unetgen reads checkpoints as safetensors and never unpickles them: pass it with its config as "
    "weights (unetgen predict CONFIG --weights FILE, read with torch.load(weights_only=True)), or convert it "
    "once: model = build_unet(config); model.load_state_dict(torch.load(FILE, weights_only=True)); "
    "save_unet(model, 'model.safetensors')"
)
_CONFIG_ADVICE = (
    "build the model from a config with build_unet(path) or load_config(path) (CLI: pass it as CONFIG, and "
    "its weights with --weights); a checkpoint is the .safetensors file save_unet writes"
)
_ADVICE = {
    "torch": _TORCH_ADVICE,
    "pickle": _TORCH_ADVICE,
    "torchscript": "run it with torch.jit.load; it holds a traced program, not a checkpoint: keep the weights "
    "with save_unet(model, 'model.safetensors')",
    "onnx": "run it with onnxruntime; it cannot be loaded back as weights: keep them with save_unet",
    "zip": "unzip it first; a checkpoint is a single .safetensors file (save_unet)",
    "gzip": "decompress it first (gunzip); a checkpoint is a single .safetensors file (save_unet)",
    "hdf5": "unetgen reads safetensors checkpoints: load the weights into a unetgen model (copy_weights, "
    "docs/interop.md) and save it with save_unet",
    "numpy": "an image to predict is --input (predict_tiled in Python); a checkpoint is the .safetensors file "
    "save_unet writes",
    "image": "an image to predict is --input; a checkpoint is the .safetensors file save_unet writes",
    "pdf": "a checkpoint is the .safetensors file save_unet writes",
    "json": _CONFIG_ADVICE,
    "yaml": _CONFIG_ADVICE,
    "text": "a checkpoint is the .safetensors file save_unet writes",
    "empty": "an interrupted copy or save? write it again with save_unet",
    "short": "an interrupted copy or save? write it again with save_unet",
    "safetensors": "",
    "unknown": "a checkpoint is the .safetensors file save_unet writes",
}
SNIFFED_KINDS = frozenset(_ADVICE)
"""Every `Sniffed.kind`."""
_MAGIC = (  # (first bytes, kind, what)
    (b"\x89HDF\r\n\x1a\n", "hdf5", "an HDF5 file (Keras .h5 weights?)"),
    (b"\x93NUMPY", "numpy", "a NumPy array (.npy)"),
    (b"\x1f\x8b", "gzip", "a gzip-compressed file"),
    (b"\x89PNG\r\n\x1a\n", "image", "a PNG image"),
    (b"II*\x00", "image", "a TIFF image"),
    (b"MM\x00*", "image", "a TIFF image"),
    (b"II+\x00", "image", "a BigTIFF image"),
    (b"\xff\xd8\xff", "image", "a JPEG image"),
    (b"%PDF", "pdf", "a PDF document"),
)
_TORCHSCRIPT_ENTRY = re.compile(r"[^/]+/(code/|constants\.pkl|data/\d|\.data/|version$|byteorder$)")


def _zip_kind(head: bytes) -> tuple[str, str]:
    """A zip archive by the name of its first entry: torch.save's (``archive/data.pkl``), a
    TorchScript archive's, or any other."""
    length = int.from_bytes(head[26:28], "little")
    name = head[30 : 30 + length].decode("utf-8", "replace")
    if name.endswith("/data.pkl") or name == "data.pkl":
        return "torch", "a torch pickle (torch.save: .pth/.pt, zip format)"
    if _TORCHSCRIPT_ENTRY.match(name):
        return "torchscript", "a TorchScript archive (torch.jit.save, unetgen.export.to_torchscript)"
    return "zip", f"a zip archive (its first entry is {short_repr(name[:60])})"


def _text_kind(head: bytes) -> tuple[str, str] | None:
    """A text file: JSON, XML, or other text (a YAML config?), showing its first line."""
    try:  # an incremental decoder: the last character may be cut by the SNIFF_BYTES limit
        text = codecs.getincrementaldecoder("utf-8")("strict").decode(head, final=False).removeprefix("\ufeff")
    except UnicodeDecodeError:
        return None
    if not text or not all(c.isprintable() or c in "\t\r\n" for c in text):
        return None
    first = short_repr(next((line.strip() for line in text.splitlines() if line.strip()), "")[:40])
    if text.lstrip()[:1] in ("{", "["):
        return "json", f"a JSON text file, likely a config (it starts with {first})"
    if text.lstrip()[:1] == "<":
        return "text", f"an XML, SVG or HTML text file (it starts with {first})"
    if re.match(r"\s*(#.*\n\s*)*(---\s*\n\s*)?[A-Za-z_][\w-]*\s*:", text):
        return "yaml", f"a YAML text file, likely a config (it starts with {first})"
    return "text", f"a text file (it starts with {first})"


def _binary_kind(head: bytes) -> tuple[str, str] | None:
    if head.startswith(b"PK\x03\x04"):
        return _zip_kind(head)
    if head.startswith(b"PK\x05\x06"):
        return "zip", "an empty zip archive"
    if head[:1] == b"\x80" and head[1:2] in (b"\x02", b"\x03", b"\x04", b"\x05"):
        return "pickle", "a Python pickle (torch.save's legacy format for .pth/.pt, or pickle.dump)"
    if head[:1] == b"\x08" and head[2:3] == b"\x12":
        return "onnx", "an ONNX model (torch.onnx.export, unetgen.export.to_onnx)"
    return next(((kind, what) for magic, kind, what in _MAGIC if head.startswith(magic)), None)


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    """An 8-byte little-endian header length that fits the file and the limit, then a JSON object."""
    claimed = int.from_bytes(head[:8], "little")
    return len(head) >= 10 and head[8:9] == b"{" and 2 <= claimed <= min(MAX_HEADER_BYTES, size - 8)


def sniff_bytes(head: bytes, size: int) -> Sniffed:
    """What a file of `size` bytes that starts with `head` (its first `SNIFF_BYTES` or all) is."""
    if not head:  # by what was read: files in /proc say 0 bytes and hold text
        return Sniffed("empty", "an empty file (0 bytes)", _ADVICE["empty"])
    if _looks_like_safetensors(head, size):
        return Sniffed("safetensors", "a safetensors file", "")
    kind, what = _binary_kind(head) or _text_kind(head) or ("unknown", "")
    if kind == "unknown" and size < 10:
        kind, what = "short", f"a file of {size} bytes, too short for a safetensors file"
    return Sniffed(kind, what, _ADVICE[kind])


def sniff(path: str | os.PathLike[str]) -> Sniffed:
    """What the regular file at `path` is, from its first `SNIFF_BYTES` bytes (a FIFO, device or
    directory raises `CheckpointError` without being read)."""
    try:
        fd = documents.open_regular(path)
    except documents.ParseError as err:
        raise CheckpointError(f"{short_path(path)}: {err.message}") from None
    try:
        return sniff_bytes(os.read(fd, SNIFF_BYTES), os.fstat(fd).st_size)
    except OSError as err:
        raise CheckpointError(f"{short_path(path)}: cannot read the file: {err.strerror or err}") from None
    finally:
        os.close(fd)


def _check_format(path: Any, metadata: dict[str, str] | None) -> dict[str, str]:
    meta = metadata or {}
    if "format" not in meta:
        raise CheckpointError(
            f"{short_path(path)}: not a unetgen checkpoint: this is a safetensors file without unetgen's metadata "
            "(a plain state_dict, e.g. from safetensors.torch.save_file); load it into the model of its config: "
            "model = build_unet(config); model.load_state_dict(safetensors.torch.load_file(path)); then "
            "save_unet(model, 'model.safetensors') keeps the config with the weights"
        )
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{short_path(path)}: not a unetgen checkpoint (metadata format={short_repr(meta.get('format'))}, "
            f"expected {FORMAT!r}; write checkpoints with unetgen.save_unet)"
        )
    return meta


def _read_config(path: Any, metadata: dict[str, str] | None) -> UNetConfig:
    """The stored config: a JSON object, parsed and validated as a document with the limits
    config files have. A string (a path or a preset name) or any other JSON value is refused:
    a checkpoint never makes unetgen read another file."""
    meta, shown = _check_format(path, metadata), short_path(path)
    text = meta.get("config")
    if text is None:
        raise CheckpointError(f"{shown}: the metadata has no 'config' entry")
    if len(text) > MAX_CONFIG_BYTES:
        raise CheckpointError(
            f"{shown}: the metadata 'config' is {len(text):,} characters; a config is a few kilobytes "
            f"(limit {MAX_CONFIG_BYTES:,})"
        )
    try:
        doc = documents.parse(text, "json")
    except documents.ParseError as err:
        where = f" (line {err.line}, column {err.column})" if (err.line, err.column) != (1, 1) else ""
        raise CheckpointError(f"{shown}: the metadata 'config' is not valid JSON: {err.message}{where}") from None
    if not isinstance(doc.value, dict):
        kind = {str: "string", list: "list", bool: "boolean", int: "number", float: "number"}.get(
            type(doc.value), "null"
        )
        raise CheckpointError(
            f"{shown}: the metadata 'config' is a JSON {kind}, not an object; a checkpoint stores its whole "
            "config (save_unet writes every field), never a path or a preset name, so it is refused"
        )
    try:
        return validate_document(doc.value, f"{shown}: config", doc.positions)
    except ConfigError as err:
        raise CheckpointError(f"{shown}: the stored config is not a valid UNetConfig:\n{err}") from None


def _read_user_metadata(path: Any, metadata: dict[str, str] | None) -> dict[str, Any]:
    meta, shown = _check_format(path, metadata), short_path(path)
    text = meta.get("user_metadata")
    if text is None:
        return {}
    if len(text) > MAX_METADATA_BYTES:
        raise CheckpointError(
            f"{shown}: the metadata 'user_metadata' is {len(text):,} characters; the limit is {MAX_METADATA_BYTES:,}"
        )
    try:
        value = json.loads(text, parse_constant=_no_constant, object_pairs_hook=_no_duplicates)
        documents.check_limits(value, max_nodes=MAX_METADATA_VALUES)
    except documents.ParseError as err:
        raise CheckpointError(f"{shown}: the metadata 'user_metadata': {err.message}") from None
    except RecursionError:
        raise CheckpointError(
            f"{shown}: the metadata 'user_metadata' is nested deeper than {documents.MAX_NESTING} levels"
        ) from None
    except ValueError as err:  # not JSON, a duplicate key, NaN, or an int of thousands of digits
        if "integer string conversion" in str(err):
            what = "holds a number of thousands of digits"
            raise CheckpointError(f"{shown}: the metadata 'user_metadata' {what}") from None
        raise CheckpointError(
            f"{shown}: the metadata 'user_metadata' is not valid JSON ({short_text(str(err))})"
        ) from None
    if not isinstance(value, dict):
        raise CheckpointError(f"{shown}: the metadata 'user_metadata' is a {type(value).__name__}, not a JSON object")
    return value


def _read_preprocessing(path: Any, metadata: dict[str, str] | None, config: UNetConfig) -> Preprocessing | None:
    """The stored spec (None when the checkpoint has none: one written before specs were stored,
    or without one): a JSON object within the limits config files have, validated strictly as a
    `Preprocessing` and checked against the stored config's channels."""
    meta, shown = _check_format(path, metadata), short_path(path)
    text = meta.get("preprocessing")
    if text is None:
        return None
    if len(text) > MAX_PREPROCESSING_BYTES:
        raise CheckpointError(
            f"{shown}: the metadata 'preprocessing' is {len(text):,} characters; a spec is a few kilobytes "
            f"(limit {MAX_PREPROCESSING_BYTES:,})"
        )
    try:
        doc = documents.parse(text, "json")
    except documents.ParseError as err:
        raise CheckpointError(f"{shown}: the metadata 'preprocessing' is not valid JSON: {err.message}") from None
    if not isinstance(doc.value, dict):
        raise CheckpointError(
            f"{shown}: the metadata 'preprocessing' is a JSON {type(doc.value).__name__}, not an object; save_unet "
            "stores the whole spec, never a path"
        )
    try:
        spec = validate_as(Preprocessing, doc.value, f"{shown}: preprocessing", doc.positions)
        check_channels(spec, config.in_channels, config.out_channels)
    except (ConfigError, ValueError) as err:
        raise CheckpointError(f"{shown}: the metadata 'preprocessing' is not a valid spec:\n{err}") from None
    return spec


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) != len(pairs):
        raise ValueError("a key appears twice")
    return out


def _check_state_format(path: str | Path, metadata: dict[str, str]) -> None:
    stored = metadata.get("state_format")
    if stored != STATE_FORMAT:
        written = f"state_format {short_repr(stored)}" if stored is not None else "the module layout of unetgen 0.1"
        raise CheckpointError(
            f"{short_path(path)}: the weights use {written} but this unetgen reads state_format {STATE_FORMAT!r} "
            "(one module per level); load it with the unetgen version that wrote it "
            f"({short_repr(metadata.get('unetgen_version', 'unknown'))}) and re-save the state_dict, or rebuild "
            "the model from checkpoint_config(path) and retrain"
        )


MAX_PATCH_TEXT = 1000
"""Longest stored `patch_size` (JSON text) read."""


def _read_patch_size(path: Any, header: dict[str, str] | None, config: UNetConfig) -> tuple[int, ...] | None:
    """The stored training patch, checked: a list of one valid input size per spatial axis."""
    text = (header or {}).get("patch_size")
    if text is None:
        return None
    shown, dims = short_path(path), config.spatial_dims
    try:
        value = json.loads(text) if len(text) <= MAX_PATCH_TEXT else None
    except ValueError:
        value = None
    if (
        not isinstance(value, list)
        or len(value) != dims
        or not all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
        or not shapes.is_valid_input_shape(config, tuple(value))
    ):
        raise CheckpointError(
            f"{shown}: the metadata 'patch_size' is {short_text(text)}, not a list of {dims} valid input sizes of "
            "the stored config; save the checkpoint again with save_unet(..., patch_size=...)"
        )
    return tuple(value)


def checkpoint_config(path: str | Path) -> UNetConfig:
    """The config stored in a checkpoint (reads the header only, no weights)."""
    with _open(path) as f:
        return _read_config(path, f.metadata())


def checkpoint_preprocessing(path: str | Path) -> Preprocessing | None:
    """The preprocessing spec given to `save_unet` (None if none), read from the header only."""
    with _open(path) as f:
        header = f.metadata()
        return _read_preprocessing(path, header, _read_config(path, header))


def checkpoint_metadata(path: str | Path) -> dict[str, Any]:
    """The `metadata` given to `save_unet` (``{}`` if none), read from the header only."""
    with _open(path) as f:
        return _read_user_metadata(path, f.metadata())


def _name(key: str) -> str:
    return key if len(key) <= 80 else short_repr(key)


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(map(_name, names[:limit]))
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def _check_dtypes(path: Any, stored: dict[str, str], expected: dict[str, torch.dtype]) -> None:
    """Floating-point tensors must be stored as one of F16, BF16, F32, F64, all alike; every other
    tensor (batch norm's step counter) with exactly the model's dtype."""
    shown, floats = short_path(path), {}
    for key in sorted(stored.keys() & expected.keys()):
        dtype, want = stored[key], expected[key]
        if want.is_floating_point:
            if dtype not in _FLOAT_DTYPES:
                raise CheckpointError(
                    f"{shown}: tensor {_name(key)} is stored as {short_repr(dtype)}; weights must be floating "
                    f"point ({', '.join(_FLOAT_DTYPES)}), all of one dtype"
                )
            floats.setdefault(dtype, key)
        elif _FLOAT_DTYPES.get(dtype) is not None or dtype != _safetensors_name(want):
            raise CheckpointError(
                f"{shown}: tensor {_name(key)} is stored as {short_repr(dtype)}; it must be "
                f"{_safetensors_name(want)} ({want})"
            )
    if len(floats) > 1:
        mixed = ", ".join(f"{d} ({_name(k)})" for d, k in floats.items())
        raise CheckpointError(
            f"{shown}: the weights mix floating-point dtypes: {mixed}; a checkpoint holds one dtype "
            "(save the model after model.to(dtype))"
        )


def _safetensors_name(dtype: torch.dtype) -> str:
    names = {torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8"}
    return names.get(dtype, "BOOL" if dtype == torch.bool else str(dtype))


def _check_names_and_shapes(
    path: Any, found: dict[str, tuple[int, ...]], expected: dict[str, tuple[int, ...]], strict: bool
) -> None:
    """The stored tensors are the model's, names and shapes; with `strict=False` missing and
    unexpected names only warn."""
    missing = sorted(expected.keys() - found.keys())
    unexpected = sorted(found.keys() - expected.keys())
    mismatched = [
        f"{k} (file {list(found[k])}, config {list(expected[k])})"
        for k in sorted(expected.keys() & found.keys())
        if found[k] != expected[k]
    ]
    problems = [
        f"{what}: {_listing(names)}"
        for what, names in (("shape mismatch", mismatched), ("missing", missing), ("unexpected", unexpected))
        if names and (strict or what == "shape mismatch")
    ]
    if problems:
        raise CheckpointError(f"{short_path(path)}: the weights do not fit the stored config; " + "; ".join(problems))
    if missing or unexpected:
        warnings.warn(
            f"{short_path(path)}: loading non-strictly; missing: {_listing(missing) or 'none'}; "
            f"unexpected: {_listing(unexpected) or 'none'}",
            stacklevel=3,
        )


def load_unet(path: str | Path, *, device: torch.device | str | None = None, strict: bool = True) -> UNet:
    """The model saved by `save_unet`, in eval mode, on `device` (default CPU).

    The stored tensor names and shapes must equal those of the model its config builds;
    otherwise `CheckpointError` names the missing, unexpected and mis-shaped tensors. With
    `strict=False` missing and unexpected tensors only warn (missing ones keep their fresh
    initialisation); a shape mismatch always raises. The floating-point parameters take the
    stored dtype, which must be one of float16, bfloat16, float32, float64 for every weight
    (integer, bool, complex, float8 or mixed dtypes raise `CheckpointError` naming a tensor).

    The model's `metadata` attribute holds the `metadata` given to `save_unet` (``{}`` if none),
    as `checkpoint_metadata(path)` returns it, `preprocessing` the spec given to it (None if
    none), as `checkpoint_preprocessing(path)` returns it, and `patch_size` the training patch
    given to it (a tuple, None if none).

    `unetgen.load_unet` (`unetgen.share.load.load_unet`) also reads model folders and bioimage.io
    packages; this one reads .safetensors checkpoints."""
    shown = short_path(path)
    with _open(path) as f:
        header = f.metadata()
        config = _read_config(path, header)
        _check_state_format(path, header)
        user_metadata = _read_user_metadata(path, header)
        spec = _read_preprocessing(path, header, config)
        patch = _read_patch_size(path, header, config)
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        dtypes = {k: f.get_slice(k).get_dtype() for k in f.keys()}
        model = build_unet(config, device=device)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
        _check_names_and_shapes(path, found, expected, strict)
        _check_dtypes(path, dtypes, {k: v.dtype for k, v in model.state_dict().items()})
        try:
            state = {k: f.get_tensor(k) for k in found if k in expected}
        except Exception as err:
            raise CheckpointError(f"{shown}: cannot read the weights ({short_text(str(err))})") from None
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    if floats:
        model.to(dtype=floats[0])
    model.load_state_dict(state, strict=False)
    model.metadata = user_metadata
    model.preprocessing = spec
    model.patch_size = patch
    return model.eval()
