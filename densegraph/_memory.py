"""How much memory the machine can give, and refusing work that cannot fit before anything is allocated."""

from __future__ import annotations

import os

from .errors import DensegraphError, Loc

__all__ = ["available_bytes", "check_fits", "human_bytes"]


def available_bytes() -> int | None:
    """Memory a new allocation can get without swapping: ``MemAvailable`` of ``/proc/meminfo`` (Linux), else
    the free physical pages (``os.sysconf``); ``None`` where neither is known."""
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return int(os.sysconf("SC_AVPHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (ValueError, OSError, AttributeError):
        return None


def human_bytes(count: float) -> str:
    """``count`` bytes in binary units: ``512 B``, ``3.2 GiB``, ``23.3 TiB``."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(count) < 1024 or unit == "TiB":
            return f"{count:.0f} {unit}" if unit == "B" else f"{count:.1f} {unit}"
        count /= 1024
    raise AssertionError("unreachable")


def check_fits(
    needed: int, what: str, *, loc: Loc | None = None, hint: str | None = None, available: int | None = None
) -> None:
    """Raise :class:`DensegraphError` when ``needed`` bytes exceed the memory available (``available``, or
    :func:`available_bytes`); ``what`` says what needs them (``"--batch-sizes 1000000000"``)."""
    have = available_bytes() if available is None else available
    if have is not None and needed > have:
        raise DensegraphError(
            f"{what} needs at least {human_bytes(needed)} of memory, this machine has {human_bytes(have)} "
            "available",
            loc=loc,
            hint=hint,
        )
