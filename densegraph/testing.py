"""Helpers for checking rewrites and measuring them, and for fuzzing the spec reader (used by the tests and
the tools under ``tools/``; hypothesis is imported only by the fuzzing helpers)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:
    from hypothesis.strategies import SearchStrategy
    from torch import nn

__all__ = [
    "randomize_batchnorm",
    "spec_fuzz_workspace",
    "spec_mutations",
    "check_spec_bytes",
    "SPEC_FUZZ_MAX_BUILD",
]


def randomize_batchnorm(
    module: nn.Module, *, seed: int = 0, scale: tuple[float, float] = (0.5, 1.5)
) -> nn.Module:
    """Give every BatchNorm2d of ``module`` non-trivial statistics and affine parameters, in place.

    A freshly initialised BN (mean 0, variance 1, weight 1, bias 0) is nearly the identity, so folding it
    proves little; drawn from ``seed``: running mean in [-0.5, 0.5], running variance in [0.5, 2], weight in
    ``scale`` (a negative lower end gives some channels a negative scale: the two-sided case of
    BN-ReLU folds), bias in [-0.5, 0.5]. Returns ``module``.
    """
    import torch

    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if (
                isinstance(m, torch.nn.BatchNorm2d)
                and m.running_mean is not None
                and m.running_var is not None
            ):
                m.running_mean.uniform_(-0.5, 0.5, generator=generator)
                m.running_var.uniform_(0.5, 2.0, generator=generator)
                if m.weight is not None and m.bias is not None:
                    m.weight.uniform_(*scale, generator=generator)
                    m.bias.uniform_(-0.5, 0.5, generator=generator)
    return module


# ---------------------------------------------------------------------------------------------------------
# fuzzing the spec reader (tests/test_spec.py runs it in CI, tools/fuzz_spec.py for a wall-clock budget)

# bytes a mutation inserts besides random ones: YAML syntax, tags, anchors and merges, the spec's own keys,
# encodings' marks and control bytes; some are repeated many times (nesting, long numbers)
_TOKENS = (
    *(c.encode() for c in "[]{}:,-?|>#&*!%@`'\"\t\n "),
    b"- ",
    b": ",
    b"? ",
    b"\n  ",
    b"&a ",
    b"*a",
    b"<<: ",
    b"<<: *a",
    b"<<: [*a, *a]",
    b"---\n",
    b"...\n",
    b"%YAML 1.1\n",
    b"%TAG ! tag:yaml.org,2002:\n",
    *(f"!!{tag} ".encode() for tag in ("int", "float", "bool", "str", "null", "timestamp", "binary", "set")),
    *(
        f"!!{tag} ".encode()
        for tag in ("omap", "pairs", "map", "seq", "merge", "value", "python/name:os.system")
    ),
    b"~",
    b"null",
    b"true",
    b".inf",
    b".nan",
    b"1e9",
    b"0x",
    b"0o",
    b"1_000",
    b"1:30",
    b"2024-13-01",
    b"9" * 400,
    b"extends: ",
    b"../",
    b"/dev/zero",
    b"\x00",
    b"\xef\xbb\xbf",
    b"\xff\xfe",
    b"\xc3",
    b"\xe2\x80\xa8",
    b"\x85",
    b"\r",
)
# what a "value" mutation puts where a YAML value starts (after ": ", "[", ", " or "- "): an explicit tag (with
# or without a value of its own), an anchor or alias, a merge, a huge number, a deep run of brackets
_TAGS = tuple(
    f"!!{tag} ".encode()
    for tag in (
        "int",
        "float",
        "bool",
        "str",
        "null",
        "timestamp",
        "binary",
        "set",
        "omap",
        "pairs",
        "map",
        "seq",
    )
)
_VALUE_PREFIXES = (
    *_TAGS,
    b"&a ",
    b"*a ",
    b"[",
    b"{",
    b"{<<: *a, ",
    b"-",
    b"'",
    b"9" * 400,
    b"0." + b"0" * 400,
    b"1e400",
)
_VALUES = (b"", b"''", b"-", b"+", b"0x", b"0b", b"0o", b":", b"1:2:3", b"x", b"2024-13-45", b"YWJ", b".")

_KEYS = tuple(
    k.encode()
    for k in (
        "name input growth_rate bottleneck compression dropout stem blocks connectivity head extends "
        "channels size kind layers classes window dense log imagenet cifar "
        "preprocess resize crop mean std channel_order scale interpolation rgb bgr bilinear "
        "dynamic min opt max"
    ).split()
)

# valid mutants whose dense blocks are larger than this (sum of L^2) are read and validated but not expanded
# into a graph: enough for every shipped spec (DenseNet-264: 6580), and keeps one case to milliseconds
SPEC_FUZZ_MAX_BUILD = 10_000


def spec_fuzz_workspace(
    specs: str | os.PathLike[str], scratch: str | os.PathLike[str]
) -> tuple[list[bytes], Path]:
    """Copy the spec tree ``specs`` (every ``*.yaml`` under it) into ``scratch``; return the files' bytes (the
    seeds) and where to write mutants: one folder down, so ``extends: ../base.yaml`` finds the copied bases."""
    root, copy = Path(specs), Path(scratch) / "specs"
    seeds = []
    for source in sorted(root.rglob("*.yaml")):
        data = source.read_bytes()
        target = copy / source.relative_to(root)
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        seeds.append(data)
    (copy / "examples").mkdir(parents=True, exist_ok=True)
    return seeds, copy / "examples" / "mutant.yaml"


def spec_mutations(seeds: Sequence[bytes]) -> SearchStrategy[bytes]:
    """A hypothesis strategy: the bytes of one of ``seeds`` after 1 to 6 mutations.

    A mutation is a bit flip, an insertion (random bytes, a YAML token or spec key, or one repeated up to
    3000 times), a value mutation (an explicit tag, anchor, alias, merge, huge number or deep nesting put
    where a value starts), a deletion of up to 64 bytes, a splice (a run of bytes from a seed, inserted or
    written over the text) or a truncation.
    """
    from hypothesis import strategies as st

    if not seeds:
        raise ValueError("spec_mutations needs at least one seed")
    tokens = st.sampled_from(_TOKENS + _KEYS)
    insertions = st.one_of(
        st.binary(min_size=1, max_size=8),
        tokens,
        st.tuples(tokens, st.integers(2, 3000)).map(lambda t: t[0] * t[1]),
    )

    values = st.one_of(
        st.sampled_from(_VALUE_PREFIXES),
        st.tuples(st.sampled_from(_TAGS), st.sampled_from(_VALUES)).map(b"".join),
        st.tuples(st.sampled_from((b"[", b"{a: ", b"- ", b"&a [")), st.integers(2, 3000)).map(
            lambda t: t[0] * t[1]
        ),
    )
    ops = ("flip", "insert", "value", "value", "delete", "splice", "overwrite", "truncate")

    @st.composite
    def mutated(draw: st.DrawFn) -> bytes:
        data = bytearray(draw(st.sampled_from(seeds)))
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(ops))
            at = draw(st.integers(0, len(data)))
            starts = [i + len(m) for m in (b": ", b"[", b", ", b"- ") for i in _find_all(data, m)]
            if op == "value" and starts:
                at = draw(st.sampled_from(sorted(starts)))
                data[at:at] = draw(values)
            elif op == "flip" and data:
                at = min(at, len(data) - 1)
                data[at] ^= 1 << draw(st.integers(0, 7))
            elif op == "insert":
                data[at:at] = draw(insertions)
            elif op == "delete":
                del data[at : at + draw(st.integers(1, 64))]
            elif op in ("splice", "overwrite"):
                donor = draw(st.sampled_from(seeds))
                start = draw(st.integers(0, max(len(donor) - 1, 0)))
                piece = donor[start : start + draw(st.integers(1, 256))]
                end = at + (len(piece) if op == "overwrite" else 0)
                data[at:end] = piece
            elif op == "truncate":
                del data[at:]
        return bytes(data)

    return mutated()


def _find_all(data: bytearray, pattern: bytes) -> list[int]:
    found, at = [], data.find(pattern)
    while at >= 0:
        found.append(at)
        at = data.find(pattern, at + 1)
    return found


def check_spec_bytes(
    data: bytes, path: str | os.PathLike[str], *, max_build: int = SPEC_FUZZ_MAX_BUILD
) -> Literal["built", "valid", "refused"]:
    """Write ``data`` to ``path`` and read it as a spec; only a one-line :class:`DensegraphError` may escape.

    ``load_spec`` then ``build_graph`` (which runs ``check_graph``) for specs up to ``max_build`` (sum of L^2 over the
    blocks). Returns how it ended; any other exception propagates (the property fails). ``extends`` in the
    mutant resolves next to ``path``, so put copies of the seeds' bases there.
    """
    from .errors import DensegraphError
    from .graph import build_graph
    from .spec import load_spec

    Path(path).write_bytes(data)
    try:
        spec = load_spec(path)
        if sum(block.layers**2 for block in spec.blocks) > max_build:
            return "valid"
        build_graph(spec)
    except DensegraphError as exc:
        report = exc.format()
        if "\n" in report or not report.strip():
            raise AssertionError(f"the report is not one line: {report!r}") from None
        return "refused"
    return "built"
