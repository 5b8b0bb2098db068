"""Training a spec on real data, with exact resume and optional DistributedDataParallel.

The recipe is the paper's: SGD with Nesterov momentum 0.9 and weight decay 1e-4, learning rate ``lr`` divided by
10 at 50% and 75% of the epochs, cross-entropy loss, and random shifts of up to ``max(1, H // 8)`` pixels as the
only augmentation. ``--batch-size`` is the global batch: under ``torchrun`` each of the N processes takes B / N.
On CPU a run uses one thread per process unless ``--threads`` or ``$OMP_NUM_THREADS`` says otherwise (what
``torchrun`` does too): these small networks gain little from intra-op threads, and on a busy machine they stall.

A run folder holds ``last.pt`` and ``best.pt`` (best val top-1) — each a full checkpoint written to a temporary
file and renamed, so a killed run leaves its last good one — and ``metrics.csv`` (one row per epoch; top-1 in
percent). A checkpoint is a plain dict that ``torch.load(weights_only=True)`` reads: ``state_dict``,
``optimizer``, ``scheduler``, ``epoch`` (completed), ``rng`` (torch, CUDA, numpy and Python states as tensors
and lists), ``best_top1``, ``best_epoch``, ``metrics``, ``spec_path``, ``spec_sha256`` (the spec file's bytes),
``graph_sha256`` (the connection graph's structure, checked on resume), ``graph_name`` and ``args``.

With ``WORLD_SIZE > 1`` in the environment (``torchrun``) the model is wrapped in DistributedDataParallel (gloo
on CPU, nccl on CUDA); a ``DistributedSampler`` seeded with ``seed`` shards and shuffles the training set, BatchNorm
buffers are synchronised from rank 0 after each epoch, and only rank 0 writes files and logs.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import hashlib
import io
import math
import os
import random
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ._io import file_sha256, output_file, write_atomic
from ._output import refuse_overwrite
from .data import Dataset, ImageFiles, available_splits, data_loader, image_dataset, worker_errors
from .errors import CheckpointError, DataError, DensegraphError, Loc, OutputError
from .graph import graph_of, graph_sha256
from .lower.torch import to_torch
from .lower.weights import load_file, save_atomic

__all__ = [
    "train",
    "graph_sha256",
    "AMP_MODES",
    "DEFAULT_EPOCHS",
    "CHECKPOINT_FORMAT",
    "METRICS_COLUMNS",
]

DEFAULT_EPOCHS = 30
MOMENTUM = 0.9
WEIGHT_DECAY = 1e-4
LR_MILESTONES = (0.5, 0.75)
LR_DECAY = 0.1
CHECKPOINT_FORMAT = "densegraph-train-checkpoint/1"
AMP_MODES = ("bf16", "fp16")
METRICS_COLUMNS = ("epoch", "lr", "train_loss", "train_top1", "val_loss", "val_top1", "seconds")
# When set (to anything), every rank writes RUN/rank{r}.sha256, the digest of its final state_dict (for tests).
RANK_DIGEST_ENV = "DENSEGRAPH_RANK_DIGEST"


# ---------------------------------------------------------------------------------------------------------
# fingerprints


def _file_sha256(path: str | None) -> str | None:
    return file_sha256(path) if path and os.path.isfile(path) else None


def state_dict_sha256(module: nn.Module) -> str:
    """A digest of every tensor in ``module.state_dict()`` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


# ---------------------------------------------------------------------------------------------------------
# distributed context


@dataclass
class _Dist:
    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def _dist_from_env() -> _Dist:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return _Dist()
    return _Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))


def _all_sum(values: list[float], dist: _Dist, device: torch.device) -> list[float]:
    if not dist.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


# ---------------------------------------------------------------------------------------------------------
# RNG states as tensors and lists (weights_only-loadable)


def _rng_state(device: torch.device) -> dict[str, Any]:
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


def _set_rng_state(state: dict[str, Any], device: torch.device) -> None:
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


