"""`build_unet`: a `UNet` from a `UNetConfig`, a dict, a .json/.yaml path, a preset name or a
model folder (its `config.json`)."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path
from typing import Any

import torch

from .analysis import costs
from .config.io import ConfigSource, load_config
from .config.presets import PRESETS
from .model.unet import UNet

FOLDER_CONFIG = "config.json"
"""The config file of a model folder (`unetgen.share.hub.save_folder` writes it; Hub layout)."""


def build_unet(
    config: ConfigSource | None = None,
    *,
    seed: int | None = None,
    device: torch.device | str | None = None,
    dtype: torch.dtype | None = None,
    max_parameters: int | None = costs.DEFAULT_MAX_PARAMETERS,
    **fields: Any,
) -> UNet:
    """Build a `UNet` from a `UNetConfig`, a dict, a .json/.yaml path, a preset name or a model
    folder (a directory: its `FOLDER_CONFIG`, config.json; a preset name wins over a folder of
    that name in the working directory).

    `fields` are config fields set on top of `config` (or on the defaults when `config` is
    None), so that both `build_unet(config={...})` and `build_unet(depth=3, ...)` work, the
    two forms that Hydra-style `{"_target_": "unetgen.build_unet", ...}` instantiation produces.
    `seed` makes the initial weights a function of (seed, config, device type) alone: the
    global RNG is forked, seeded and restored, so the caller's random state is untouched.
    `device="meta"` builds without allocating memory (for size checks of huge configs).
    A config with more than `max_parameters` parameters (default 2e9, `costs.DEFAULT_MAX_PARAMETERS`)
    raises `costs.ParameterBudgetError` with its count, except on the meta device; pass a larger
    budget or None to build it."""
    cfg = load_config(_folder_config(config) if config is not None else {})
    if fields:
        cfg = load_config({**cfg.model_dump(exclude_unset=True), **fields})
    if device is None or torch.device(device).type != "meta":
        costs.check_parameter_budget(cfg, max_parameters)
    with contextlib.ExitStack() as stack:
        if device is not None:
            stack.enter_context(torch.device(device))
        if seed is not None:
            _seed_rng(stack, seed, torch.device(device) if device is not None else torch.empty(0).device)
        model = UNet(cfg)
    return model.to(dtype=dtype) if dtype is not None else model


def _folder_config(config: ConfigSource) -> ConfigSource:
    """A model folder's config.json in place of the folder; any other source as it is."""
    if isinstance(config, str) and config in PRESETS:
        return config
    if isinstance(config, (str, os.PathLike)) and not isinstance(config, bytes) and os.path.isdir(config):
        return Path(config) / FOLDER_CONFIG
    return config


def _seed_rng(stack: contextlib.ExitStack, seed: int, device: torch.device) -> None:
    """Fork the RNG that initialises weights on `device` (restored when `stack` closes) and seed it."""
    if device.type in ("cpu", "meta"):  # meta draws no random numbers; seeding it is a harmless no-op
        stack.enter_context(torch.random.fork_rng(devices=[]))
        torch.default_generator.manual_seed(seed)
        return
    module = getattr(torch, device.type)  # torch.cuda, torch.xpu, torch.mps, ...
    index = device.index if device.index is not None else getattr(module, "current_device", lambda: 0)()
    stack.enter_context(torch.random.fork_rng(devices=[index], device_type=device.type))
    torch.default_generator.manual_seed(seed)  # a few initialisers draw on the CPU
    with module.device(index) if hasattr(module, "device") else contextlib.nullcontext():
        module.manual_seed(seed)  # seeds the current device only
