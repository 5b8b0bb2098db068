"""What every pass returns."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["Op", "PassResult", "bn_affine"]

Op = dict[str, Any]
"""One primitive op: the graph's op dict, with its tensors (see :mod:`densegraph.passes`)."""


@dataclass(frozen=True)
class PassResult:
    """A pass's result: the rewritten op list (a new list; the input is untouched) and how many sites it
    rewrote (0: unchanged)."""

    ops: list[Op]
    rewrites: int

    @property
    def modified(self) -> bool:
        return self.rewrites > 0


def bn_affine(bn: Op) -> tuple[Any, Any]:
    """An inference BN as ``x * scale + shift`` (float64 tensors)."""
    scale = bn["weight"] * (bn["var"] + bn["eps"]).rsqrt()
    return scale, bn["bias"] - bn["mean"] * scale
