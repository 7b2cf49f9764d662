"""Number types for the command-line options (`starling listen`, `demo`, `sim`): a
bad value stops argparse with a message naming the option, instead of a run that
busy-loops, drops everything or fails later with a traceback."""

from __future__ import annotations

import argparse
from typing import Callable


def _number(text: str, kind: type = float) -> float:
    try:
        v = kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            "expected a %s, got %r" % ("whole number" if kind is int else "number", text)) from None
    if v != v:          # nan
        raise argparse.ArgumentTypeError("expected a number, got %r" % text)
    return v


def probability(text: str) -> float:
    """A probability in [0, 1]."""
    p = _number(text)
    if not 0.0 <= p <= 1.0:
        raise argparse.ArgumentTypeError("a probability is between 0 and 1, got %s" % text)
    return p


def non_negative(text: str) -> float:
    """A number >= 0."""
    v = _number(text)
    if v < 0:
        raise argparse.ArgumentTypeError("expected a number >= 0, got %s" % text)
    return v


def positive(text: str) -> float:
    """A finite number > 0."""
    v = _number(text)
    if not 0 < v < float("inf"):
        raise argparse.ArgumentTypeError("expected a number > 0, got %s" % text)
    return v


def int_range(lo: int, hi: int | None = None) -> Callable[[str], int]:
    """A whole number in lo..hi (hi None: no upper bound)."""
    def parse(text: str) -> int:
        n = int(_number(text, int))
        if n < lo or (hi is not None and n > hi):
            raise argparse.ArgumentTypeError(
                "expected %s, got %s" % ("%d..%d" % (lo, hi) if hi is not None
                                         else "at least %d" % lo, text))
        return n
    return parse


count = int_range(1)
