"""Bounded text for messages: however large or deep a value (or long a path) a user passes, the
message that echoes it stays a short line. No unetgen imports, so every module may use it."""

from __future__ import annotations

import os
import reprlib
from typing import Any

__all__ = ["MAX_ECHO", "int_text", "short_arg", "short_path", "short_repr", "short_text"]

MAX_ECHO = 80
"""Most characters of a value (or a path) echoed in a message."""
_DIGITS = 24  # an integer longer than this shows its first and last digits and its length
_EXACT_BITS = 100_000  # beyond this, even the first digits cost too much: say how many there are


def int_text(x: int) -> str:
    """`x` in decimal, or ``1234567890…7890 (401 digits)`` when it is long (any size, no
    `sys.set_int_max_str_digits` limit met)."""
    if x.bit_length() > _EXACT_BITS:
        return f"<an integer of about {int(x.bit_length() * 0.30103):,} digits>"
    sign, x = ("-", -x) if x < 0 else ("", x)
    if x.bit_length() <= 64:
        return sign + str(x)
    digits = int(x.bit_length() * 0.30103)  # the exact count is digits or digits + 1
    digits += x >= 10**digits
    if digits <= _DIGITS:
        return sign + str(x)
    half = _DIGITS // 2
    head, tail = x // 10 ** (digits - half), x % 10**half
    return f"{sign}{head}…{tail:0{half}d} ({digits} digits)"


class _Repr(reprlib.Repr):
    def repr_int(self, x: int, level: int) -> str:
        return int_text(x)

    def repr_str(self, x: str, level: int) -> str:
        if len(x) <= self.maxstring:
            return repr(x)
        half = self.maxstring // 2
        return f"{x[:half]!r}…{x[-half:]!r} ({len(x):,} characters)"

    def repr_instance(self, x: Any, level: int) -> str:
        try:
            text = repr(x)
        except Exception:  # a repr that fails, or an object too large to print
            return f"<{type(x).__name__} object>"
        return text if len(text) <= MAX_ECHO else f"{text[: MAX_ECHO - 20]}…{text[-10:]}"


_REPR = _Repr()
_REPR.maxlevel, _REPR.maxlist, _REPR.maxtuple, _REPR.maxdict, _REPR.maxstring = 3, 6, 6, 4, 40
_REPR.maxset = _REPR.maxfrozenset = _REPR.maxdeque = _REPR.maxarray = 6
_REPR.maxother = MAX_ECHO


def short_repr(value: Any) -> str:
    """A bounded repr: deep or huge inputs must not make the message (or repr) blow up. Strings
    show their start, end and length; integers their first and last digits and their length."""
    text = _REPR.repr(value)
    return text if len(text) <= 4 * MAX_ECHO else f"{text[: 3 * MAX_ECHO]}…{text[-MAX_ECHO:]}"


def short_path(path: Any) -> str:
    """A path as a message shows it: in full up to `MAX_ECHO` characters, else its start and end
    and its length; anything that is not a str or path is a bounded repr."""
    try:
        text = os.fspath(path)
    except TypeError:
        return short_repr(path)
    if isinstance(text, bytes):
        text = text.decode("utf-8", "backslashreplace")
    text = text.replace("\0", "\\0")
    if len(text) <= 2 * MAX_ECHO:
        return text
    return f"{text[:MAX_ECHO]}…{text[-MAX_ECHO // 2 :]} ({len(text):,} characters)"


def short_arg(text: str) -> str:
    """A path or command-line value as typed when it is printable and at most 200 characters,
    else a bounded repr (control characters escaped, a long one cut)."""
    text = str(text)
    if text.isprintable() and len(text) <= 200:
        return text
    return short_repr(text)


def short_text(text: str, limit: int = 2 * MAX_ECHO) -> str:
    """`text` (e.g. another library's error message) cut to about `limit` characters."""
    return text if len(text) <= limit else f"{text[: limit - 20]}… ({len(text):,} characters)"
