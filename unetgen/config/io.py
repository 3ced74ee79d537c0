"""Load and dump configs as JSON or YAML files.

Files are parsed by `unetgen.documents` (size limits, no YAML tags or alias bombs, no duplicate
keys, positions of every key) and validated strictly, as JSON: a number written as a string
(``depth: "4"``) or a boolean for an int is an error, exactly as the JSON Schema in ``schemas/``
says. Every problem becomes a `Problem` with the file, line, column and field path, and
`load_config` raises them all at once as a `ConfigError`. Mappings passed from Python are
validated as Python (lax: tuples or lists, option instances or dicts).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

from ..reprs import short_path
from . import documents
from .diagnostics import Problem, format_path, problems_from, short_repr
from .presets import PRESETS
from .unet_config import UNetConfig

__all__ = [
    "ConfigError",
    "ConfigSource",
    "Problem",
    "dump_config",
    "load_config",
    "parse_file",
    "read_document",
    "resolve_config",
    "validate_as",
    "validate_document",
]

ConfigSource = UNetConfig | Mapping[str, Any] | str | Path
M = TypeVar("M", bound=BaseModel)
SUFFIXES = {".json": "json", ".yaml": "yaml", ".yml": "yaml"}


MAX_SHOWN = 50
"""Most problems a `ConfigError`'s message lists (its `problems` holds them all)."""


class ConfigError(ValueError):
    """A config that cannot be read or is not a valid `UNetConfig`. `problems` holds one `Problem`
    (file, line, column, field path, message) per problem; the message is one line per problem,
    ``FILE:LINE:COLUMN: field.path: message`` (the first `MAX_SHOWN`, then how many more)."""

    def __init__(self, problems: Sequence[Problem] | str) -> None:
        self.problems: tuple[Problem, ...] = () if isinstance(problems, str) else tuple(problems)
        if isinstance(problems, str):
            super().__init__(problems)
            return
        lines = [str(p) for p in self.problems[:MAX_SHOWN]]
        if len(self.problems) > MAX_SHOWN:
            lines.append(f"... and {len(self.problems) - MAX_SHOWN} more problems (all in ConfigError.problems)")
        super().__init__("\n".join(lines))

    def __reduce__(self) -> tuple[Any, ...]:
        return type(self), (self.problems or str(self),)


def _file_problem(source: str, message: str, line: int | None = 1, column: int | None = 1) -> ConfigError:
    return ConfigError([Problem(source, line, column, "(file)", message)])


def parse_file(path: str | os.PathLike[str]) -> documents.Document:
    """Parse a .json, .yaml or .yml file into plain values with the position of every key
    (`unetgen.config.documents`); `ConfigError` with the file's position otherwise."""
    if not isinstance(path, (str, os.PathLike)):
        raise ConfigError(f"a config path must be a str or os.PathLike, not {type(path).__name__}")
    name = os.fspath(path)
    if not isinstance(name, str):
        raise ConfigError(f"a config path must be text, not {type(name).__name__}")
    kind = SUFFIXES.get(Path(name.replace("\0", "")).suffix.lower())
    if kind is None:
        suffix = short_repr(Path(name.replace("\0", "")).suffix)
        raise _file_problem(name, f"unknown config file type {suffix}; use .json, .yaml or .yml")
    try:
        return documents.parse(documents.read_text(name), kind)  # type: ignore[arg-type]
    except documents.ParseError as err:
        raise _file_problem(name, err.message, err.line, err.column) from None


def read_document(path: str | Path) -> Any:
    """Parse a .json, .yaml or .yml config file into plain values (see `unetgen.documents`)."""
    return parse_file(path).value


def validate_document(
    document: Any,
    source: str = "<document>",
    positions: Mapping[tuple[str | int, ...], tuple[int, int]] | None = None,
    *,
    strict: bool = True,
) -> UNetConfig:
    """Validate a parsed document (`strict`: as JSON, the way files are checked; otherwise as a
    Python mapping). A top-level ``"$schema"`` string is ignored. Raises `ConfigError`."""
    return validate_as(UNetConfig, document, source, positions, strict=strict)