def _seed_all(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


# ---------------------------------------------------------------------------------------------------------
# the loop


def _shift(x: torch.Tensor, max_shift: int, generator: torch.Generator) -> torch.Tensor:
    """Translate each image by up to ``max_shift`` pixels in each direction, filling with zeros."""
    b, c, h, w = x.shape
    s = max_shift
    padded = F.pad(x, (s, s, s, s))
    dy = torch.randint(0, 2 * s + 1, (b,), generator=generator)
    dx = torch.randint(0, 2 * s + 1, (b,), generator=generator)
    rows = (dy[:, None] + torch.arange(h)).to(x.device)
    cols = (dx[:, None] + torch.arange(w)).to(x.device)
    padded = padded.gather(2, rows[:, None, :, None].expand(b, c, h, w + 2 * s))
    return padded.gather(3, cols[:, None, None, :].expand(b, c, h, w))


def _epoch_generator(seed: int, epoch: int, rank: int) -> torch.Generator:
    value = int(np.random.SeedSequence([seed, epoch, rank]).generate_state(1, np.uint64)[0] >> 1)
    return torch.Generator().manual_seed(value)


@dataclass
class _Precision:
    """Autocast dtype (None: fp32), the fp16 grad scaler, and the memory format of inputs."""

    device: torch.device
    amp: str | None = None
    channels_last: bool = False
    scaler: Any = None

    def autocast(self) -> Any:
        if self.amp is None:
            return contextlib.nullcontext()
        dtype = torch.bfloat16 if self.amp == "bf16" else torch.float16
        return torch.autocast(self.device.type, dtype=dtype)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def _train_epoch(
    model: nn.Module,
    loader: Any,
    optimizer: torch.optim.Optimizer,
    device: torch.device,
    max_shift: int,
    generator: torch.Generator,
    on_batch: Callable[[float], None],
    precision: _Precision | None = None,
) -> tuple[float, float, float]:
    model.train()
    precision = precision or _Precision(device)
    loss_sum = correct = count = 0.0
    for x, y in worker_errors(loader):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        if max_shift:
            x = _shift(x, max_shift, generator)
        with precision.autocast():
            logits = model(precision.inputs(x))
            loss = F.cross_entropy(logits.float(), y)
        optimizer.zero_grad(set_to_none=True)
        if precision.scaler is not None:
            precision.scaler.scale(loss).backward()
            precision.scaler.step(optimizer)
            precision.scaler.update()
        else:
            loss.backward()
            optimizer.step()
        n = y.shape[0]
        loss_value = float(loss.detach())
        loss_sum += loss_value * n
        correct += float((logits.detach().argmax(1) == y).sum())
        count += n
        on_batch(loss_value)
    return loss_sum, correct, count


@torch.no_grad()
def _evaluate(
    model: nn.Module,
    data: Dataset | ImageFiles,
    batch_size: int,
    device: torch.device,
    dist: _Dist,
    precision: _Precision | None = None,
    workers: int | None = None,
) -> tuple[float, float, float]:
    model.eval()
    precision = precision or _Precision(device)
    index = np.arange(dist.rank, len(data), dist.world)
    loss_sum = correct = 0.0
    if isinstance(data, Dataset):
        batches: Any = (
            (torch.from_numpy(data.x[b]), torch.from_numpy(data.y[b]))
            for b in (index[s : s + batch_size] for s in range(0, len(index), batch_size))
        )
    else:
        from torch.utils.data import DataLoader

        from .data import default_workers

        count = default_workers() if workers is None else workers
        batches = DataLoader(
            cast(Any, data.subset(index)),  # map-style: __len__ and __getitem__
            batch_size=batch_size,
            num_workers=count,
            pin_memory=device.type == "cuda",
            prefetch_factor=2 if count else None,
        )
    for x, y in worker_errors(batches):
        x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
        with precision.autocast():
            logits = model(precision.inputs(x)).float()
        loss_sum += float(F.cross_entropy(logits, y, reduction="sum"))
        correct += float((logits.argmax(1) == y).sum())
    return loss_sum, correct, float(len(index))


class _NoProgress:
    """Stands in for a ``rich.progress.Progress`` when the caller passes none."""

    def __enter__(self) -> _NoProgress:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def add_task(self, *args: Any, **kwargs: Any) -> int:
        return 0

    def update(self, *args: Any, **kwargs: Any) -> None:
        return None

    def remove_task(self, *args: Any) -> None:
        return None


# ---------------------------------------------------------------------------------------------------------
# files


def _write_metrics(path: Path, rows: list[dict[str, Any]]) -> None:
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=METRICS_COLUMNS, lineterminator="\n")
    writer.writeheader()
    for row in rows:
        writer.writerow({k: row[k] for k in METRICS_COLUMNS})
    text = buffer.getvalue().encode()
    write_atomic(path, lambda f: f.write(text))


