"""argparse types for numbers with a valid range: a bad value is a usage error (exit 2) naming the
flag and the range, never a traceback or a NaN carried into the work."""

from __future__ import annotations

import argparse
import math
from collections.abc import Callable


def _number(kind: type, text: str) -> float | int:
    try:
        value = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not {'an integer' if kind is int else 'a number'}") from None
    if isinstance(value, float) and not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
    return value


def at_least(least: float, kind: type = float) -> Callable[[str], float | int]:
    """A type accepting finite numbers >= `least` (ints with kind=int)."""
    def parse(text: str) -> float | int:
        value = _number(kind, text)
        if value < least:
            raise argparse.ArgumentTypeError(f"{text} must be >= {least:g}")
        return value
    return parse


def positive(kind: type = float) -> Callable[[str], float | int]:
    """A type accepting finite numbers > 0 (ints with kind=int)."""
    def parse(text: str) -> float | int:
        value = _number(kind, text)
        if value <= 0:
            raise argparse.ArgumentTypeError(f"{text} must be > 0")
        return value
    return parse
