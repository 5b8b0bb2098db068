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

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from ..data import Dataset, ImageFiles, data_loader
from ..errors import CheckpointError, DensegraphError, Loc
from ..graph import graph_of, graph_sha256
from ..lower.torch import to_torch
from ..lower.weights import save_atomic
from .checkpoint import (
    CHECKPOINT_FORMAT,
    METRICS_COLUMNS,
    checkpoint_of,
    load_resume,
    restore,
    seed_all,
)
from .distributed import (
    RANK_DIGEST_ENV,
    Dist,
    all_sum,
    dist_from_env,
    resolve_device,
    state_dict_sha256,
    wrap_ddp,
)
from .loop import (
    AMP_MODES,
    NoProgress,
    Precision,
    check_precision,
    epoch_generator,
    evaluate_split,
    precision_note,
    test_figure,
    train_epoch,
)
from .recipe import DEFAULT_EPOCHS, LR_DECAY, Recipe, check_recipe, lr_schedule, sgd
from .run_folder import RunFolder, check_run_files, check_writable, write_metrics
from .splits import check_labels, load_splits

__all__ = [
    "train",
    "graph_sha256",
    "state_dict_sha256",
    "AMP_MODES",
    "DEFAULT_EPOCHS",
    "CHECKPOINT_FORMAT",
    "METRICS_COLUMNS",
    "RANK_DIGEST_ENV",
]

MAX_THREADS_PER_CORE = 16  # more is never faster, and each thread costs its stack


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
    dist = dist_from_env()
    say = log if log is not None and dist.main else _silent
    graph = graph_of(spec_path_or_graph)
    spec_path = _spec_path(spec_path_or_graph, graph)
    graph_sha = graph_sha256(graph)
    folder = RunFolder(Path(run_dir))
    ckpt = _checkpoint_to_resume(folder, resume, graph_sha, spec_label=spec_path or graph.graph["name"])
    recipe = _resolve_recipe(
        ckpt,
        say,
        Recipe(
            DEFAULT_EPOCHS if epochs is None else epochs,
            batch_size,
            lr,
            seed,
            augment,
            memory_efficient,
            amp,
            channels_last,
        ),
        epochs_given=epochs is not None,
    )
    check_run_files(folder.path, folder.files, resume=resume, graph_sha=graph_sha)
    _check_inputs(recipe, dist, threads=threads, workers=workers)
    splits = _load_data(data, graph)
    check_writable(folder.path)
    torch_device = resolve_device(device, dist)
    precision = check_precision(recipe.amp, recipe.channels_last, torch_device)
    note = precision_note(recipe.amp, torch_device)
    if note is not None:
        say(note)

    previous_threads = _use_threads(threads)
    if dist.active:
        torch.distributed.init_process_group("nccl" if torch_device.type == "cuda" else "gloo")
    try:
        where = _Where(folder, dist, torch_device, precision, workers, say, spec_path, graph_sha, device)
        run = _set_up(graph, recipe, splits, where, ckpt)
        return run.fit(progress if (progress is not None and dist.main) else NoProgress())
    except BaseException:
        folder.discard()  # nothing good was saved: leave no empty run folder behind
        raise
    finally:
        torch.set_num_threads(previous_threads)
        if dist.active and torch.distributed.is_initialized():
            torch.distributed.destroy_process_group()


def _silent(text: str) -> None:
    return None


def _spec_path(spec_path_or_graph: Any, graph: Any) -> str:
    """The spec file the run trains (recorded in its checkpoints), or "" for a graph made in memory."""
    if isinstance(spec_path_or_graph, str | os.PathLike):
        return os.fspath(spec_path_or_graph)
    return str(graph.graph.get("spec_path") or "")


def _use_threads(threads: int | None) -> int:
    """Set PyTorch's CPU threads for the run (see :func:`train`); returns the count to put back after it."""
    previous = torch.get_num_threads()
    if threads is None and "OMP_NUM_THREADS" not in os.environ:
        threads = 1
    if threads is not None:
        torch.set_num_threads(threads if threads > 0 else os.cpu_count() or 1)
    return previous


# ---------------------------------------------------------------------------------------------------------
# before any work: the recipe, the inputs, the data


def _checkpoint_to_resume(
    folder: RunFolder, resume: bool, graph_sha: str, *, spec_label: str
) -> dict[str, Any] | None:
    """``last.pt`` checked for ``--resume``; without it, None, or a refusal of a folder that holds a run."""
    if resume:
        return load_resume(folder.last, graph_sha, spec_label)
    if folder.last.exists() or folder.last.is_symlink():
        raise DensegraphError(
            "the run folder already holds a run (last.pt)",
            loc=Loc(str(folder.path)),
            hint="add --resume to continue it, or choose another -o",
        )
    return None


