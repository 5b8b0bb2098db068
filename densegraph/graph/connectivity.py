"""The connectivity rules: which earlier maps each layer of a block takes, which maps the block exports, and
how wide each layer is. The graph builder and :func:`densegraph.graph.check_graph` both read them from here."""

from __future__ import annotations

from ..spec import Connectivity

__all__ = ["layer_sources", "block_outputs", "layer_width"]


def layer_sources(connectivity: Connectivity, layer: int) -> list[int]:
    """Indices of the maps that layer ``layer`` (1-based) of a block takes; 0 is the block input.

    The order is the order of the concatenation: ascending for every rule but ``harmonic``, whose layer k takes
    k - 1, k - 2, k - 4, … (every k - 2^n with 2^n dividing k, n < 10) in that order, as HarDNet's reference.
    """
    if connectivity.kind == "dense":
        return list(range(layer))
    if connectivity.kind == "window":
        assert connectivity.size is not None
        recent = range(max(1, layer - connectivity.size), layer)
        return [0, *recent]
    if connectivity.kind == "log":
        sources = set()
        step = 1
        while layer - step >= 0:
            sources.add(layer - step)
            step *= 2
        return sorted(sources)
    if connectivity.kind == "chain":
        return [layer - 1]
    if connectivity.kind == "harmonic":
        return [layer - 2**n for n in range(10) if layer % 2**n == 0]
    raise ValueError(f"unknown connectivity kind {connectivity.kind!r}")


def block_outputs(connectivity: Connectivity, layers: int) -> list[int]:
    """Indices of the maps a block of ``layers`` layers concatenates into its output (0 is the block input).

    Every map for every rule but ``harmonic``, which exports its odd layers and its last layer.
    """
    if connectivity.kind == "harmonic":
        return [i for i in range(1, layers + 1) if i % 2 == 1 or i == layers]
    return list(range(layers + 1))


def layer_width(connectivity: Connectivity, growth_rate: int, layer: int) -> int:
    """Output channels of layer ``layer`` (1-based): the growth rate; for ``harmonic``, the growth rate times
    the multiplier once per 2^n (n >= 1) dividing the layer, rounded to an even number as HarDNet's reference."""
    if connectivity.kind != "harmonic":
        return growth_rate
    assert connectivity.multiplier is not None
    width: float = growth_rate
    for n in range(1, 10):
        if layer % 2**n == 0:
            width *= connectivity.multiplier
    return int(int(width + 1) / 2) * 2