def _check_run_files(run: Path, files: tuple[Path, ...], *, resume: bool, graph_sha: str) -> None:
    """Refuse, before any work, to overwrite a file of the run folder that this run did not write.

    A new run writes ``last.pt``, ``best.pt`` and ``metrics.csv`` into a folder that has none of them; a resumed
    one replaces them only when they are this run's (checkpoints of this network, the metrics table). Each is
    a regular file or nothing (never a device, a FIFO or a folder).
    """
    if not run.is_dir():
        return  # a new folder, or something in the way that _check_writable names
    for path in files:
        output_file(path)
    last, best, metrics = files
    if not resume:
        refuse_overwrite(
            (best, metrics),
            where=str(run),
            why="the run folder holds files a new run would overwrite",
            hint="move them out of the folder, or choose another -o",
        )
        return
    if best.exists() and not _is_run_checkpoint(best, graph_sha):
        raise OutputError(
            "--resume would overwrite best.pt, which is no checkpoint of this run",
            loc=Loc(str(best)),
            hint="move it out of the run folder",
        )
    if metrics.exists() and not _is_metrics_table(metrics):
        raise OutputError(
            "--resume would overwrite metrics.csv, which is no metrics table of densegraph train",
            loc=Loc(str(metrics)),
            hint="move it out of the run folder",
        )


def _is_run_checkpoint(path: Path, graph_sha: str) -> bool:
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except Exception:  # whatever it is, it is not ours
        return False
    return (
        isinstance(ckpt, dict)
        and ckpt.get("format") == CHECKPOINT_FORMAT
        and ckpt.get("graph_sha256") == graph_sha
    )


def _is_metrics_table(path: Path) -> bool:
    try:
        with open(path, encoding="utf-8") as f:
            header = f.readline(4096).rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return False
    return header == ",".join(METRICS_COLUMNS)


def _check_writable(run: Path) -> None:
    """Refuse a run folder that cannot be created or written, before anything is created."""
    probe = run
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if not probe.is_dir():
        raise DensegraphError(
            f"cannot create the run folder: {probe} is not a directory",
            loc=Loc(str(run)),
            hint="choose another -o",
        )
    if probe == run:
        try:
            fd, tmp = tempfile.mkstemp(dir=run, prefix=".write-test.")
            os.close(fd)
            os.unlink(tmp)
        except OSError as exc:
            raise DensegraphError(
                f"the run folder is not writable: {exc.strerror or exc}",
                loc=Loc(str(run)),
                hint="choose another -o",
            ) from None
    elif not os.access(probe, os.W_OK | os.X_OK):
        raise DensegraphError(
            f"cannot create the run folder: {probe} is not writable",
            loc=Loc(str(run)),
            hint="choose another -o",
        )