def _resolve_recipe(
    ckpt: dict[str, Any] | None, say: Callable[[str], None], asked: Recipe, *, epochs_given: bool
) -> Recipe:
    """The recipe as asked, or, resuming, as the checkpoint recorded it (given ``epochs`` may extend it)."""
    if ckpt is None:
        return asked
    recorded = ckpt["args"]
    for name, value in (("batch_size", asked.batch_size), ("lr", asked.lr), ("seed", asked.seed)):
        if value != recorded[name]:
            say(f"note: resuming with the recorded {name} {recorded[name]} (not {value})")
    if epochs_given and asked.epochs != recorded["epochs"]:
        say(
            f"note: the run was planned for {recorded['epochs']} epochs, now {asked.epochs}; the lr schedule stays"
        )
    return Recipe(
        epochs=asked.epochs if epochs_given else recorded["epochs"],
        batch_size=recorded["batch_size"],
        lr=recorded["lr"],
        seed=recorded["seed"],
        augment=recorded["augment"],
        memory_efficient=recorded["memory_efficient"],
        amp=recorded.get("amp"),
        channels_last=recorded.get("channels_last", False),
    )


def _check_inputs(recipe: Recipe, dist: Dist, *, threads: int | None, workers: int | None) -> None:
    """Refuse thread and worker counts, and a recipe, that the run cannot use."""
    if threads is not None and threads < 0:
        raise DensegraphError(f"--threads must be 0 (all cores) or positive, got {threads}")
    if threads is not None and threads > MAX_THREADS_PER_CORE * (os.cpu_count() or 1):
        raise DensegraphError(
            f"--threads {threads} is more than {MAX_THREADS_PER_CORE} per core of this machine's "
            f"{os.cpu_count()}: the first parallel op would start them all",
            hint="use --threads 0 for one per core",
        )
    check_recipe(epochs=recipe.epochs, batch_size=recipe.batch_size, lr=recipe.lr, seed=recipe.seed)
    if recipe.batch_size % dist.world:
        raise DensegraphError(
            f"--batch-size {recipe.batch_size} is the global batch and must divide among {dist.world} processes",
            hint=f"use a multiple of {dist.world}",
        )
    if workers is not None and workers < 0:
        raise DensegraphError(f"--workers must be 0 or more, got {workers}")


@dataclass(frozen=True)
class _Splits:
    train: Dataset | ImageFiles
    val: Dataset | ImageFiles
    test: Dataset | ImageFiles | None
    label: str  # the source, as messages name it


def _load_data(data: Any, graph: Any) -> _Splits:
    """The splits of ``data``, checked against the model's input shape and head."""
    input_shape = tuple(graph.graph["input_shape"])
    if not graph.graph["output_shape"]:
        raise DensegraphError(
            "this spec has a features head (a backbone): it has no classes to train",
            hint="train a spec with a classifier head, then load its weights into the backbone",
        )
    train_set, val_set, test_set, label = load_splits(data, input_shape, graph.graph["preprocess"])
    check_labels((train_set, val_set), int(graph.graph["output_shape"][0]), label)
    return _Splits(train_set, val_set, test_set, label)


# ---------------------------------------------------------------------------------------------------------
# the run


@dataclass(frozen=True)
class _Where:
    """Where and how a run executes, and what it records beside the weights."""

    folder: RunFolder
    dist: Dist
    device: torch.device
    precision: Precision
    workers: int | None
    say: Callable[[str], None]
    spec_path: str
    graph_sha: str
    device_name: str  # as asked (--device), recorded in the checkpoint's args


