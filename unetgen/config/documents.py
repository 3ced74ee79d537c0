"""Config files parsed into plain JSON values, with the line and column of every key.

Both parsers return only dicts with string keys, lists, strings, ints, floats, booleans and None,
plus a map from each key path to its 1-based (line, column) in the text. They refuse, with a
`ParseError` that has a position, what a config never needs and an attacker might send:

- anything but a regular file (a FIFO, device or directory is refused before it is read, so
  nothing blocks), files above `MAX_BYTES`, and text that is not UTF-8;
- duplicate keys (JSON and YAML), NaN and Infinity in JSON (they are not JSON);
- YAML tags other than the plain core types (so no ``!!python/object/apply``, ``!!binary``,
  ``!!set``), merge keys (``<<``) and non-scalar keys;
- more than `MAX_NODES` values, counting every expansion of a YAML alias (so an alias bomb,
  "billion laughs", stops after a few thousand values), and nesting deeper than `MAX_NESTING`
  (so recursive aliases and ``[[[[...]]]]`` stop early);
- YAML 1.1 readings that YAML 1.2 and JSON do not share, as plain (unquoted) scalars: ``064``
  (octal 52), ``1:30`` (base 60: 90), ``yes``/``no``/``on``/``off``/``y``/``n`` (booleans) and
  ``1e3`` (a string); the message says what YAML 1.1 reads and what to write instead.

Line and column count ``\r\n``, ``\r`` and ``\n`` as line ends, in the text as written.
"""

from __future__ import annotations

import bisect
import json
import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

import yaml

from ..reprs import short_repr

__all__ = [
    "MAX_BYTES",
    "MAX_NESTING",
    "MAX_NODES",
    "Document",
    "KeyPath",
    "ParseError",
    "check_limits",
    "file_kind",
    "open_regular",
    "parse",
    "read_text",
]

MAX_BYTES = 64 * 1024
"""Largest config file read; the largest sensible config is a few kilobytes."""
MAX_NODES = 5_000
"""Most values in one document, counting each use of a YAML alias as a copy."""
MAX_NESTING = 32
"""Deepest nesting of mappings and lists (a config needs 4)."""
MAX_PATH = 4096
"""Longest path opened (PATH_MAX on Linux)."""

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class Document:
    """A parsed config file: the value and the 1-based (line, column) of each key or list item,
    keyed by its path (``()`` is the document itself)."""

    value: Any
    positions: dict[KeyPath, tuple[int, int]]


class ParseError(Exception):
    """A file that is not a readable, safe JSON or YAML document; `line` and `column` are 1-based."""

    def __init__(self, message: str, line: int = 1, column: int = 1) -> None:
        super().__init__(message)
        self.message, self.line, self.column = message, line, column


