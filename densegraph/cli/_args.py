"""Argument types of the command line: each refusal is one line, exit status 2, like every densegraph error."""

from __future__ import annotations

import argparse
import math
import re
from typing import NoReturn

EXIT_USER_ERROR = 2

# Flags that were renamed so that each says one thing; their old spelling gets the new one as its hint.
_RENAMED = {"--batch": "--batch-range MIN:OPT:MAX on build and engine, --batch-sizes 1,8 on bench"}


class _Parser(argparse.ArgumentParser):
    """argparse with its refusals on one line, like every other densegraph error (exit status 2)."""

    def error(self, message: str) -> NoReturn:
        hint = f"`{self.prog} --help` lists the options"
        if message.startswith("unrecognized arguments:"):
            for old, new in _RENAMED.items():
                if re.search(rf"(?<![\w-]){re.escape(old)}(?![\w-])", message):
                    hint = f"{old} is now {new}"
        self.exit(EXIT_USER_ERROR, f"{self.prog}: error: {message} (hint: {hint})\n")


def _finite_positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value) or value <= 0:
        raise argparse.ArgumentTypeError(f"expected a positive finite number, got {text!r}")
    return value


def _int_in(text: str, high: int | None, expected: str) -> int:
    """An integer in [0, ``high``) (no upper bound when ``high`` is None); ``expected`` words the range."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer, got {text!r}") from None
    if value < 0 or (high is not None and value >= high):
        raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}")
    return value


def _seed(text: str) -> int:
    return _int_in(text, 2**32, "an integer in [0, 2**32)")


def _nonnegative_int(text: str) -> int:
    return _int_in(text, None, "an integer >= 0")


def _positive_int_list(text: str) -> list[int]:
    try:
        values = [int(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated integers, got {text!r}") from None
    if not values or any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError(f"expected positive integers, got {text!r}")
    return values


def _batch_range(text: str) -> tuple[int, int, int]:
    parts = text.split(":")
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected MIN:OPT:MAX (e.g. 1:8:32), got {text!r}") from None
    if len(values) == 1:
        values = values * 3
    if len(values) != 3 or not (0 < values[0] <= values[1] <= values[2] < 2**31):
        raise argparse.ArgumentTypeError(
            f"expected MIN:OPT:MAX with 0 < MIN <= OPT <= MAX < 2**31 (TensorRT's dimensions), got {text!r}"
        )
    return values[0], values[1], values[2]


def _batch_tile(text: str) -> str:
    if text in ("off", "auto") or (text.isdigit() and int(text) > 0):
        return text
    raise argparse.ArgumentTypeError(f"expected off, auto or a positive number of samples, got {text!r}")
