"""Published weights by name: ``--weights torchvision`` or ``--weights timm[:variant]`` for the shipped specs.

A table maps each shipped spec that has a published ImageNet checkpoint to its file. The file goes into torch's
hub cache (``$TORCH_HOME/hub/checkpoints``, by default ``~/.cache/torch/hub/checkpoints``) under the name
torchvision gives it, so a file torchvision already downloaded is reused; it is hash-checked before use and
loaded with :func:`densegraph.lower.weights.load_weights` (torchvision's legacy key names included).

Integrity: torchvision publishes the first 8 hex digits of each file's SHA-256 in its file name (the check
``torch.hub`` makes with ``check_hash=True``); timm's files on the Hugging Face hub carry their full SHA-256 in the
``X-Linked-Etag`` header of the download (the digest of the LFS object), which is checked against the bytes
received and then recorded in the cached file's name. ``$DENSEGRAPH_WEIGHTS_MIRROR`` (a base URL) serves the
same paths from a mirror.
"""

from __future__ import annotations

import hashlib
import os
import re
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

from ._io import file_sha256, umask
from .errors import CheckpointError, DensegraphError, Loc

__all__ = [
    "PublishedWeights",
    "PUBLISHED",
    "WEIGHT_SOURCES",
    "is_weights_name",
    "published_weights",
    "hub_checkpoint_dir",
    "fetch_weights",
    "MIRROR_ENV",
]

WEIGHT_SOURCES = ("torchvision", "timm")
MIRROR_ENV = "DENSEGRAPH_WEIGHTS_MIRROR"
_TIMEOUT_S = 30.0
_CHUNK = 1 << 20


@dataclass(frozen=True)
class PublishedWeights:
    """One published checkpoint: where it lives, how to check it, how its images were preprocessed."""

    spec: str  # the shipped spec's name (graph name)
    source: str  # torchvision | timm
    variant: str
    url: str
    filename: str  # the name in the hub cache; torchvision's carries the hash prefix
    sha256_prefix: str | None = None  # published with the file name (torchvision)
    sha256: str | None = None  # the full digest, where it is published in advance
    preprocess: dict[str, Any] = field(default_factory=dict)  # overrides of the spec's preprocess
    labels: str = "imagenet"
    top1: float | None = None  # the publisher's ImageNet-1k figures
    top5: float | None = None

    @property
    def name(self) -> str:
        return f"{self.source}:{self.variant}"


def _torchvision(spec: str, file: str, top1: float, top5: float) -> PublishedWeights:
    prefix = re.fullmatch(r".*-([0-9a-f]{8,})\.pth", file)
    assert prefix is not None
    return PublishedWeights(
        spec=spec,
        source="torchvision",
        variant="IMAGENET1K_V1",
        url=f"https://download.pytorch.org/models/{file}",
        filename=file,
        sha256_prefix=prefix.group(1),
        top1=top1,
        top5=top5,
    )


def _timm(spec: str, variant: str, preprocess: dict[str, Any]) -> PublishedWeights:
    return PublishedWeights(
        spec=spec,
        source="timm",
        variant=variant,
        url=f"https://huggingface.co/timm/{spec}.{variant}/resolve/main/pytorch_model.bin",
        filename=f"{spec}.{variant}.bin",  # becomes {spec}.{variant}-<sha256[:8]>.bin once checked
        preprocess=preprocess,
    )


# timm's densenet cfgs: crop_pct 0.875 and bicubic resizing (torchvision's own files: bilinear)
_TIMM_PRE = {"interpolation": "bicubic"}

# torchvision.models.densenet (DenseNet*_Weights.IMAGENET1K_V1) and timm.models.densenet (default_cfgs)
PUBLISHED: dict[str, list[PublishedWeights]] = {
    "densenet121": [
        _torchvision("densenet121", "densenet121-a639ec97.pth", 74.434, 91.972),
        _timm("densenet121", "ra_in1k", _TIMM_PRE),
        _timm("densenet121", "tv_in1k", _TIMM_PRE),
    ],
    "densenet161": [
        _torchvision("densenet161", "densenet161-8d451a50.pth", 77.138, 93.560),
        _timm("densenet161", "tv_in1k", _TIMM_PRE),
    ],
    "densenet169": [
        _torchvision("densenet169", "densenet169-b2777c0a.pth", 75.600, 92.806),
        _timm("densenet169", "tv_in1k", _TIMM_PRE),
    ],
    "densenet201": [
        _torchvision("densenet201", "densenet201-c1103571.pth", 76.896, 93.370),
        _timm("densenet201", "tv_in1k", _TIMM_PRE),
    ],
}


def is_weights_name(text: str) -> bool:
    """Whether ``--weights`` names published weights (``torchvision``, ``timm``, ``timm:ra_in1k``…), not a file."""
    return text.split(":", 1)[0] in WEIGHT_SOURCES and not os.path.exists(text)


def published_weights(name: str, spec_name: str) -> PublishedWeights:
    """The table entry ``name`` (``SOURCE`` or ``SOURCE:VARIANT``) names for the spec called ``spec_name``."""
    source, _, variant = name.partition(":")
    entries = [e for e in PUBLISHED.get(spec_name, []) if e.source == source]
    if not entries:
        known = sorted(PUBLISHED)
        raise CheckpointError(
            f"{source} publishes no weights for the spec {spec_name!r}",
            hint=f"published weights exist for {', '.join(known)}; or pass a weights file",
        )
    if not variant:
        return entries[0]
    for entry in entries:
        if entry.variant == variant:
            return entry
    raise CheckpointError(
        f"{source} has no variant {variant!r} of {spec_name}",
        hint=f"one of: {', '.join(e.name for e in entries)}",
    )


