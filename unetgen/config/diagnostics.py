"""Pydantic validation errors turned into `Problem`s a person can act on: the file position of the
offending key, the field path as written in the file, "did you mean" for misspelled keys and
option names, one line per problem even where pydantic reports every branch of a union, and
every field involved in a cross-field rule (each rule declares them; its error carries them)."""

from __future__ import annotations

import difflib
import math
import re
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from ..reprs import short_path, short_repr
from .documents import KeyPath
from .unet_config import UNetConfig

__all__ = ["Problem", "format_path", "problems_from", "short_repr"]

ROOT_EXTRA_KEYS = ("$schema",)
"""Top-level keys a config file may have besides the `UNetConfig` fields."""


@dataclass(frozen=True)
class Problem:
    """One problem in a config: where (`source`, 1-based `line` and `column`, None when the config
    came from a mapping), which field (`field`: a dotted path, list indices in brackets, several
    fields separated by ", " for cross-field rules) and what is wrong (`message`)."""

    source: str
    line: int | None
    column: int | None
    field: str
    message: str

    def __str__(self) -> str:
        source = short_path(self.source)
        where = source if self.line is None else f"{source}:{self.line}:{self.column}"
        field = self.field if len(self.field) <= 200 else f"{self.field[:150]}…{self.field[-40:]}"
        return f"{where}: {field}: {self.message}"


def format_path(path: KeyPath) -> str:
    """``("norm", "num_groups")`` -> ``norm.num_groups``; ``("channels", 2)`` -> ``channels[2]``;
    a key that is not a plain name is quoted: ``['a: b']``."""
    out = ""
    for part in path:
        if isinstance(part, int) or not re.fullmatch(r"[\w$-]+", part):
            out += f"[{short_repr(part)}]"
        else:
            out += f".{part}" if out else part
    return out or "(config)"


def problems_from(
    error: ValidationError,
    document: dict[str, Any],
    source: str,
    positions: Mapping[KeyPath, tuple[int, int]] | None,
    *,
    model: type[BaseModel] = UNetConfig,
) -> list[Problem]:
    """The problems of `document` that `error` reports, sorted by position; `model` is the
    pydantic model the document was validated as (for the field names of "did you mean")."""
    found = []
    for fields, message in _merged(error, document, model):
        line, column = _locate(positions, fields) if positions is not None else (None, None)
        found.append(Problem(source, line, column, ", ".join(map(format_path, fields)) or "(config)", message))
    return sorted(found, key=lambda p: (p.line or 0, p.column or 0))


def _locate(positions: Mapping[KeyPath, tuple[int, int]], paths: list[KeyPath]) -> tuple[int, int]:
    """The position of the first path, or of its nearest enclosing key, found in the document."""
    for path in paths:
        for end in range(len(path), 0, -1):
            if path[:end] in positions:
                return positions[path[:end]]
    return positions.get((), (1, 1))


# ---------------------------------------------------------------------------------------------
# from pydantic's locations to the document's paths


@dataclass(frozen=True)
class _Error:
    path: KeyPath  # where in the document
    in_union: bool  # pydantic's location passed a union branch label, which is not in the document
    message: str
    error: Mapping[str, Any]  # pydantic's

    @property
    def type(self) -> str:
        return self.error["type"]

    @property
    def cross_field(self) -> bool:
        """Whether a cross-field rule of `UNetConfig` reported it (its ctx names the fields)."""
        return self.type == "value_error" and "fields" in (self.error.get("ctx") or {})


def _document_path(loc: tuple[str | int, ...], document: Any) -> tuple[KeyPath, bool]:
    """The longest walk of `loc` through `document`; parts that are not keys or indices there are
    pydantic's labels for union branches and discriminator tags, and are skipped."""
    path: list[str | int] = []
    node, skipped = document, False
    for part in loc:
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and isinstance(part, int) and 0 <= part < len(node):
            node = node[part]
        else:
            skipped = True
            continue
        path.append(part)
    return tuple(path), skipped


