"""The ``RV_*`` environment variables of the ops, read with errors that name the variable and its values."""
import os
from typing import Optional

__all__ = ["flag", "int_var", "choice"]


def flag(name: str, default: bool = False) -> bool:
    """``0``/``1`` (unset or empty: ``default``)."""
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    if value not in ("0", "1"):
        raise ValueError(f"{name}={value!r}: use 1 (on) or 0 (off), or unset it")
    return value == "1"


def int_var(name: str, default: int, low: int, high: int, unset_hint: str = "") -> int:
    """An integer in ``[low, high]`` (unset or empty: ``default``)."""
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    try:
        number = int(value)
    except ValueError:
        number = None
    if number is None or not low <= number <= high:
        raise ValueError(f"{name}={value!r}: use an integer from {low} to {high}, or unset it"
                         + (f" ({unset_hint})" if unset_hint else ""))
    return number


def choice(name: str, choices, default: Optional[str] = None, unset_hint: str = "") -> Optional[str]:
    """One of ``choices`` (unset or empty: ``default``)."""
    value = os.environ.get(name, "").strip()
    if value == "":
        return default
    if value not in choices:
        raise ValueError(f"{name}={value!r}: use one of {', '.join(choices)}, or unset it"
                         + (f" ({unset_hint})" if unset_hint else ""))
    return value