def hub_checkpoint_dir() -> Path:
    """torch.hub's checkpoint folder: ``$TORCH_HOME/hub/checkpoints`` (``$XDG_CACHE_HOME/torch`` or ``~/.cache/torch``)."""
    home = os.environ.get("TORCH_HOME") or os.path.join(
        os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache"), "torch"
    )
    return Path(home) / "hub" / "checkpoints"


def _url(entry: PublishedWeights) -> str:
    mirror = os.environ.get(MIRROR_ENV)
    if not mirror:
        return entry.url
    return mirror.rstrip("/") + urllib.parse.urlsplit(entry.url).path


def _check(path: Path, entry: PublishedWeights, digest: str, expected: str | None) -> None:
    want = entry.sha256 or expected or entry.sha256_prefix
    if want and not digest.startswith(want.lower()):
        raise CheckpointError(
            f"the file's sha256 {digest[:16]}… does not match the published {want[:16]}… of {entry.name} "
            f"weights for {entry.spec}",
            loc=Loc(str(path)),
            hint="the download is corrupt or not the published file; remove it and retry",
        )


def _cached(folder: Path, entry: PublishedWeights) -> Path | None:
    if entry.sha256_prefix or entry.sha256:
        path = folder / entry.filename
        return path if path.is_file() else None
    stem = entry.filename.rsplit(".", 1)[0]
    for path in sorted(folder.glob(f"{stem}-*.bin")):
        if re.fullmatch(re.escape(stem) + r"-[0-9a-f]{8}\.bin", path.name):
            return path
    return None


def _download(
    entry: PublishedWeights,
    url: str,
    out: BinaryIO,
    cache: Path,
    progress: Callable[[int, int | None], None] | None,
) -> tuple[str, str]:
    """Stream ``url`` into ``out``, synced; returns its SHA-256 and the hub's linked etag (may be empty)."""
    digest = hashlib.sha256()
    try:
        request = urllib.request.Request(url, headers={"User-Agent": "densegraph"})
        with urllib.request.urlopen(request, timeout=_TIMEOUT_S) as response:
            total = response.headers.get("Content-Length")
            total_bytes = int(total) if total and total.isdigit() else None
            linked = (response.headers.get("X-Linked-Etag") or "").strip('"').lower()
            done = 0
            for chunk in iter(lambda: response.read(_CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                done += len(chunk)
                if progress is not None:
                    progress(done, total_bytes)
            out.flush()
            os.fsync(out.fileno())
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", None) or getattr(exc, "strerror", None) or exc
        if isinstance(exc, urllib.error.HTTPError):
            reason = f"HTTP {exc.code} {exc.reason}"
        raise DensegraphError(
            f"cannot download the {entry.name} weights of {entry.spec} from {url}: {reason}",
            hint=f"check the network, or put the published file at {cache / entry.filename}",
        ) from None
    if total_bytes is not None and done != total_bytes:
        raise DensegraphError(
            f"the download of {url} stopped after {done} of {total_bytes} bytes", hint="retry"
        )
    return digest.hexdigest(), linked


def fetch_weights(
    entry: PublishedWeights,
    *,
    folder: str | os.PathLike[str] | None = None,
    progress: Callable[[int, int | None], None] | None = None,
) -> Path:
    """The hash-checked local file of ``entry``: reused from the hub cache or downloaded into it.

    ``progress(done_bytes, total_bytes or None)`` is called while downloading. A failed or interrupted
    download leaves nothing behind; a cached file that fails the check is reported, never deleted.
    """
    cache = Path(folder) if folder is not None else hub_checkpoint_dir()
    found = _cached(cache, entry)
    if found is not None:
        expected = None
        if not (entry.sha256_prefix or entry.sha256):
            expected = found.name.rsplit("-", 1)[1].split(".")[0]
        _check(found, entry, file_sha256(found), expected)
        return found
    url = _url(entry)
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DensegraphError(
            f"cannot create the weights cache: {exc.strerror or exc}", loc=Loc(str(cache))
        ) from None
    fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{entry.filename}.", suffix=".part")
    try:
        os.chmod(tmp, 0o666 & ~umask())
        out = os.fdopen(fd, "wb")
        fd = -1
        with out:
            hexdigest, linked = _download(entry, url, out, cache, progress)
        expected = None
        if not (entry.sha256_prefix or entry.sha256):
            if not re.fullmatch(r"[0-9a-f]{64}", linked):
                raise CheckpointError(
                    f"{url} came without the SHA-256 the hub publishes for it (X-Linked-Etag); "
                    "refusing an unchecked file",
                    hint=f"download it yourself and pass the file to --weights, or place it in {cache}",
                )
            expected = linked
        _check(Path(url), entry, hexdigest, expected)
        if entry.sha256_prefix or entry.sha256:
            target = cache / entry.filename
        else:
            stem = entry.filename.rsplit(".", 1)[0]
            target = cache / f"{stem}-{hexdigest[:8]}.bin"
        os.replace(tmp, target)
        return target
    except BaseException:
        if fd >= 0:
            os.close(fd)
        Path(tmp).unlink(missing_ok=True)
        raise