@dataclass
class _Run:
    """A run once set up: the model, its optimizer and data, and how far training has come."""

    graph: Any
    recipe: Recipe
    splits: _Splits
    where: _Where
    model: nn.Module
    net: nn.Module  # the model, in DistributedDataParallel under torchrun
    optimizer: torch.optim.Optimizer
    scheduler: Any
    loader: Any
    max_shift: int
    start: int = 1
    best_top1: float = -1.0
    best_epoch: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)

    def fit(self, bars: Any) -> dict[str, Any]:
        """Train the remaining epochs, score best.pt on the test split, and report."""
        self._announce()
        began = time.perf_counter()
        with bars:
            for epoch in range(self.start, self.recipe.epochs + 1):
                self._epoch(epoch, bars)
        return self._finish(time.perf_counter() - began)

    def _announce(self) -> None:
        say, recipe, dist, splits = self.where.say, self.recipe, self.where.dist, self.splits
        if self.start > recipe.epochs:
            say(
                f"{self.where.folder.path}: already trained for {self.start - 1} epochs "
                f"(best val top-1 {self.best_top1:.2f}%); nothing to do"
            )
            return
        milestones = sorted(self.scheduler.milestones)
        say(
            f"training {self.graph.graph['name']} on {splits.label}: {len(splits.train)} train / "
            f"{len(splits.val)} val"
            + (f" / {len(splits.test)} test" if splits.test is not None else "")
            + ", "
            f"epochs {self.start}-{recipe.epochs}, batch {recipe.batch_size}"
            + (f" over {dist.world} processes" if dist.active else "")
            + f", lr {recipe.lr} (x{LR_DECAY} after epochs {', '.join(str(m) for m in milestones)}), "
            f"{self.where.device}"
        )

    def _epoch(self, epoch: int, bars: Any) -> None:
        """Train one epoch, evaluate on val, save the checkpoints (rank 0) and log the epoch's line."""
        where, recipe, dist = self.where, self.recipe, self.where.dist
        tic = time.perf_counter()
        self.loader.sampler.set_epoch(epoch)
        if getattr(self.loader, "generator", None) is not None:  # the workers' augmentation seeds
            self.loader.generator.manual_seed(
                int(epoch_generator(recipe.seed, epoch, dist.rank).initial_seed())
            )
        epoch_lr = self.optimizer.param_groups[0]["lr"]
        task = bars.add_task(f"epoch {epoch}/{recipe.epochs}", total=len(self.loader), loss="-")

        def on_batch(loss: float, task: Any = task) -> None:
            bars.update(task, advance=1, loss=f"{loss:.4f}")

        train_sums = train_epoch(
            self.net,
            self.loader,
            self.optimizer,
            where.device,
            self.max_shift,
            epoch_generator(recipe.seed, epoch, dist.rank),
            on_batch,
            where.precision,
        )
        bars.remove_task(task)
        if dist.active:
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, 0)
        val_sums = evaluate_split(
            self.model, self.splits.val, recipe.batch_size, where.device, dist, where.precision, where.workers
        )
        sums = all_sum([*train_sums, *val_sums], dist, where.device)
        row = self._metrics_row(epoch, epoch_lr, sums, tic)
        self.history.append(row)
        improved = row["val_top1"] > self.best_top1
        if improved:
            self.best_top1, self.best_epoch = row["val_top1"], epoch
        if dist.main:
            self._save(epoch, improved)
        where.say(
            f"epoch {epoch:>3}/{recipe.epochs}  lr {epoch_lr:.4g}  train loss {row['train_loss']:.4f} "
            f"top-1 {row['train_top1']:.2f}%  val loss {row['val_loss']:.4f} top-1 {row['val_top1']:.2f}%"
            f"  {row['seconds']:.1f}s" + ("  *" if improved else "")
        )

    def _metrics_row(self, epoch: int, epoch_lr: float, sums: list[float], tic: float) -> dict[str, Any]:
        """The epoch's row of metrics.csv from the summed figures; a diverged loss stops the run."""
        loss_sum, correct, count, val_loss_sum, val_correct, val_count = sums
        if not math.isfinite(loss_sum):
            last = self.where.folder.last
            kept = f"{last} keeps epoch {epoch - 1}" if epoch > 1 else "no checkpoint was written"
            raise DensegraphError(
                f"training diverged in epoch {epoch}: the loss is {loss_sum / count} ({kept})",
                loc=Loc(str(self.where.folder.path)),
                hint=f"train with a smaller --lr than {self.recipe.lr}",
            )
        self.scheduler.step()
        return {
            "epoch": epoch,
            "lr": float(f"{epoch_lr:.10g}"),
            "train_loss": round(loss_sum / count, 6),
            "train_top1": round(100.0 * correct / count, 4),
            "val_loss": round(val_loss_sum / val_count, 6),
            "val_top1": round(100.0 * val_correct / val_count, 4),
            "seconds": round(time.perf_counter() - tic, 3),
        }

    def _save(self, epoch: int, improved: bool) -> None:
        """last.pt (and best.pt when val top-1 improved), then metrics.csv; each written atomically."""
        where, recipe = self.where, self.recipe
        checkpoint = checkpoint_of(
            model=self.model,
            optimizer=self.optimizer,
            scheduler=self.scheduler,
            epoch=epoch,
            device=where.device,
            best_top1=self.best_top1,
            best_epoch=self.best_epoch,
            metrics=self.history,
            spec_path=where.spec_path,
            graph_sha=where.graph_sha,
            graph_name=self.graph.graph["name"],
            classes=list(getattr(self.splits.train, "classes", []) or []),
            preprocess=self.graph.graph["preprocess"],
            args={
                "spec": where.spec_path,
                "data": self.splits.label,
                "epochs": recipe.epochs,
                "batch_size": recipe.batch_size,
                "lr": recipe.lr,
                "seed": recipe.seed,
                "device": where.device_name,
                "memory_efficient": recipe.memory_efficient,
                "augment": recipe.augment,
                "amp": recipe.amp,
                "channels_last": recipe.channels_last,
                "world_size": where.dist.world,
            },
        )
        save_atomic(checkpoint, where.folder.last)
        where.folder.created = False  # the folder holds a good checkpoint now: a later failure keeps it
        if improved:
            save_atomic(checkpoint, where.folder.best)
        write_metrics(where.folder.metrics, self.history)

    def _finish(self, seconds: float) -> dict[str, Any]:
        """Score best.pt on the test split, log the summary, and return it."""
        where, dist, folder, splits = self.where, self.where.dist, self.where.folder, self.splits
        test_top1, test_samples = test_figure(
            self.model,
            folder.best,
            splits.test,
            self.recipe.batch_size,
            where.device,
            dist,
            where.precision,
            where.workers,
        )
        if dist.active:
            # every rank reaches the teardown together: a gloo process group destroyed while its peer is still
            # writing checkpoints can abort the process ("terminate called without an active exception")
            torch.distributed.barrier()
        if os.environ.get(RANK_DIGEST_ENV):
            (folder.path / f"rank{dist.rank}.sha256").write_text(state_dict_sha256(self.model) + "\n")
        last = self.history[-1] if self.history else {"val_top1": float("nan")}
        where.say(
            f"best val top-1 {self.best_top1:.2f}% (epoch {self.best_epoch}), last {last['val_top1']:.2f}%; "
            f"{seconds:.1f}s; wrote {folder.last}, {folder.best}, {folder.metrics}"
        )
        if test_top1 is not None:
            where.say(
                f"test top-1 {test_top1:.2f}% on {test_samples} held-out images of {splits.label} "
                f"(best.pt, epoch {self.best_epoch}, chosen on val; the test split was not used for the choice)"
            )
        else:
            where.say(f"no test split in {splits.label}: the figure above is val, which chose best.pt")
        return {
            "best_top1": self.best_top1,
            "best_epoch": self.best_epoch,
            "val_top1": last["val_top1"],
            "test_top1": test_top1,
            "test_samples": test_samples,
            "epochs": self.recipe.epochs,
            "seconds": seconds,
            "run_dir": str(folder.path),
        }


