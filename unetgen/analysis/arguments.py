"""Checks of the numeric options of the analysis and training helpers: each returns the value as
a plain Python int, float or torch dtype, or raises `ValueError` naming the option, its value
(bounded, `unetgen.reprs.short_repr`) and what is valid. Nothing is converted silently: a float
is not a count (``2.0`` is refused, ``572.9`` is never read as 572), a bool is not a number, a
string is not parsed, NaN and infinity are not finite.

Integers are Python, NumPy and torch integers alike (anything with ``__index__`` but a bool);
reals are Python and NumPy integers and floats (not bools, strings or complex numbers)."""

from __future__ import annotations

import math
import numbers
import operator
from typing import Any

import numpy as np
import torch

from ..reprs import int_text, short_repr

__all__ = ["as_count", "as_flag", "as_float_dtype", "as_real"]


def _is_bool(value: Any) -> bool:
    return isinstance(value, (bool, np.bool_)) or str(getattr(value, "dtype", "")).endswith("bool")


def _kind(value: Any) -> str:
    return f"{short_repr(value)} ({type(value).__name__})"


def as_count(name: str, value: Any, *, minimum: int = 1, maximum: int | None = None) -> int:
    """`value` as an int in [`minimum`, `maximum`]."""
    valid = f"an integer >= {int_text(minimum)}" + (f" and <= {int_text(maximum)}" if maximum is not None else "")
    if _is_bool(value):
        raise ValueError(f"{name}={short_repr(value)} must be {valid}, not a boolean")
    try:
        v = operator.index(value)
    except TypeError:
        hint = ""
        if isinstance(value, float) and math.isfinite(value) and value.is_integer():
            hint = f"; write {int_text(int(value))}"
        elif isinstance(value, str):
            hint = "; parse it first, e.g. int(text)"
        raise ValueError(f"{name}={_kind(value)} must be {valid}{hint}") from None
    if v < minimum or (maximum is not None and v > maximum):
        raise ValueError(f"{name}={int_text(v)} must be {valid}")
    return v


def as_real(
    name: str,
    value: Any,
    *,
    minimum: float | None = None,
    maximum: float | None = None,
    positive: bool = False,
) -> float:
    """`value` as a finite float, at least `minimum` (above 0 when `positive`) and at most `maximum`."""
    parts = ["a finite number"]
    if positive:
        parts.append("> 0")
    elif minimum is not None:
        parts.append(f">= {minimum:g}")
    if maximum is not None:
        parts.append(f"<= {maximum:g}")
    valid = " ".join(parts[:2]) + (f" and {parts[2]}" if len(parts) > 2 else "")
    if (
        isinstance(value, torch.Tensor)
        and value.ndim == 0
        and not (value.dtype.is_complex or value.dtype == torch.bool)
    ):
        value = value.item()  # a 0-d real tensor is a number
    if _is_bool(value) or not isinstance(value, (numbers.Real, np.integer, np.floating)):
        hint = "; parse it first, e.g. float(text)" if isinstance(value, str) else ""
        raise ValueError(f"{name}={_kind(value)} must be {valid}{hint}")
    try:
        v = float(value)
    except (OverflowError, ValueError, TypeError):  # an int beyond float's range
        raise ValueError(f"{name}={short_repr(value)} must be {valid}") from None
    low_bad = (positive and not v > 0) or (minimum is not None and not v >= minimum)
    if not math.isfinite(v) or low_bad or (maximum is not None and not v <= maximum):
        raise ValueError(f"{name}={short_repr(value)} must be {valid}")
    return v


def as_flag(name: str, value: Any) -> bool:
    """`value` as a bool: True or False (NumPy's too), nothing else (``"false"`` is not False)."""
    if not isinstance(value, (bool, np.bool_)):
        raise ValueError(f"{name}={_kind(value)} must be True or False")
    return bool(value)


def as_float_dtype(name: str, value: Any) -> torch.dtype:
    """`value` as a real floating-point `torch.dtype` (torch.float32, torch.bfloat16, ...)."""
    if not isinstance(value, torch.dtype) or not value.is_floating_point:
        raise ValueError(
            f"{name}={_kind(value)} must be a floating-point torch.dtype such as torch.float32, "
            "torch.float16 or torch.bfloat16"
        )
    return value
