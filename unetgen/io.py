"""Load and dump configs as JSON or YAML (`yaml.safe_load` only)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from .config import UNetConfig
from .presets import PRESETS

ConfigSource = UNetConfig | Mapping[str, Any] | str | Path


class ConfigError(ValueError):
    """A config that cannot be read or is not a valid `UNetConfig`; the message names the file
    and the field path of every problem."""


def _format(error: ValidationError, source: str) -> str:
    lines = []
    for e in error.errors():
        path = ".".join(str(p) for p in e["loc"]) or "(config)"
        lines.append(f"{source}: {path}: {e['msg']}")
    return "\n".join(lines)


def read_document(path: str | Path) -> Any:
    """Parse a .json, .yaml or .yml file."""
    p = Path(path)
    suffix = p.suffix.lower()
    if suffix not in (".json", ".yaml", ".yml"):
        raise ConfigError(f"{p}: unknown config file type {suffix!r}; use .json, .yaml or .yml")
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as err:
        raise ConfigError(f"{p}: cannot read: {err}") from err
    try:
        return json.loads(text) if suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as err:
        raise ConfigError(f"{p}: not valid {suffix[1:].upper()}: {err}") from err


def load_config(source: ConfigSource) -> UNetConfig:
    """A validated `UNetConfig` from a config, a mapping, a .json/.yaml/.yml path or a preset name."""
    if isinstance(source, UNetConfig):
        return source
    name = "<dict>"
    if isinstance(source, str) and source in PRESETS and not Path(source).exists():
        return PRESETS[source].build_config()
    if isinstance(source, (str, Path)):
        name, source = str(source), read_document(source)
    if not isinstance(source, Mapping):
        raise ConfigError(f"{name}: a config must be a mapping of fields, got {type(source).__name__}")
    data = {k: v for k, v in source.items() if k != "$schema"}
    try:
        return UNetConfig.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format(err, name)) from None


def dump_config(config: UNetConfig, path: str | Path) -> None:
    """Write `config` as JSON or YAML (by suffix); `load_config` reads it back equal."""
    p = Path(path)
    data = config.model_dump(mode="json")
    suffix = p.suffix.lower()
    if suffix == ".json":
        p.write_text(json.dumps(data, indent=2) + "\n", encoding="utf-8")
    elif suffix in (".yaml", ".yml"):
        p.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    else:
        raise ConfigError(f"{p}: unknown config file type {suffix!r}; use .json, .yaml or .yml")