def _merged(
    error: ValidationError, document: dict[str, Any], model: type[BaseModel]
) -> list[tuple[list[KeyPath], str]]:
    """(fields, message) per problem: one per place in the document, however many union
    branches pydantic reports there."""
    errors = []
    for e in error.errors():
        path, in_union = _document_path(e["loc"], document)
        errors.append(_Error(path, in_union, _describe(e, path, model), e))

    def deeper_exists(e: _Error) -> bool:
        return any(len(o.path) > len(e.path) and o.path[: len(e.path)] == e.path for o in errors)

    # a union branch that failed on the type of the value is noise when another branch got deeper
    errors = [e for e in errors if not (e.in_union and e.type.endswith("_type") and deeper_exists(e))]
    grouped: dict[Any, list[_Error]] = {}
    for e in errors:
        grouped.setdefault(("cross", e.message) if e.cross_field else e.path, []).append(e)
    out = []
    for group in grouped.values():
        first = group[0]
        fields = [first.path]
        if first.cross_field:
            fields = _involved_fields(first.error["ctx"], document)
        elif first.type == "union_tag_invalid" and isinstance(_get(document, first.path), dict):
            fields = [(*first.path, "type")]
        value = first.error.get("input")
        out.append((fields, _join([e.message for e in group], value) + _list_hint(group, value)))
    return out


_LIST_TYPES = ("tuple_type", "list_type")
_LIST_ENTRIES = {
    "deep_supervision": "the decoder levels, 1..depth-1, that get an auxiliary head",
    "channels": "one width per level, the bottleneck last; or base_channels for a width that doubles per level",
    "decoder_channels": "one width per decoder level, level 0 first",
    "up_channels": "one width per decoder level, level 0 first; or 'skip', 'keep' or 'half'",
    "kernel_size": "one entry per level, each an int or one per spatial axis",
    "strides": "one entry per down-sampling step, each an int or one per spatial axis",
    "stem_stride": "one per spatial axis",
    "convs_per_block": "one per level, the bottleneck last",
    "decoder_convs_per_block": "one per decoder level",
    "blocks_per_level": "one per level, the bottleneck last",
}
"""What the entries of each list field of `UNetConfig` are, for `_list_hint`."""


def _list_hint(group: list[_Error], value: Any) -> str:
    """How to write the list that a field expects where a single value was given: ``1`` is
    ``[1]``, ``"1, 2"`` is ``[1, 2]``, null is ``[]`` (where the field takes an int too, a whole
    float or a quoted number is written as the int); "" when no branch of the field expected a list
    or the value is a mapping or a list already."""
    if not any(e.type in _LIST_TYPES for e in group) or isinstance(value, (list, tuple, dict)):
        return ""
    top = len(group[0].path) == 1
    field = group[0].path[0] if top else ""
    entries = f" ({_LIST_ENTRIES[field]})" if field in _LIST_ENTRIES else ""
    takes_int = any(e.type == "int_type" for e in group)
    if value is None and field == "deep_supervision":  # the one list that may be empty
        return f"; a list is expected: write [] for none{entries}"
    numbers = _numbers(value)
    if numbers is None:
        return f"; {'a number or a list' if takes_int else 'a list'} is expected{entries}" if entries else ""
    if takes_int and len(numbers) == 1:  # a float or a quoted number where an int (or a list) is expected
        return _int_hint(value, numbers[0], entries)
    if isinstance(value, str):
        return f"; a list is expected, not a string: write [{', '.join(numbers)}]{entries}"
    return f"; a list is expected: write [{numbers[0]}] for a list of one{entries}"


