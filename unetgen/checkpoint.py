"""Checkpoints: one `.safetensors` file with the weights, the config and the unetgen version.

safetensors stores raw tensors behind a JSON header, so loading never unpickles and cannot
run code. The metadata holds `format` ("unetgen"), `unetgen_version` and `config` (the
config as JSON); `load_unet` rebuilds the model from that config and checks that the stored
tensors are exactly the ones the model has before copying any of them.
"""

from __future__ import annotations

import json
import os
import uuid
import warnings
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch import nn

from .config import UNetConfig
from .io import ConfigError, load_config
from .unet import UNet, build_unet

FORMAT = "unetgen"
STATE_FORMAT = "2"
"""The module layout of the stored weights. 2: one module per level (`encoder.{i}.down`,
`encoder.{i}.block`, `decoder.{i}.aux`); unetgen 0.1 wrote `down.{i}`, `encoder.{i}.body` and
`aux_heads.{i}` (no `state_format` entry)."""


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


def save_unet(model: nn.Module, path: str | Path) -> Path:
    """Write `model`'s weights and config to `path` (.safetensors) atomically and return the path.

    The file is written next to `path` under a temporary name, flushed to disk and renamed over
    `path`, so a crash mid-save leaves any previous checkpoint at `path` intact."""
    unet = _unwrap(model)
    p = Path(path)
    if p.suffix != ".safetensors":
        raise CheckpointError(f"{p}: a checkpoint path must end in .safetensors")
    tensors = {k: v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
    metadata = {
        "format": FORMAT,
        "unetgen_version": _version(),
        "state_format": STATE_FORMAT,
        "config": _config_json(unet.config),
    }
    tmp = p.with_name(f".{p.name}.{uuid.uuid4().hex}.tmp")  # same directory, so the rename is atomic
    try:
        save_file(tensors, tmp, metadata=metadata)
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
        os.replace(tmp, p)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(p.parent)
    return p


def _config_json(config: UNetConfig) -> str:
    """Every field written out, so a later version's defaults cannot change the architecture."""
    return json.dumps(config.model_dump(mode="json"), sort_keys=True)


def _fsync_dir(directory: Path) -> None:
    """Persist the rename (POSIX); a no-op where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _version() -> str:
    from . import __version__

    return __version__


def _open(path: str | Path) -> Any:
    try:
        return safe_open(str(path), framework="pt", device="cpu")
    except FileNotFoundError:
        raise CheckpointError(f"{path}: no such file") from None
    except Exception as err:  # safetensors raises its own SafetensorError for any malformed file
        raise CheckpointError(f"{path}: not a complete safetensors file ({err})") from None


def _read_config(path: str | Path, metadata: dict[str, str] | None) -> UNetConfig:
    meta = metadata or {}
    if meta.get("format") != FORMAT:
        raise CheckpointError(
            f"{path}: not a unetgen checkpoint (metadata format={meta.get('format')!r}, expected {FORMAT!r}; "
            "write checkpoints with unetgen.save_unet)"
        )
    if "config" not in meta:
        raise CheckpointError(f"{path}: the metadata has no 'config' entry")
    try:
        data = json.loads(meta["config"])
    except json.JSONDecodeError as err:
        raise CheckpointError(f"{path}: the metadata 'config' is not valid JSON: {err}") from None
    try:
        return load_config(data)
    except ConfigError as err:
        raise CheckpointError(f"{path}: the stored config is not a valid UNetConfig:\n{err}") from None


def _check_state_format(path: str | Path, metadata: dict[str, str]) -> None:
    stored = metadata.get("state_format")
    if stored != STATE_FORMAT:
        written = f"state_format {stored!r}" if stored is not None else "the module layout of unetgen 0.1"
        raise CheckpointError(
            f"{path}: the weights use {written} but this unetgen reads state_format {STATE_FORMAT!r} "
            "(one module per level); load it with the unetgen version that wrote it "
            f"({metadata.get('unetgen_version', 'unknown')!r}) and re-save the state_dict, or rebuild "
            "the model from checkpoint_config(path) and retrain"
        )


def checkpoint_config(path: str | Path) -> UNetConfig:
    """The config stored in a checkpoint (reads the header only, no weights)."""
    with _open(path) as f:
        return _read_config(path, f.metadata())


def _listing(names: list[str], limit: int = 6) -> str:
    shown = ", ".join(names[:limit])
    return shown + (f" and {len(names) - limit} more" if len(names) > limit else "")


def load_unet(path: str | Path, *, device: torch.device | str | None = None, strict: bool = True) -> UNet:
    """The model saved by `save_unet`, in eval mode, on `device` (default CPU).

    The stored tensor names and shapes must equal those of the model its config builds;
    otherwise `CheckpointError` names the missing, unexpected and mis-shaped tensors. With
    `strict=False` missing and unexpected tensors only warn (missing ones keep their fresh
    initialisation); a shape mismatch always raises. The floating-point parameters take the
    stored dtype."""
    with _open(path) as f:
        config = _read_config(path, f.metadata())
        _check_state_format(path, f.metadata())
        found = {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        model = build_unet(config, device=device)
        expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
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
            raise CheckpointError(f"{path}: the weights do not fit the stored config; " + "; ".join(problems))
        if missing or unexpected:
            warnings.warn(
                f"{path}: loading non-strictly; missing: {_listing(missing) or 'none'}; "
                f"unexpected: {_listing(unexpected) or 'none'}",
                stacklevel=2,
            )
        try:
            state = {k: f.get_tensor(k) for k in found if k in expected}
        except Exception as err:
            raise CheckpointError(f"{path}: cannot read the weights ({err})") from None
    floats = [v.dtype for v in state.values() if v.is_floating_point()]
    if floats:
        model.to(dtype=floats[0])
    model.load_state_dict(state, strict=False)
    return model.eval()