def validate_as(
    model: type[M],
    document: Any,
    source: str = "<document>",
    positions: Mapping[tuple[str | int, ...], tuple[int, int]] | None = None,
    *,
    strict: bool = True,
) -> M:
    """`validate_document` for any pydantic `model` whose documents are mappings (the config, the
    preprocessing spec): the same limits, JSON checks and FILE:LINE:COL problems."""
    where = (1, 1) if positions is not None else (None, None)
    if not isinstance(document, Mapping):
        kind = "list" if isinstance(document, list) else type(document).__name__
        raise ConfigError([Problem(source, *where, "(config)", f"a config is a mapping of fields, not a {kind}")])
    try:
        documents.check_limits(document)
    except documents.ParseError as err:
        raise ConfigError([Problem(source, *where, "(config)", err.message)]) from None
    data = dict(document)
    if "$schema" in data and not isinstance(schema := data.pop("$schema"), str):
        pos = (positions or {}).get(("$schema",), where)
        message = f"must be a string (the schema's URL or path), got {short_repr(schema)}"
        raise ConfigError([Problem(source, *pos, "$schema", message)])
    if strict:
        if (found := _lone_surrogate(data)) is not None:
            path, index, char = found
            pos = _position(positions, path, where)
            message = (
                f"the text holds a lone surrogate U+{ord(char):04X} (character {index + 1} of the string), "
                "which is not Unicode; remove it or write the character it was meant to pair with"
            )
            raise ConfigError([Problem(source, *pos, format_path(path), message)])
        try:
            json.dumps(data, allow_nan=True)
        except (TypeError, ValueError, RecursionError) as err:  # not JSON, or an int of thousands of digits
            raise ConfigError([Problem(source, *where, "(config)", f"not a JSON document: {err}")]) from None

    def validate(doc: dict[str, Any]) -> M:
        if not strict:
            return model.model_validate(doc)
        return model.model_validate_json(json.dumps(doc, allow_nan=True), strict=True)

    try:
        return validate(data)
    except ValidationError as err:
        raise ConfigError(problems_from(err, data, source, positions, model=model)) from None


def _lone_surrogate(document: Any) -> tuple[tuple[str | int, ...], int, str] | None:
    """(path, index, character) of the first lone surrogate in a key or string of `document`
    (JSON's ``"\\ud800"`` escapes decode to one; it cannot be encoded as UTF-8)."""
    stack: list[tuple[tuple[str | int, ...], Any]] = [((), document)]
    while stack:
        path, item = stack.pop()
        texts = [(path, item)] if isinstance(item, str) else []
        if isinstance(item, Mapping):
            texts += [((*path, k), k) for k in item if isinstance(k, str)]
            stack.extend(((*path, k), v) for k, v in item.items())
        elif isinstance(item, list):
            stack.extend(((*path, i), v) for i, v in enumerate(item))
        for where, text in texts:
            try:
                text.encode("utf-8")
            except UnicodeEncodeError as err:
                return where, err.start, text[err.start]
    return None


def _position(
    positions: Mapping[tuple[str | int, ...], tuple[int, int]] | None,
    path: tuple[str | int, ...],
    default: tuple[int | None, int | None],
) -> tuple[int | None, int | None]:
    """The position of `path`, or of its nearest enclosing key, in the original text."""
    for end in range(len(path), -1, -1):
        if positions is not None and path[:end] in positions:
            return positions[path[:end]]
    return default


