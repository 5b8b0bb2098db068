"""The processes of a run: the ``torchrun`` context, the one reduction the epochs need, the device, and a digest
of a model's state that ranks can compare."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import DensegraphError

__all__ = [
    "RANK_DIGEST_ENV",
    "Dist",
    "dist_from_env",
    "all_sum",
    "resolve_device",
    "wrap_ddp",
    "state_dict_sha256",
]

# When set (to anything), every rank writes RUN/rank{r}.sha256, the digest of its final state_dict (for tests).
RANK_DIGEST_ENV = "DENSEGRAPH_RANK_DIGEST"


@dataclass
class Dist:
    """This process's place in the run: ``world`` processes, this one ``rank`` (``local_rank`` on its host)."""

    world: int = 1
    rank: int = 0
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1


def dist_from_env() -> Dist:
    """The context ``torchrun`` sets in the environment (``WORLD_SIZE``, ``RANK``, ``LOCAL_RANK``)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    return Dist(world, int(os.environ.get("RANK", "0")), int(os.environ.get("LOCAL_RANK", "0")))


def all_sum(values: list[float], dist: Dist, device: torch.device) -> list[float]:
    """``values`` summed over every process (as float64), or unchanged in a single process."""
    if not dist.active:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=device)
    torch.distributed.all_reduce(tensor)
    return tensor.tolist()


def resolve_device(name: str, dist: Dist) -> torch.device:
    """The device ``--device`` names (``cuda``: this process's local GPU), or a user error."""
    if name == "cuda":
        if not torch.cuda.is_available():
            raise DensegraphError("--device cuda: no CUDA GPU is available", hint="use --device cpu")
        torch.cuda.set_device(dist.local_rank)
        return torch.device("cuda", dist.local_rank)
    if name != "cpu":
        raise DensegraphError(f"unknown device {name!r}", hint="cpu or cuda")
    return torch.device("cpu")


def wrap_ddp(model: nn.Module, device: torch.device) -> nn.Module:
    """``model`` in DistributedDataParallel (the process group is up)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def state_dict_sha256(module: nn.Module) -> str:
    """A digest of every tensor in ``module.state_dict()`` (names, dtypes, shapes and bytes)."""
    digest = hashlib.sha256()
    for key, value in sorted(module.state_dict().items()):
        tensor = value.detach().cpu().contiguous()
        digest.update(f"{key}:{tensor.dtype}:{list(tensor.shape)}".encode())
        digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()