def _set_up(graph: Any, recipe: Recipe, splits: _Splits, where: _Where, ckpt: dict[str, Any] | None) -> _Run:
    """The model, optimizer and schedule (restored when resuming), the run folder, and the training loader."""
    seed_all(recipe.seed)
    device, dist = where.device, where.dist
    model = to_torch(graph, memory_efficient=recipe.memory_efficient, seed=recipe.seed).to(device)
    if recipe.channels_last:
        model = model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]  # stubs lack it
    optimizer = sgd(model, recipe.lr)
    scheduler = lr_schedule(optimizer, recipe.epochs)
    standing: dict[str, Any] = {}
    if ckpt is not None:
        standing = _restored(ckpt, where.folder.last, model, optimizer, scheduler, device)
    if dist.main:
        where.folder.create()
    net = wrap_ddp(model, device) if dist.active else model
    loader = data_loader(
        splits.train,
        recipe.batch_size // dist.world,
        shuffle=True,
        seed=recipe.seed,
        num_replicas=dist.world,
        rank=dist.rank,
        workers=where.workers,
        pin_memory=device.type == "cuda",
    )
    if not recipe.augment and isinstance(splits.train, ImageFiles):
        splits.train.train = False
    # specs that resize (ImageNet-style) augment per image (random resized crop, flip); others shift
    per_image = isinstance(splits.train, ImageFiles) and graph.graph["preprocess"]["resize"] is not None
    max_shift = max(1, graph.graph["input_shape"][1] // 8) if recipe.augment and not per_image else 0
    return _Run(graph, recipe, splits, where, model, net, optimizer, scheduler, loader, max_shift, **standing)


def _restored(
    ckpt: dict[str, Any],
    path: Path,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: Any,
    device: torch.device,
) -> dict[str, Any]:
    """Restore the checkpoint into the model, optimizer and schedule; how far its run had come."""
    restore(ckpt, path, model, optimizer, scheduler, device)
    try:
        return {
            "start": int(ckpt["epoch"]) + 1,
            "best_top1": float(ckpt["best_top1"]),
            "best_epoch": int(ckpt["best_epoch"]),
            "history": [{key: row[key] for key in METRICS_COLUMNS} for row in ckpt["metrics"]],
        }
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(
            f"the checkpoint's best_top1, best_epoch or metrics are damaged ({type(exc).__name__}: {exc})",
            loc=Loc(str(path)),
        ) from None
