"""The spec's data model: the frozen dataclasses a validated spec is made of, the kinds and limits."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..errors import Loc

CONNECTIVITY_KINDS = ("dense", "window", "log", "chain", "harmonic")
STEM_KINDS = ("imagenet", "cifar")
CHANNEL_ORDERS = ("rgb", "bgr")
INTERPOLATIONS = ("bilinear", "bicubic", "nearest")
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGENET_CROP_FRACTION = 0.875  # torchvision/timm: resize to crop / 0.875 (224 -> 256), then center-crop
HEAD_KINDS = ("classifier", "features")
POOL_KINDS = ("max", "avg", "blur", "dwconv")
ACTIVATIONS = ("relu", "relu6")
LAYER_ORDERS = ("pre", "post")

# The module-name templates a spec's ``names:`` may set (see README, "Module names"), each with the variables
# its template may use. The defaults (:data:`densegraph.graph.DEFAULT_NAMES`) are torchvision's DenseNet names.
_STEM_VARS = ("i", "seq")
_LAYER_VARS = ("block", "layer", "layer0", "stage0", "unit0", "seq", "n")
_UNIT_VARS = ("block", "stage0", "unit0", "seq", "i")
NAME_ROLES: dict[str, tuple[str, ...]] = {
    "stem.conv": _STEM_VARS,
    "stem.norm": _STEM_VARS,
    "stem.act": _STEM_VARS,
    "stem.pool": _STEM_VARS,
    "stem.pool.conv": _STEM_VARS,
    "stem.pool.norm": _STEM_VARS,
    "layer.conv": _LAYER_VARS,
    "layer.norm": _LAYER_VARS,
    "layer.act": _LAYER_VARS,
    "layer.dwconv": _LAYER_VARS,
    "layer.dwnorm": _LAYER_VARS,
    "aggregate.conv": _UNIT_VARS,
    "aggregate.norm": _UNIT_VARS,
    "aggregate.act": _UNIT_VARS,
    "transition.norm": _UNIT_VARS,
    "transition.act": _UNIT_VARS,
    "transition.conv": _UNIT_VARS,
    "transition.pool": _UNIT_VARS,
    "transition.pool.conv": _UNIT_VARS,
    "transition.pool.norm": _UNIT_VARS,
    "head.norm": ("seq",),
    "head.act": ("seq",),
    "head.linear": ("seq",),
}

# Sizes past these are refused while reading, before any graph or tensor is allocated.
LIMITS = {
    "layers": 1024,  # per block
    "total_layers": 4096,
    "connections": 600_000,  # L(L+1)/2 summed over the blocks: bounds the graph's size
    "blocks": 64,
    "growth_rate": 8192,
    "channels": 65536,
    "bottleneck": 64,
    "size": 16384,
    "classes": 1_000_000,
    "window": 4096,
    "kernel": 15,
    "stride": 8,
    "stem_convs": 16,
    "pools": 4,
    "yaml_nodes": 10_000,  # values reached with aliases and merge keys expanded: bounds "billion laughs"
    "extends_depth": 32,
    "yaml_depth": 64,  # nesting of collections (and of merge keys) in one document
    "file_bytes": 1_000_000,  # a spec file, read with at most this many bytes + 1 (never to its end)
    "labels_bytes": 16_000_000,  # a head.labels file (ImageNet-21k's names are 0.3 MB)
}


@dataclass(frozen=True)
class Connectivity:
    """Which earlier feature maps a layer of a dense block takes.

    ``dense``: the block input and every earlier layer (the paper's rule). ``window`` (``size`` n): the block
    input and the n most recent layers. ``log``: the sources at distances 1, 2, 4, 8, … (Log-DenseNet), the
    block input counting as layer 0.
    """

    kind: str = "dense"
    size: int | None = None
    multiplier: float | None = None
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class ConvStage:
    """One post-activation conv stage of a stem: conv (``kernel``, ``stride``, padding kernel//2), BN, act."""

    channels: int
    kernel: int = 3
    stride: int = 1
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Pool:
    """A downsampling op: ``max`` / ``avg`` pooling (``ceil_mode`` as PyTorch's), ``blur`` (a fixed binomial
    filter of size ``kernel``, reflect-padded, then strided: timm's BlurPool2d) or ``dwconv`` (a depthwise
    conv ``kernel`` x ``kernel`` followed by BN)."""

    kind: str
    kernel: int
    stride: int
    padding: int = 0
    ceil_mode: bool = False
    loc: Loc | None = field(default=None, compare=False)


# the pool shorthands a spec may write as a plain string
POOL_SHORTHANDS = {
    "max": Pool("max", 3, 2, 1),
    "avg": Pool("avg", 2, 2, 0),
    "blur": Pool("blur", 3, 2, 1),
    "dwconv": Pool("dwconv", 3, 2, 1),
}


@dataclass(frozen=True)
class LayerTemplate:
    """What one layer of a block runs: ``pre`` activation (BN, act, conv: DenseNet) or ``post`` activation
    (conv, BN, act), the spatial ``kernel``, and ``separable`` (post only: conv1x1-BN-act, then a depthwise
    conv ``kernel`` x ``kernel`` and BN, HarDNet's CombConv)."""

    order: str = "pre"
    kernel: int = 3
    separable: bool = False
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Transition:
    """What runs between a block and the next: ``conv`` ``pre`` (BN, act, conv1x1 to ``compression`` times the
    channels: DenseNet's) or ``none``, then the ``pool`` ops in order (none: no downsampling)."""

    conv: str = "pre"
    pool: tuple[Pool, ...] = (POOL_SHORTHANDS["avg"],)
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Aggregate:
    """A post-activation conv1x1 over a block's output to ``channels`` (VoVNet's one-shot aggregation, HarDNet's
    transition conv), after an optional dropout."""

    channels: int
    dropout: float = 0.0
    loc: Loc | None = field(default=None, compare=False)


@dataclass(frozen=True)
class Stem:
    """The layers before the first block: ``imagenet`` (conv7x7/2, BN, ReLU, maxpool3x3/2), ``cifar``
    (conv3x3/1), or ``convs`` (the listed conv stages, then the ``pool`` ops)."""

    kind: str
    channels: int
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    convs: tuple[ConvStage, ...] = ()
    pool: tuple[Pool, ...] = ()


@dataclass(frozen=True)
class Block:
    """One dense block, with every per-block option resolved (overrides over the spec's defaults).

    ``compression`` belongs to the transition that follows the block (unused for the last block).
    """

    layers: int
    growth_rate: int
    bottleneck: int
    dropout: float
    compression: float
    connectivity: Connectivity
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    widths: tuple[int, ...] | None = None
    aggregate: Aggregate | None = None
    transition: Transition = Transition()


@dataclass(frozen=True)
class Head:
    """``classifier``: (``norm``: BN, act), global average pool, (``dropout``), linear to ``classes``.
    ``features`` (a backbone): no classifier; the network outputs the named feature maps ``outputs``
    (``block<b>``: block b's output; ``stage<s>``: the output of the last block of stage s)."""

    classes: int
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    norm: bool = True
    dropout: float = 0.0
    kind: str = "classifier"
    outputs: tuple[str, ...] = ()
    output_locs: tuple[Loc, ...] = field(default=(), compare=False)
    labels: tuple[
        str, ...
    ] = ()  # class names, one per class (``head.labels``: a list, or a file beside the spec)


@dataclass(frozen=True)
class SizeRange:
    """A dynamic input size (``input.size: dynamic`` or ``{min, opt, max}``, each ``(height, width)``): the
    model takes any height and width from ``min`` to ``max``; ``opt`` is the size its costs are computed at,
    preprocessing resizes to and TensorRT tunes for."""

    min: tuple[int, int]
    opt: tuple[int, int]
    max: tuple[int, int]
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict[str, list[int]]:
        """``{"min": [H, W], "opt": [H, W], "max": [H, W]}`` (the form the graph and the ONNX metadata carry)."""
        return {"min": list(self.min), "opt": list(self.opt), "max": list(self.max)}


# ``input.size: dynamic``: about half to twice the default 224 input, at multiples of 32 (every stride up to 32
# divides them, as detectors' input sizes are chosen)
DYNAMIC_SIZE = SizeRange(min=(128, 128), opt=(224, 224), max=(448, 448))


@dataclass(frozen=True)
class Preprocess:
    """How an image file becomes the model's input tensor (the spec's ``preprocess:`` section).

    In order: decode, convert to ``channel_order`` (or grayscale for 1 channel), resize the shorter side to
    ``resize`` with ``interpolation`` (``None``: resize straight to ``crop``), center-crop to ``crop`` (H, W),
    divide the pixels by ``scale``, then subtract ``mean`` and divide by ``std`` per channel.

    Defaults: ImageNet-style specs (``stem: imagenet``) get torchvision's evaluation transform (resize 256,
    center-crop 224 for a 224 input, ImageNet mean/std); other specs get a plain resize to the input size,
    ``[0, 1]`` pixels and, with 3 channels, the ImageNet mean/std.
    """

    resize: int | None
    crop: tuple[int, int]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    channel_order: str = "rgb"
    scale: float = 255.0
    interpolation: str = "bilinear"
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)

    def as_dict(self) -> dict[str, Any]:
        """A plain, JSON-ready dict (the form the graph and the ONNX metadata carry)."""
        return {
            "resize": self.resize,
            "crop": list(self.crop),
            "mean": list(self.mean),
            "std": list(self.std),
            "channel_order": self.channel_order,
            "scale": self.scale,
            "interpolation": self.interpolation,
        }


@dataclass(frozen=True)
class Spec:
    """A validated model spec. ``locs`` maps each top-level key to where it was written."""

    name: str
    input_channels: int
    input_size: tuple[int, int]
    growth_rate: int
    bottleneck: int
    compression: float
    dropout: float
    stem: Stem
    blocks: tuple[Block, ...]
    head: Head
    connectivity: Connectivity
    preprocess: Preprocess | None = None  # None only for a hand-made Spec; load_spec always fills it
    path: str = "<string>"
    loc: Loc | None = field(default=None, compare=False)
    locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    activation: str = "relu"
    layer: LayerTemplate = LayerTemplate()
    # module-name templates by role (NAME_ROLES); empty: torchvision's names
    names: dict[str, str] = field(default_factory=dict, hash=False)
    name_locs: dict[str, Loc] = field(default_factory=dict, compare=False, hash=False)
    # a dynamic input (``input.size: dynamic`` or a range); ``input_size`` is then its ``opt`` size
    input_range: SizeRange | None = None

    def loc_of(self, key: str) -> Loc:
        """Where ``key`` was written, or the spec file itself when it was defaulted."""
        return self.locs.get(key) or self.loc or Loc(self.path)