_CHECKPOINT_KEYS = (
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


def _load_resume(path: Path, graph_sha: str, spec_label: str) -> dict[str, Any]:
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
    missing = [key for key in _CHECKPOINT_KEYS if key not in ckpt]
    if missing:
        raise CheckpointError(f"the checkpoint lacks {', '.join(missing)}", loc=Loc(str(path)))
    recorded = ckpt["args"]
    if not isinstance(recorded, dict):
        raise CheckpointError(
            f"the checkpoint's args is a {type(recorded).__name__}, not the recorded arguments",
            loc=Loc(str(path)),
        )
    lacking = [key for key in _RECORDED_ARGS if key not in recorded]
    if lacking:
        raise CheckpointError(
            f"the checkpoint's recorded arguments lack {', '.join(lacking)}",
            loc=Loc(str(path)),
            hint="resume only a run densegraph train wrote; or start a new one into another -o",
        )
    try:
        _check_recipe(
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
    if ckpt.get("graph_sha256") != graph_sha:
        raise CheckpointError(
            f"the checkpoint was trained for another network ({ckpt.get('graph_name')!r} from "
            f"{ckpt.get('spec_path')}), not {spec_label}",
            loc=Loc(str(path)),
            hint="resume with the spec the run started with, or train into another -o",
        )
    return ckpt


_RECORDED_ARGS = ("epochs", "batch_size", "lr", "seed", "augment", "memory_efficient")
MAX_THREADS_PER_CORE = 16  # more is never faster, and each thread costs its stack
SEED_LIMIT = 2**32  # numpy's legacy seeding, which the run also seeds, takes [0, 2**32)


def _check_recipe(*, epochs: Any, batch_size: Any, lr: Any, seed: Any, flag_prefix: str = "--") -> None:
    """Refuse numbers a run cannot train with (each message names its flag)."""

    def whole(value: Any) -> bool:
        return isinstance(value, int | np.integer) and not isinstance(value, bool)

    if not whole(epochs) or epochs < 1:
        raise DensegraphError(f"{flag_prefix}epochs must be a positive integer, got {epochs!r}")
    if not whole(batch_size) or batch_size < 1:
        raise DensegraphError(f"{flag_prefix}batch-size must be a positive integer, got {batch_size!r}")
    if isinstance(lr, bool) or not isinstance(lr, int | float) or not math.isfinite(lr) or not lr > 0:
        raise DensegraphError(
            f"{flag_prefix}lr must be a positive finite number, got {lr!r}",
            hint="the paper's recipe uses 0.1",
        )
    if not whole(seed) or not 0 <= seed < SEED_LIMIT:
        raise DensegraphError(f"{flag_prefix}seed must be an integer in [0, 2**32), got {seed!r}")


def _restore(
    ckpt: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> None:
    """Put the model, optimizer, scheduler and RNGs back as the checkpoint saved them, or refuse it."""
    from .lower.weights import load_weights

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
        _set_rng_state(ckpt["rng"], device)
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError, AttributeError) as exc:
        detail = " ".join(str(exc).split())[:200] or type(exc).__name__
        raise CheckpointError(
            f"the checkpoint's {part} state cannot be restored ({detail})",
            loc=Loc(str(path)),
            hint="the file is damaged or was not written by densegraph train; start a new run into another -o",
        ) from None


def _resolve_device(name: str, dist: _Dist) -> torch.device:
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DensegraphError("--device cuda: no CUDA GPU is available", hint="use --device cpu")
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    if name != "cpu":
        raise DensegraphError(f"unknown device {name!r}", hint="cpu or cuda")
    return torch.device("cpu")


def _load_splits(
    data: Any, input_shape: tuple[int, int, int], preprocess: dict[str, Any]
) -> tuple[Dataset | ImageFiles, Dataset | ImageFiles, Dataset | ImageFiles | None, str]:
    test_set: Dataset | ImageFiles | None = None
    if isinstance(data, tuple):
        if len(data) not in (2, 3):
            raise ValueError("data must be a source, or (train, val) or (train, val, test) datasets")
        train_set, val_set = data[0], data[1]
        test_set = data[2] if len(data) == 3 else None
        label = train_set.source or "<arrays>"
    else:
        label = os.fspath(data)
        if label.endswith(".npy"):
            raise DataError(
                "a .npy file has no labels to train on", loc=Loc(label), hint="use digits or an image folder"
            )
        splits = available_splits(label)
        if "val" not in splits:
            raise DataError(
                "the folder has no val split to choose the best epoch on",
                loc=Loc(os.path.join(label, "val")),
                hint="add DIR/val/<class>/…, or pass a folder of class folders to be split 60/20/20",
            )
        train_set = image_dataset(label, input_shape, split="train", preprocess=preprocess, train=True)
        val_set = image_dataset(label, input_shape, split="val", preprocess=preprocess)
        if "test" in splits:
            test_set = image_dataset(label, input_shape, split="test", preprocess=preprocess)
    parts = [("train", train_set), ("val", val_set)] + ([("test", test_set)] if test_set is not None else [])
    for name, part in parts:
        shape = part.x.shape[1:] if isinstance(part, Dataset) else (part.channels, *part.preprocess["crop"])
        if tuple(shape) != tuple(input_shape):
            raise DataError(
                f"{name} inputs are {list(shape)}, the model takes {list(input_shape)}", loc=Loc(label)
            )
        if len(part) == 0 or part.y.shape[0] != len(part):
            raise DataError(f"the {name} split has no labelled samples", loc=Loc(label))
    return train_set, val_set, test_set, label


def _check_precision(amp: str | None, channels_last: bool, device: torch.device) -> _Precision:
    if amp is not None and amp not in AMP_MODES:
        raise DensegraphError(f"--amp must be one of {', '.join(AMP_MODES)}, got {amp!r}")
    if amp == "fp16" and device.type != "cuda":
        raise DensegraphError(
            "--amp fp16 needs a CUDA GPU (CPU autocast computes in bf16)", hint="use --amp bf16 on CPU"
        )
    scaler = torch.amp.GradScaler("cuda") if amp == "fp16" else None
    return _Precision(device, amp, channels_last, scaler)


def _test_figure(
    model: nn.Module,
    best_path: Path,
    test_set: Dataset | ImageFiles | None,
    batch_size: int,
    device: torch.device,
    dist: _Dist,
    precision: _Precision,
    workers: int | None,
) -> tuple[float | None, int]:
    """Top-1 of ``best.pt`` (chosen on val) on the test split; ``(None, 0)`` when there is none."""
    if test_set is None:
        return None, 0
    if dist.active:
        torch.distributed.barrier()  # rank 0 has written best.pt before any rank reads it
    if not best_path.is_file():
        return None, 0
    state = load_file(best_path)["state_dict"]
    best = copy.deepcopy(model)  # the trained model stays as it ended (last.pt)
    best.load_state_dict(state)
    sums = _evaluate(best, test_set, batch_size, device, dist, precision, workers)
    _, correct, count = _all_sum(list(sums), dist, device)
    return round(100.0 * correct / count, 4), int(count)


# ---------------------------------------------------------------------------------------------------------
# the library entry point


def train(
    spec_path_or_graph: Any,
    data: str | os.PathLike[str] | tuple[Dataset, Dataset],
    run_dir: str | os.PathLike[str],
    *,
    epochs: int | None = None,
    batch_size: int = 64,
    lr: float = 0.1,
    resume: bool = False,
    device: str = "cpu",
    seed: int = 0,
    memory_efficient: bool = False,
    augment: bool = True,
    threads: int | None = None,
    amp: str | None = None,
    channels_last: bool = False,
    workers: int | None = None,
    log: Callable[[str], None] | None = None,
    progress: Any = None,
) -> dict[str, Any]:
    """Train a spec (path, :class:`Spec` or graph) on ``digits``, an image folder or ``(train, val)`` datasets.

    ``threads`` sets PyTorch's CPU threads for the run (``None``: ``$OMP_NUM_THREADS`` if set, else 1, as
    ``torchrun`` does — these small models gain little from more and stall on a busy machine; 0: all cores).
    Writes ``run_dir/{last,best}.pt`` and ``metrics.csv``. With ``resume`` the run continues from ``last.pt``
    with the recipe it recorded (``epochs`` may extend it). ``best.pt`` is the epoch with the best val top-1;
    once training ends it is scored on the test split (where the data has one), which no choice looked at.
    ``amp`` (``bf16`` or ``fp16``) trains under autocast (fp16 with a grad scaler, CUDA only);
    ``channels_last`` runs the convolutions on NHWC tensors; ``workers`` decode image folders. ``log`` gets
    one line per event, ``progress`` (a ``rich.progress.Progress``) a bar per epoch. Returns a summary:
    ``best_top1``, ``best_epoch``, ``val_top1`` (last epoch), ``test_top1`` (None without a test split),
    ``test_samples``, ``epochs``, ``seconds``, ``run_dir``.
    """
    dist = _dist_from_env()
    say = log or (lambda text: None)
    if not dist.main:
        say = lambda text: None  # noqa: E731
    graph = graph_of(spec_path_or_graph)
    spec_path = (
        os.fspath(spec_path_or_graph)
        if isinstance(spec_path_or_graph, str | os.PathLike)
        else str(graph.graph.get("spec_path") or "")
    )
    spec_label = spec_path or graph.graph["name"]
    graph_sha = graph_sha256(graph)
    run = Path(run_dir)
    last_path, best_path, metrics_path = run / "last.pt", run / "best.pt", run / "metrics.csv"

    ckpt: dict[str, Any] | None = None
    if resume:
        ckpt = _load_resume(last_path, graph_sha, spec_label)
        recorded = ckpt["args"]
        for name, value in (("batch_size", batch_size), ("lr", lr), ("seed", seed)):
            if value != recorded[name]:
                say(f"note: resuming with the recorded {name} {recorded[name]} (not {value})")
        batch_size, lr, seed = recorded["batch_size"], recorded["lr"], recorded["seed"]
        augment, memory_efficient = recorded["augment"], recorded["memory_efficient"]
        amp, channels_last = recorded.get("amp"), recorded.get("channels_last", False)
        if epochs is not None and epochs != recorded["epochs"]:
            say(
                f"note: the run was planned for {recorded['epochs']} epochs, now {epochs}; the lr schedule stays"
            )
        epochs = epochs if epochs is not None else recorded["epochs"]
    elif last_path.exists() or last_path.is_symlink():
        raise DensegraphError(
            "the run folder already holds a run (last.pt)",
            loc=Loc(str(run)),
            hint="add --resume to continue it, or choose another -o",
        )
    _check_run_files(run, (last_path, best_path, metrics_path), resume=resume, graph_sha=graph_sha)
    epochs = DEFAULT_EPOCHS if epochs is None else epochs
    if threads is not None and threads < 0:
        raise DensegraphError(f"--threads must be 0 (all cores) or positive, got {threads}")
    if threads is not None and threads > MAX_THREADS_PER_CORE * (os.cpu_count() or 1):
        raise DensegraphError(
            f"--threads {threads} is more than {MAX_THREADS_PER_CORE} per core of this machine's "
            f"{os.cpu_count()}: the first parallel op would start them all",
            hint="use --threads 0 for one per core",
        )
    _check_recipe(epochs=epochs, batch_size=batch_size, lr=lr, seed=seed)
    if batch_size % dist.world:
        raise DensegraphError(
            f"--batch-size {batch_size} is the global batch and must divide among {dist.world} processes",
            hint=f"use a multiple of {dist.world}",
        )
    if workers is not None and workers < 0:
        raise DensegraphError(f"--workers must be 0 or more, got {workers}")
    input_shape = tuple(graph.graph["input_shape"])
    num_classes = int(graph.graph["output_shape"][0])
    preprocess = graph.graph["preprocess"]
    train_set, val_set, test_set, data_label = _load_splits(data, input_shape, preprocess)  # type: ignore[arg-type]
    for part in (train_set, val_set):
        if int(part.y.max()) >= num_classes or int(part.y.min()) < 0:
            raise DataError(
                f"the data has {len(part.classes) or int(part.y.max()) + 1} classes, the model's head {num_classes}",
                loc=Loc(data_label),
                hint="set head: {classes: N} in the spec to the number of classes",
            )
    _check_writable(run)
    torch_device = _resolve_device(device, dist)
    precision = _check_precision(amp, channels_last, torch_device)

    previous_threads = torch.get_num_threads()
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads if threads > 0 else os.cpu_count() or 1)
    if dist.active:
        backend = "nccl" if torch_device.type == "cuda" else "gloo"
        torch.distributed.init_process_group(backend)
    created = False
    try:
        _seed_all(seed)
        model = to_torch(graph, memory_efficient=memory_efficient, seed=seed).to(torch_device)
        if channels_last:
            model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack it
        optimizer = torch.optim.SGD(
            model.parameters(), lr=lr, momentum=MOMENTUM, weight_decay=WEIGHT_DECAY, nesterov=True
        )
        milestones = sorted({max(1, round(f * epochs)) for f in LR_MILESTONES})
        scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones, gamma=LR_DECAY)
        start, best_top1, best_epoch, history = 1, -1.0, 0, []
        if ckpt is not None:
            _restore(ckpt, last_path, model, optimizer, scheduler, torch_device)
            start = int(ckpt["epoch"]) + 1
            try:
                best_top1, best_epoch = float(ckpt["best_top1"]), int(ckpt["best_epoch"])
                history = [{key: row[key] for key in METRICS_COLUMNS} for row in ckpt["metrics"]]
            except (KeyError, TypeError, ValueError) as exc:
                raise CheckpointError(
                    f"the checkpoint's best_top1, best_epoch or metrics are damaged ({type(exc).__name__}: {exc})",
                    loc=Loc(str(last_path)),
                ) from None
            milestones = sorted(scheduler.milestones)
        if dist.main and not run.exists():
            run.mkdir(parents=True)
            created = True
        net: nn.Module = model
        if dist.active:
            from torch.nn.parallel import DistributedDataParallel

            net = DistributedDataParallel(
                model, device_ids=[torch_device.index] if torch_device.type == "cuda" else None
            )
        loader = data_loader(
            train_set,
            batch_size // dist.world,
            shuffle=True,
            seed=seed,
            num_replicas=dist.world,
            rank=dist.rank,
            workers=workers,
            pin_memory=torch_device.type == "cuda",
        )
        if not augment and isinstance(train_set, ImageFiles):
            train_set.train = False
        # specs that resize (ImageNet-style) augment per image (random resized crop, flip); others shift
        per_image = isinstance(train_set, ImageFiles) and preprocess["resize"] is not None
        max_shift = max(1, input_shape[1] // 8) if augment and not per_image else 0
        args_record = {
            "spec": spec_path,
            "data": data_label,
            "epochs": epochs,
            "batch_size": batch_size,
            "lr": lr,
            "seed": seed,
            "device": device,
            "memory_efficient": memory_efficient,
            "augment": augment,
            "amp": amp,
            "channels_last": channels_last,
            "world_size": dist.world,
        }
        classes = list(getattr(train_set, "classes", []) or [])
        if start > epochs:
            say(
                f"{run}: already trained for {start - 1} epochs (best val top-1 {best_top1:.2f}%); nothing to do"
            )
        else:
            say(
                f"training {graph.graph['name']} on {data_label}: {len(train_set)} train / {len(val_set)} val"
                + (f" / {len(test_set)} test" if test_set is not None else "")
                + ", "
                f"epochs {start}-{epochs}, batch {batch_size}"
                + (f" over {dist.world} processes" if dist.active else "")
                + f", lr {lr} (x{LR_DECAY} after epochs {', '.join(str(m) for m in milestones)}), {torch_device}"
            )
        began = time.perf_counter()
        bars = progress if (progress is not None and dist.main) else _NoProgress()
        with bars:
            for epoch in range(start, epochs + 1):
                tic = time.perf_counter()
                loader.sampler.set_epoch(epoch)
                if getattr(loader, "generator", None) is not None:  # the workers' augmentation seeds
                    loader.generator.manual_seed(int(_epoch_generator(seed, epoch, dist.rank).initial_seed()))
                epoch_lr = optimizer.param_groups[0]["lr"]
                task = bars.add_task(f"epoch {epoch}/{epochs}", total=len(loader), loss="-")

                def on_batch(loss: float, task: Any = task) -> None:
                    bars.update(task, advance=1, loss=f"{loss:.4f}")

                train_sums = _train_epoch(
                    net,
                    loader,
                    optimizer,
                    torch_device,
                    max_shift,
                    _epoch_generator(seed, epoch, dist.rank),
                    on_batch,
                    precision,
                )
                bars.remove_task(task)
                if dist.active:
                    for buffer in model.buffers():
                        torch.distributed.broadcast(buffer, 0)
                val_sums = _evaluate(model, val_set, batch_size, torch_device, dist, precision, workers)
                loss_sum, correct, count, val_loss_sum, val_correct, val_count = _all_sum(
                    [*train_sums, *val_sums], dist, torch_device
                )
                if not math.isfinite(loss_sum):
                    kept = (
                        f"{last_path} keeps epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
                    )
                    raise DensegraphError(
                        f"training diverged in epoch {epoch}: the loss is {loss_sum / count} ({kept})",
                        loc=Loc(str(run)),
                        hint=f"train with a smaller --lr than {lr}",
                    )
                scheduler.step()
                row = {
                    "epoch": epoch,
                    "lr": float(f"{epoch_lr:.10g}"),
                    "train_loss": round(loss_sum / count, 6),
                    "train_top1": round(100.0 * correct / count, 4),
                    "val_loss": round(val_loss_sum / val_count, 6),
                    "val_top1": round(100.0 * val_correct / val_count, 4),
                    "seconds": round(time.perf_counter() - tic, 3),
                }
                history.append(row)
                improved = row["val_top1"] > best_top1
                if improved:
                    best_top1, best_epoch = row["val_top1"], epoch
                if dist.main:
                    checkpoint = {
                        "format": CHECKPOINT_FORMAT,
                        "state_dict": model.state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict(),
                        "epoch": epoch,
                        "rng": _rng_state(torch_device),
                        "best_top1": best_top1,
                        "best_epoch": best_epoch,
                        "metrics": history,
                        "spec_path": spec_path,
                        "spec_sha256": _file_sha256(spec_path),
                        "graph_sha256": graph_sha,
                        "graph_name": graph.graph["name"],
                        "classes": classes,
                        "preprocess": preprocess,
                        "args": args_record,
                        "torch_version": str(torch.__version__),
                    }
                    save_atomic(checkpoint, last_path)
                    created = False
                    if improved:
                        save_atomic(checkpoint, best_path)
                    _write_metrics(metrics_path, history)
                say(
                    f"epoch {epoch:>3}/{epochs}  lr {epoch_lr:.4g}  train loss {row['train_loss']:.4f} "
                    f"top-1 {row['train_top1']:.2f}%  val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}%"
                    f"  {row['seconds']:.1f}s" + ("  *" if improved else "")
                )
        seconds = time.perf_counter() - began
        test_top1, test_samples = _test_figure(
            model, best_path, test_set, batch_size, torch_device, dist, precision, workers
        )
        if dist.active:
            # every rank reaches the teardown together: a gloo process group destroyed while its peer is still
            # writing checkpoints can abort the process ("terminate called without an active exception")
            torch.distributed.barrier()
        if os.environ.get(RANK_DIGEST_ENV):
            (run / f"rank{dist.rank}.sha256").write_text(state_dict_sha256(model) + "\n")
        last = history[-1] if history else {"val_top1": float("nan")}
        say(
            f"best val top-1 {best_top1:.2f}% (epoch {best_epoch}), last {last['val_top1']:.2f}%; "
            f"{seconds:.1f}s; wrote {last_path}, {best_path}, {metrics_path}"
        )
        if test_top1 is not None:
            say(
                f"test top-1 {test_top1:.2f}% on {test_samples} held-out images of {data_label} "
                f"(best.pt, epoch {best_epoch}, chosen on val; the test split was not used for the choice)"
            )
        else:
            say(f"no test split in {data_label}: the figure above is val, which chose best.pt")
        return {
            "best_top1": best_top1,
            "best_epoch": best_epoch,
            "val_top1": last["val_top1"],
            "test_top1": test_top1,
            "test_samples": test_samples,
            "epochs": epochs,
            "seconds": seconds,
            "run_dir": str(run),
        }
    except BaseException:
        if created:
            # nothing good was saved: leave no empty run folder behind
            for leftover in run.glob(".*.tmp"):
                leftover.unlink()
            if not any(run.iterdir()):
                run.rmdir()
        raise
    finally:
        torch.set_num_threads(previous_threads)
        if dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()