def open_regular(path: str | os.PathLike[str]) -> int:
    """A read-only descriptor of the regular file at `path`, or `ParseError`. A FIFO, device,
    socket or directory is refused before it is opened (stat), the file is opened non-blocking
    (so a FIFO swapped in meanwhile cannot block) and its descriptor checked again (fstat)."""
    if isinstance(path, bytes) or not isinstance(path, (str, os.PathLike)):
        raise ParseError(f"a path must be a str or os.PathLike, not {type(path).__name__}")
    try:
        name = os.fspath(path)
    except TypeError as err:
        raise ParseError(f"not a usable path: {err}") from None
    if not isinstance(name, str):
        raise ParseError(f"a path must be text, not {type(name).__name__}")
    if "\0" in name:
        raise ParseError("the path contains a NUL byte, which no file name can hold")
    if len(name) > MAX_PATH:
        raise ParseError(f"the path is {len(name):,} characters long; paths are at most {MAX_PATH}")
    try:
        _refuse_special(os.stat(name).st_mode)
        fd = os.open(name, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_NOCTTY", 0))
    except FileNotFoundError:
        raise ParseError("cannot read the file: no such file") from None
    except (OSError, ValueError) as err:
        raise ParseError(f"cannot read the file: {getattr(err, 'strerror', None) or err}") from None
    try:
        _refuse_special(os.fstat(fd).st_mode)
    except BaseException:
        os.close(fd)
        raise
    return fd


def file_kind(mode: int) -> str | None:
    """None for a regular file's `st_mode`, else what the file is, for messages: "a directory",
    "a FIFO (named pipe)", "a character device", "a block device", "a socket"."""
    if stat.S_ISREG(mode):
        return None
    return next((what for test, what in _KINDS if test(mode)), "not a regular file")


def _refuse_special(mode: int) -> None:
    kind = file_kind(mode)
    if kind is not None:
        raise ParseError(f"the path is {kind}, not a regular file")


_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def read_text(path: str | os.PathLike[str]) -> str:
    """The UTF-8 text of a regular file of at most `MAX_BYTES` bytes (a leading BOM is dropped)."""
    fd = open_regular(path)
    try:
        with os.fdopen(fd, "rb") as f:
            data = f.read(MAX_BYTES + 1)
    except OSError as err:
        raise ParseError(f"cannot read the file: {err.strerror or err}") from None
    if len(data) > MAX_BYTES:
        raise ParseError(f"the file is larger than {MAX_BYTES} bytes; a config is a few kilobytes")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        line = len(_LINE_END.findall(data[: err.start].decode("utf-8", "replace"))) + 1
        raise ParseError(f"the file is not UTF-8 text (byte {err.start}: {data[err.start]:#04x})", line) from None


_LINE_END = re.compile(r"\r\n|\r|\n")


def _where(text: str) -> Any:
    """offset -> 1-based (line, column) in `text`, with \\r\\n, \\r and \\n as line ends."""
    line_starts = [0] + [m.end() for m in _LINE_END.finditer(text)]

    def where(offset: int) -> tuple[int, int]:
        line = bisect.bisect_right(line_starts, offset)
        return line, offset - line_starts[line - 1] + 1

    return where


def parse(text: str, kind: Literal["json", "yaml"]) -> Document:
    """Parse `text` as JSON or YAML into a `Document`, or raise `ParseError`."""
    if len(text) > MAX_BYTES:
        raise ParseError(f"the text is longer than {MAX_BYTES} characters; a config is a few kilobytes")
    if not text.strip():
        raise ParseError("the file is empty; a config is a mapping of fields, e.g. `depth: 4`")
    return _parse_json(text) if kind == "json" else _parse_yaml(text)


def check_limits(value: Any, *, max_nodes: int | None = None, max_nesting: int | None = None) -> None:
    """Refuse a value (from Python, not a file) with more than `max_nodes` values, nesting deeper
    than `max_nesting` (by default `MAX_NODES` and `MAX_NESTING`, the limits files have;
    self-containing lists stop there too) or an integer beyond 64 bits."""
    max_nodes = MAX_NODES if max_nodes is None else max_nodes
    max_nesting = MAX_NESTING if max_nesting is None else max_nesting
    stack, count = [(value, 0)], 0
    while stack:
        item, depth = stack.pop()
        count += 1
        if count > max_nodes:
            raise ParseError(f"the document has more than {max_nodes} values")
        if depth > max_nesting:
            raise ParseError(f"the document is nested deeper than {max_nesting} levels")
        if isinstance(item, Mapping):
            stack.extend((v, depth + 1) for v in item.values())
        elif isinstance(item, (list, tuple)):
            stack.extend((v, depth + 1) for v in item)
        elif isinstance(item, int) and item.bit_length() > 64:  # pydantic-core cannot even print these
            raise ParseError(
                f"a number has about {int(item.bit_length() * 0.30103) + 1} digits; integers here are limited "
                "to 64 bits (a config's values are far smaller)"
            )


# ---------------------------------------------------------------------------------------------
# JSON


class _NotJSON(ValueError):
    pass


def _no_constant(name: str) -> Any:
    raise _NotJSON(f"{name} is not a JSON number; write a finite number")


def _parse_json(text: str) -> Document:
    try:
        value = json.loads(text, parse_constant=_no_constant)
    except json.JSONDecodeError as err:
        raise ParseError(f"not valid JSON: {err.msg}", *_where(text)(err.pos)) from None
    except RecursionError:
        raise ParseError(f"the document is nested deeper than {MAX_NESTING} levels") from None
    except _NotJSON as err:
        raise ParseError(f"not valid JSON: {err}") from None
    except ValueError:  # int() refuses literals of more than 4300 digits
        raise ParseError("a number in the file has thousands of digits") from None
    return Document(value, _json_positions(text))


_JSON_TOKEN = re.compile(r'\s*(?:("(?:[^"\\]|\\.)*")|([{}\[\]:,])|([^\s{}\[\]:,"]+))', re.S)


def _json_positions(text: str) -> dict[KeyPath, tuple[int, int]]:
    """Positions of the keys and list items of `text`, already known to be valid JSON; refuses
    duplicate keys, too many values and too deep nesting."""
    where = _where(text)
    positions: dict[KeyPath, tuple[int, int]] = {}
    # one frame per open container: [path, is_object, index or current key, keys seen, expecting a key]
    stack: list[list[Any]] = []
    count = 0
    for m in _JSON_TOKEN.finditer(text):
        string, punct, _ = m.groups()
        start = m.start(1) if string else m.start(2) if punct else m.start(3)
        frame = stack[-1] if stack else None
        if punct in ("}", "]"):
            stack.pop()
            continue
        if punct == ":":
            frame[4] = False
            continue
        if punct == ",":
            if frame[1]:
                frame[4] = True
            else:
                frame[2] += 1
            continue
        if frame is not None and frame[1] and frame[4]:  # a key
            key = json.loads(string)
            if key in frame[3]:
                line, col = positions[(*frame[0], key)]
                raise ParseError(f"duplicate key {short_repr(key)} (first at line {line}, column {col})", *where(start))
            frame[3].add(key)
            frame[2] = key
            positions[(*frame[0], key)] = where(start)
            continue
        count += 1  # a value
        if count > MAX_NODES:
            raise ParseError(f"the document has more than {MAX_NODES} values", *where(start))
        if frame is None:
            path: KeyPath = ()
            positions[path] = where(start)
        else:
            path = (*frame[0], frame[2])
            if not frame[1]:
                positions[path] = where(start)
        if punct in ("{", "["):
            if len(stack) >= MAX_NESTING:
                raise ParseError(f"the document is nested deeper than {MAX_NESTING} levels", *where(start))
            stack.append([path, punct == "{", 0, set(), True])
    return positions


# ---------------------------------------------------------------------------------------------
# YAML

_CORE = "tag:yaml.org,2002:"
_AS_STRING = {_CORE + t for t in ("str", "timestamp", "value", "yaml")}
_CONSTRUCTED = {_CORE + t for t in ("null", "bool", "int", "float")}


class _Composer(yaml.SafeLoader):
    """`yaml.SafeLoader` that stops composing after `MAX_NODES` nodes or `MAX_NESTING` levels."""

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self.nodes = 0
        self.depth = 0

    def compose_node(self, parent: yaml.Node | None, index: Any) -> yaml.Node:
        self.nodes += 1
        self.depth += 1
        try:
            if self.nodes > MAX_NODES or self.depth > MAX_NESTING:
                mark = self.peek_event().start_mark
                what = (
                    f"has more than {MAX_NODES} values"
                    if self.nodes > MAX_NODES
                    else f"is nested deeper than {MAX_NESTING} levels"
                )
                raise ParseError(f"the document {what}", mark.line + 1, mark.column + 1)
            return super().compose_node(parent, index)
        finally:
            self.depth -= 1


def _parse_yaml(text: str) -> Document:
    loader: _Composer | None = None
    try:
        loader = _Composer(text)
        root = loader.get_single_node()
        if root is None:
            raise ParseError("the file holds no YAML document; a config is a mapping of fields")
        positions: dict[KeyPath, tuple[int, int]] = {(): _pos(root)}
        return Document(_Builder(loader, positions).build(root, (), 0), positions)
    except yaml.MarkedYAMLError as err:
        mark = err.problem_mark or err.context_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (1, 1)
        raise ParseError(f"not valid YAML: {err.problem or err.context}", line, col) from None
    except yaml.reader.ReaderError as err:  # a control character
        line, col = _where(text)(err.position)
        char = f"U+{err.character:04X}" if isinstance(err.character, int) else repr(err.character)
        raise ParseError(f"not valid YAML: the character {char} is not allowed", line, col) from None
    except yaml.YAMLError as err:
        raise ParseError(f"not valid YAML: {err}") from None
    finally:
        if loader is not None:
            loader.dispose()


def _pos(node: yaml.Node) -> tuple[int, int]:
    return node.start_mark.line + 1, node.start_mark.column + 1


@dataclass
class _Builder:
    """Builds plain values from composed YAML nodes, counting alias expansions."""

    loader: _Composer
    positions: dict[KeyPath, tuple[int, int]]
    count: int = 0

    def build(self, node: yaml.Node, path: KeyPath, depth: int) -> Any:
        self.count += 1
        if self.count > MAX_NODES:
            raise ParseError(
                f"the document expands to more than {MAX_NODES} values (YAML aliases are copied at every use)",
                *_pos(node),
            )
        if depth >= MAX_NESTING:
            raise ParseError(
                f"the document is nested deeper than {MAX_NESTING} levels (or an alias contains itself)", *_pos(node)
            )
        _check_tag(node)
        if isinstance(node, yaml.ScalarNode):
            return self.scalar(node)
        if isinstance(node, yaml.SequenceNode):
            items = []
            for i, item in enumerate(node.value):
                self.positions.setdefault((*path, i), _pos(item))
                items.append(self.build(item, (*path, i), depth + 1))
            return items
        result: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if not isinstance(key_node, yaml.ScalarNode):
                raise ParseError("a mapping key must be a plain name, not a list or mapping", *_pos(key_node))
            if key_node.tag == _CORE + "merge":
                raise ParseError("YAML merge keys (<<) are not supported; write the fields out", *_pos(key_node))
            _check_tag(key_node)
            key = key_node.value
            if key in result:
                line, col = self.positions[(*path, key)]
                raise ParseError(
                    f"duplicate key {short_repr(key)} (first at line {line}, column {col})", *_pos(key_node)
                )
            self.positions[(*path, key)] = _pos(key_node)
            result[key] = self.build(value_node, (*path, key), depth + 1)
        return result

    def scalar(self, node: yaml.ScalarNode) -> Any:
        if node.style is None:  # plain: YAML 1.1 and 1.2 may read it differently
            _check_yaml11(node)
        if node.tag in _AS_STRING:
            return node.value
        try:
            return self.loader.construct_object(node, deep=True)
        except ValueError:  # an integer with thousands of digits
            raise ParseError(f"the number {node.value[:12]}... has thousands of digits", *_pos(node)) from None


def _check_tag(node: yaml.Node) -> None:
    allowed = {
        yaml.ScalarNode: _AS_STRING | _CONSTRUCTED,
        yaml.SequenceNode: {_CORE + "seq"},
        yaml.MappingNode: {_CORE + "map"},
    }[type(node)]
    if node.tag not in allowed:
        tag = node.tag.replace(_CORE, "!!")
        raise ParseError(
            f"the YAML tag {tag} is not allowed; a config holds only mappings, lists, strings, numbers, "
            "booleans and null",
            *_pos(node),
        )


_BOOL_WORDS = {"yes": True, "no": False, "on": True, "off": False, "y": True, "n": False}
_OCTAL = re.compile(r"([-+]?)0([0-7_]+)")
_SEXAGESIMAL = re.compile(r"[-+]?[0-9][0-9_]*(?::[0-5]?[0-9])+(?:\.[0-9_]*)?")
_EXPONENT = re.compile(r"([-+]?(?:[0-9][0-9_]*)?(?:\.[0-9_]*)?)[eE]([-+]?)([0-9]+)")
_OCTAL_12 = re.compile(r"([-+]?)0o([0-7]+)")


def _check_yaml11(node: yaml.ScalarNode) -> None:
    """Refuse plain scalars that PyYAML (YAML 1.1) reads otherwise than YAML 1.2 and JSON do."""
    if len(node.value) > 40:
        return
    tag = node.tag.replace(_CORE, "")
    for hazard in _YAML11_HAZARDS:
        if (message := hazard(node, tag)) is not None:
            raise ParseError(message, *_pos(node))


def _quote(text: str) -> str:
    return f"or quote it ('{text}') for the string"


def _bool_word(node: yaml.ScalarNode, tag: str) -> str | None:
    text, word = node.value, node.value.lower()
    if word not in _BOOL_WORDS or text not in (word, word.capitalize(), word.upper()):
        return None
    meant = "true" if _BOOL_WORDS[word] else "false"
    reads = "YAML 1.1" if tag == "bool" else "the YAML 1.1 spec (PyYAML reads a string)"
    return f"`{text}` is the boolean {meant} in {reads} but a string in YAML 1.2; write {meant}, {_quote(text)}"


def _octal_11(node: yaml.ScalarNode, tag: str) -> str | None:
    if tag != "int" or not (m := _OCTAL.fullmatch(node.value)):
        return None
    sign, digits = m[1].replace("+", ""), m[2].replace("_", "")
    if not digits:  # `0_`: the number 0 in YAML 1.1, a string in YAML 1.2 (see `_int_11`)
        return None
    return (
        f"`{node.value}` is the octal number {sign}{int(digits, 8)} in YAML 1.1 but {sign}{int(digits)} in "
        f"YAML 1.2; write {sign}{int(digits)} (no leading zero), {_quote(node.value)}"
    )


def _sexagesimal(node: yaml.ScalarNode, tag: str) -> str | None:
    if tag not in ("int", "float") or not _SEXAGESIMAL.fullmatch(node.value):
        return None
    construct = yaml.SafeLoader.construct_yaml_int if tag == "int" else yaml.SafeLoader.construct_yaml_float
    number = construct(yaml.SafeLoader(""), node)
    return f"`{node.value}` is the base-60 number {number} in YAML 1.1; write {number}, {_quote(node.value)}"


def _int_11(node: yaml.ScalarNode, tag: str) -> str | None:
    """Digits with underscores, or 0b binary: YAML 1.1 ints, YAML 1.2 strings."""
    text = node.value
    if tag != "int" or ("_" not in text and not text.lower().lstrip("+-").startswith("0b")):
        return None
    try:
        number = yaml.SafeLoader.construct_yaml_int(yaml.SafeLoader(""), node)
    except ValueError:  # `0b_`, `0x_`: YAML 1.1's int pattern without a digit
        return f"`{text}` has no digits, but YAML 1.1 reads it as an integer; quote it ('{text}') for the string"
    return f"`{text}` is the number {number} in YAML 1.1 but a string in YAML 1.2; write {number}"


def _octal_12(node: yaml.ScalarNode, tag: str) -> str | None:
    if tag != "str" or not (m := _OCTAL_12.fullmatch(node.value.lower())):
        return None
    number = int(m[1] + m[2], 8)
    return f"`{node.value}` is a string in YAML 1.1 but the octal number {number} in YAML 1.2; write {number}"


def _exponent_12(node: yaml.ScalarNode, tag: str) -> str | None:
    """`1e3`: a YAML 1.2 float, a YAML 1.1 string."""
    m = _EXPONENT.fullmatch(node.value.lower()) if tag == "str" else None
    if m is None or not any(c.isdigit() for c in m[1]):
        return None
    mantissa = m[1] if "." in m[1] else f"{m[1]}.0"
    return (
        f"`{node.value}` is a string in YAML 1.1 (its floats need a dot and a signed exponent); "
        f"write {mantissa}e{m[2] or '+'}{m[3]}"
    )


_YAML11_HAZARDS = (_bool_word, _octal_11, _sexagesimal, _int_11, _octal_12, _exponent_12)
"""Each returns the message for a plain scalar it finds read differently, else None; the first wins."""