def _numbers(value: Any) -> list[str] | None:
    """The numbers a scalar holds as they would be written in a list: a finite number, or a
    string of integers separated by commas or spaces; None for anything else."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return [short_repr(value)] if math.isfinite(value) else None
    if isinstance(value, str) and re.fullmatch(r"\s*-?\d{1,18}(\s*[,\s]\s*-?\d{1,18}){0,63}\s*", value):
        return [str(int(n)) for n in re.findall(r"-?\d+", value)]
    return None


def _int_hint(value: Any, number: str, entries: str) -> str:
    """How to write `value` (a float or a quoted number) as the int the field takes."""
    if isinstance(value, str):
        return f"; write {number} (a number, without quotes) or a list{entries}"
    return f"; write {int(value)} (an integer)" if float(value).is_integer() else ""


def _get(document: Any, path: KeyPath) -> Any:
    for part in path:
        document = document[part]
    return document


_SHOULD = "Input should be "
_GOT = ", got <input>"


def _join(messages: list[str], value: Any) -> str:
    """One message for the errors of every union branch at the same place (``value`` is the
    input; `_GOT` in a message stands for it)."""
    unique = list(dict.fromkeys(messages))
    got = any(m.endswith(_GOT) for m in unique)
    unique = [m.removesuffix(_GOT) for m in unique]
    if all(m.startswith(_SHOULD) for m in unique):
        text = _SHOULD + " or ".join(m[len(_SHOULD) :] for m in unique)
    else:
        text = "; or ".join(unique)
    return text + (f", got {short_repr(value)}" if got else "")


# ---------------------------------------------------------------------------------------------
# messages


def _describe(e: Mapping[str, Any], path: KeyPath, model: type[BaseModel]) -> str:
    kind, loc, value, ctx = e["type"], e["loc"], e.get("input"), e.get("ctx") or {}
    name = next((str(p) for p in reversed(path) if isinstance(p, str)), "config")
    if kind == "extra_forbidden":
        key = str(loc[-1])
        allowed = _allowed_keys(loc[:-1], model)
        hint = _did_you_mean(key, allowed)
        if hint:
            return f"unknown field {short_repr(key)}; {hint}"
        if len(loc) == 1 and model is UNetConfig:
            return f"unknown field {short_repr(key)}; `unetgen schema` lists the fields"
        return f"unknown field {short_repr(key)}; the fields here are {', '.join(allowed)}"
    if kind == "union_tag_invalid":
        tags = _quoted(ctx.get("expected_tags", ""))
        hint = _did_you_mean(str(ctx.get("tag")), tags)
        tag = short_repr(ctx.get("tag"))
        return f"unknown {name} type {tag}; {hint + ' ' if hint else ''}(one of: {', '.join(tags)})"
    if kind == "union_tag_not_found":
        tags = _option_tags(loc, model)
        return f"{name} needs a 'type' key naming one of: {', '.join(tags)}"
    if kind in ("model_attributes_type", "model_type") and (tags := _option_tags(loc, model)):
        names = ", ".join(map(repr, tags))
        return f"{name} should be one of {names} or a mapping with a 'type' key, got {short_repr(value)}"
    if kind == "literal_error" and isinstance(value, str):
        hint = _did_you_mean(value, _quoted(ctx.get("expected", "")))
        return f"{e['msg']}, got {short_repr(value)}{'; ' + hint if hint else ''}"
    if kind == "value_error":
        return str(e["msg"]).removeprefix("Value error, ")
    if ", got " in e["msg"]:  # pydantic's message says what it got already
        return f"{e['msg']}: {short_repr(value)}"
    return f"{e['msg']}{_GOT}"


def _did_you_mean(word: str, choices: list[str]) -> str:
    if len(word) > 100:  # no field or option name is that long
        return ""
    close = difflib.get_close_matches(word, choices, n=1, cutoff=0.6)
    return f"did you mean {close[0]!r}?" if close else ""


def _quoted(text: str) -> list[str]:
    return re.findall(r"'([^']*)'", text)


def _models_in(annotation: Any) -> list[type[BaseModel]]:
    """The pydantic models an annotation may hold (the options of a union)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return [annotation]
    return [m for arg in typing.get_args(annotation) for m in _models_in(arg)]


def _tag(model: type[BaseModel]) -> str | None:
    field = model.model_fields.get("type")
    return field.default if field is not None else None


def _model_at(loc: tuple[str | int, ...], model: type[BaseModel]) -> type[BaseModel] | list[type[BaseModel]] | None:
    """The model (or the options of a union) that pydantic was validating at `loc` in `model`
    (list indices are passed over: a field holding a list of options has its options' models)."""
    parts = [part for part in loc if not isinstance(part, int)]
    while parts:
        part = parts.pop(0)
        if isinstance(part, str) and part not in model.model_fields and re.search(rf"\b{model.__name__}\b", part):
            continue  # pydantic's label of a union's branch that is this model
        field = model.model_fields.get(part) if isinstance(part, str) else None
        options = _models_in(field.annotation) if field is not None else []
        if not options:
            return None
        if len(options) > 1 and not parts:
            return options
        if len(options) > 1:
            tag = parts.pop(0)
            options = [m for m in options if _tag(m) == tag]
            if not options:
                return None
        model = options[0]
    return model


def _allowed_keys(loc: tuple[str | int, ...], root: type[BaseModel]) -> list[str]:
    model = _model_at(loc, root)
    if not isinstance(model, type):
        return []
    return list(model.model_fields) + (list(ROOT_EXTRA_KEYS) if not loc else [])


def _option_tags(loc: tuple[str | int, ...], root: type[BaseModel]) -> list[str]:
    options = _model_at(loc, root)
    return [t for m in options if (t := _tag(m)) is not None] if isinstance(options, list) else []


# ---------------------------------------------------------------------------------------------
# cross-field rules


def _involved_fields(ctx: Mapping[str, Any], document: dict[str, Any]) -> list[KeyPath]:
    """The fields a cross-field rule involves, as its error's ctx declares them: those its problem
    is about, then those it read that the config set (to other than their default), in the
    document's order."""
    fields = list(ctx["fields"])
    fields += [key for key in document if key in ctx["reads"] and key not in fields]
    return [(f,) for f in fields]
