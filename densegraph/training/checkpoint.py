"""The training checkpoint: its format, the RNG states it carries, and the checks a resumed run makes on it.

A checkpoint is a plain dict that ``torch.load(weights_only=True)`` reads: ``format``, ``state_dict``,
``optimizer``, ``scheduler``, ``epoch`` (completed), ``rng`` (torch, CUDA, numpy and Python states as tensors
and lists), ``best_top1``, ``best_epoch``, ``metrics``, ``spec_path``, ``spec_sha256`` (the spec file's bytes),
``graph_sha256`` (the connection graph's structure, checked on resume), ``graph_name``, ``classes``,
``preprocess``, ``args`` (the recipe, see :data:`RECORDED_ARGS`) and ``torch_version``.
"""

from __future__ import annotations

import os
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from .._io import file_sha256
from ..errors import CheckpointError, DensegraphError, Loc
from ..lower.weights import load_file
from .recipe import check_recipe

__all__ = [
    "CHECKPOINT_FORMAT",
    "METRICS_COLUMNS",
    "checkpoint_of",
    "load_resume",
    "restore",
    "seed_all",
]

CHECKPOINT_FORMAT = "densegraph-train-checkpoint/1"
METRICS_COLUMNS = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "seconds")
CHECKPOINT_KEYS = (
    "state_dict",
    "optimizer",
    "scheduler",
    "epoch",
    "rng",
    "best_top1",
    "best_epoch",
    "metrics",
    "args",
)
RECORDED_ARGS = ("epochs", "batch_size", "lr", "seed", "augment", "memory_efficient")


# ---------------------------------------------------------------------------------------------------------
# RNG states as tensors and lists (weights_only-loadable)


def rng_state(device: torch.device) -> dict[str, Any]:
    """Every RNG the run draws from (torch, CUDA on a GPU, numpy, Python), as tensors and lists."""
    algorithm, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    version, internal, gauss_next = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "algorithm": algorithm,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached_gaussian": float(cached),
        },
        "python": [version, list(internal), gauss_next],
    }
    if device.type == "cuda":
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state: dict[str, Any], device: torch.device) -> None:
    """Put back what :func:`rng_state` saved."""
    torch.set_rng_state(state["torch"])
    np_state = state["numpy"]
    np.random.set_state(
        (
            np_state["algorithm"],
            np_state["keys"].numpy().astype(np.uint32),
            np_state["pos"],
            np_state["has_gauss"],
            np_state["cached_gaussian"],
        )
    )
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if device.type == "cuda" and "cuda" in state:
        torch.cuda.set_rng_state_all(state["cuda"])


def seed_all(seed: int) -> None:
    """Seed Python's, numpy's and torch's RNGs."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# writing


def checkpoint_of(
    *,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    epoch: int,
    device: torch.device,
    best_top1: float,
    best_epoch: int,
    metrics: list[dict[str, Any]],
    spec_path: str,
    graph_sha: str,
    graph_name: str,
    classes: list[Any],
    preprocess: Any,
    args: dict[str, Any],
) -> dict[str, Any]:
    """The checkpoint dict of the run after ``epoch``, its keys in the order the format has always had."""
    return {
        "format": CHECKPOINT_FORMAT,
        "state_dict": model.state_dict(),
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "epoch": epoch,
        "rng": rng_state(device),
        "best_top1": best_top1,
        "best_epoch": best_epoch,
        "metrics": metrics,
        "spec_path": spec_path,
        "spec_sha256": file_sha256(spec_path) if spec_path and os.path.isfile(spec_path) else None,
        "graph_sha256": graph_sha,
        "graph_name": graph_name,
        "classes": classes,
        "preprocess": preprocess,
        "args": args,
        "torch_version": str(torch.__version__),
    }


# ---------------------------------------------------------------------------------------------------------
# resuming


def load_resume(path: Path, graph_sha: str, spec_label: str) -> dict[str, Any]:
    """The checkpoint ``--resume`` continues from, once its format, keys, recipe and network are checked."""
    if not path.is_file():
        raise CheckpointError(
            "--resume: no checkpoint to continue from",
            loc=Loc(str(path)),
            hint="start the run without --resume, or point -o at the folder of an earlier run",
        )
    ckpt = load_file(path)
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise CheckpointError(
            "not a densegraph training checkpoint",
            loc=Loc(str(path)),
            hint="only RUN/last.pt of `densegraph train`",
        )
    missing = [key for key in CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {', '.join(missing)}", loc=Loc(str(path)))
    recorded = ckpt["args"]
    if not isinstance(recorded, dict):
        raise CheckpointError(
            f"the checkpoint's args is a {type(recorded).__name__}, not the recorded arguments",
            loc=Loc(str(path)),
        )
    lacking = [key for key in RECORDED_ARGS if key not in recorded]
    if lacking:
        raise CheckpointError(
            f"the checkpoint's recorded arguments lack {', '.join(lacking)}",
            loc=Loc(str(path)),
            hint="resume only a run densegraph train wrote; or start a new one into another -o",
        )
    _check_recorded(ckpt, path)
    if ckpt.get("graph_sha256") != graph_sha:
        raise CheckpointError(
            f"the checkpoint was trained for another network ({ckpt.get('graph_name')!r} from "
            f"{ckpt.get('spec_path')}), not {spec_label}",
            loc=Loc(str(path)),
            hint="resume with the spec the run started with, or train into another -o",
        )
    return ckpt


def _check_recorded(ckpt: dict[str, Any], path: Path) -> None:
    """Refuse a checkpoint whose recorded recipe or epoch no run could have written."""
    recorded = ckpt["args"]
    try:
        check_recipe(
            epochs=recorded["epochs"],
            batch_size=recorded["batch_size"],
            lr=recorded["lr"],
            seed=recorded["seed"],
            flag_prefix="recorded ",
        )
        for key in ("augment", "memory_efficient"):
            if not isinstance(recorded[key], bool):
                raise DensegraphError(f"recorded {key} must be true or false, got {recorded[key]!r}")
        if not isinstance(ckpt["epoch"], int) or isinstance(ckpt["epoch"], bool) or ckpt["epoch"] < 0:
            raise DensegraphError(f"recorded epoch must be a count, got {ckpt['epoch']!r}")
    except DensegraphError as exc:
        raise CheckpointError(f"the checkpoint is damaged: {exc.message}", loc=Loc(str(path))) from None


def restore(
    ckpt: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> None:
    """Put the model, optimizer, scheduler and RNGs back as the checkpoint saved them, or refuse it."""
    from ..lower.weights import load_weights

    state = ckpt["state_dict"]
    if not isinstance(state, dict):
        raise CheckpointError("the checkpoint's state_dict is not a dict of tensors", loc=Loc(str(path)))
    load_weights(model, state, model_name="the spec", origin=path)
    part = "optimizer"
    try:
        optimizer.load_state_dict(ckpt["optimizer"])
        for param in model.parameters():
            buffer = optimizer.state.get(param, {}).get("momentum_buffer")
            if buffer is not None and (buffer.shape != param.shape or not bool(torch.isfinite(buffer).all())):
                raise ValueError(
                    f"a momentum buffer of shape {list(buffer.shape)} for a {list(param.shape)} weight"
                )
        part = "scheduler"
        scheduler.load_state_dict(ckpt["scheduler"])
        part = "rng"
        set_rng_state(ckpt["rng"], device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(
            f"the checkpoint's {part} state cannot be restored ({detail})",
            loc=Loc(str(path)),
            hint="the file is damaged or was not written by densegraph train; start a new run into another -o",
        ) from None