def load_config(source: ConfigSource, *, key: str | None = None) -> UNetConfig:
    """A validated `UNetConfig` from a config, a mapping, a .json/.yaml/.yml path or a preset name
    (a string without one of those suffixes). Raises `ConfigError` listing every problem.

    `key` picks a config embedded in a larger document, e.g. "model" or "experiment.model"."""
    if key is not None and not isinstance(key, str):
        raise ConfigError(f"key={short_repr(key)} must be a dotted string such as 'model' or 'experiment.model'")
    if isinstance(source, UNetConfig):
        return source
    if isinstance(source, str) and Path(source).suffix.lower() not in SUFFIXES:
        if source in PRESETS and key is None:
            return PRESETS[source].build_config()
        raise _file_problem(
            source, f"not a config file (.json, .yaml, .yml) nor a preset ({', '.join(PRESETS)})", None, None
        )
    if isinstance(source, (str, os.PathLike)):
        doc = parse_file(source)
        if key is None:
            return validate_document(doc.value, str(source), doc.positions)
        prefix = tuple(key.split("."))
        positions = {k[len(prefix) :]: v for k, v in doc.positions.items() if k[: len(prefix)] == prefix}
        return validate_document(_select(doc.value, key, str(source)), f"{source}: {key}", positions)
    if isinstance(source, Mapping):
        if key is not None:
            return validate_document(_select(source, key, "<dict>"), f"<dict>: {key}", strict=False)
        return validate_document(source, "<dict>", strict=False)
    raise ConfigError(
        f"cannot load a config from {type(source).__name__}; pass a UNetConfig, a mapping, a str or os.PathLike "
        "path, or a preset name"
    )


def resolve_config(config: ConfigSource) -> UNetConfig:
    """`config` as a `UNetConfig`: what every helper that takes a config accepts, the same as
    `build_unet`: a `UNetConfig` (returned as it is, at the cost of one `isinstance`), a mapping,
    a .json/.yaml/.yml path or a preset name (`load_config`). Raises `ConfigError`."""
    if isinstance(config, UNetConfig):
        return config
    return load_config(config)


_HYDRA_KEYS = ("_target_", "_convert_", "_recursive_", "_partial_", "seed", "device", "dtype")  # + build_unet's own
_BUILDERS = ("unetgen.build_unet", "unetgen.build.build_unet", "unetgen.unet.build_unet")


def _select(document: Any, key: str, name: str) -> Any:
    """The value under the dotted `key`. A Hydra node `{_target_: unetgen.build_unet, <fields>}`
    (or `{_target_: ..., config: {<fields>}, <more fields>}`) yields its fields, without Hydra's
    keys and build_unet's seed/device/dtype, so that one YAML block serves both `load_config`
    and `hydra.utils.instantiate`."""
    node, path = document, []
    for part in key.split("."):
        where = short_path(".".join(path)) if path else "the top level"
        if not isinstance(node, Mapping):
            raise ConfigError(
                f"{short_path(name)}: cannot look up {short_repr(part)}: {where} is a {type(node).__name__}, "
                "not a mapping"
            )
        if part not in node:
            keys = [k if len(str(k)) <= 40 else short_repr(k) for k in list(node)[:8]]
            found = ", ".join(map(str, keys)) + (f" and {len(node) - 8} more" if len(node) > 8 else "") or "none"
            raise ConfigError(f"{short_path(name)}: no key {short_repr(part)} at {where} (found: {found})")
        node, path = node[part], [*path, part]
    if isinstance(node, Mapping) and "_target_" in node:
        if node["_target_"] not in _BUILDERS:
            raise ConfigError(
                f"{short_path(name)}: {short_path(key)}._target_ is {short_repr(node['_target_'])}; "
                f"expected one of {list(_BUILDERS)}"
            )
        fields = {k: v for k, v in node.items() if k not in _HYDRA_KEYS}
        base = fields.pop("config", {})
        node = {**base, **fields} if isinstance(base, Mapping) else fields | {"config": base}
    return node


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
        raise _file_problem(str(p), f"unknown config file type {suffix!r}; use .json, .yaml or .yml")
