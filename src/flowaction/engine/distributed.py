"""Several processes, one training run: ``torchrun`` sets the environment, PyTorch does the work.

``torchrun --nproc-per-node N -m flowaction train ...`` starts N processes with ``RANK``,
``WORLD_SIZE`` and ``LOCAL_RANK`` set; :func:`setup` joins them in a process group (NCCL on GPUs,
gloo on CPUs), and the trainer wraps its model in ``DistributedDataParallel``. A single process
(no ``WORLD_SIZE``) runs exactly as before.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist

from flowaction.engine.device import resolve_device


@dataclass(frozen=True)
class Context:
    """This process's place in the run."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    device: torch.device = torch.device("cpu")  # where collective tensors live (a GPU with NCCL)

    @property
    def main(self) -> bool:
        """The process that writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.world > 1


def setup(device_name: str) -> tuple[Context, torch.device]:
    """Join the process group torchrun describes (if any) and pick this process's device."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Context(), resolve_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    use_cuda = torch.cuda.is_available() and device_name in ("auto", "cuda")
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    if not dist.is_initialized():
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Context(rank, world, local, device), device


def same_everywhere(context: Context, text: str, what: str) -> None:
    """Raise a clear error on every rank when ``text`` (e.g. the config) differs between ranks."""
    if not context.distributed:
        return
    digest = hashlib.sha256(text.encode()).hexdigest()
    gathered: list[str | None] = [None] * context.world
    dist.all_gather_object(gathered, digest)
    differing = [rank for rank, other in enumerate(gathered) if other != gathered[0]]
    if differing:
        raise ValueError(f"ranks {differing} have another {what} than rank 0: every process must be started "
                         "with the same config and see the same data")


def all_sum(context: Context, values: list[float]) -> list[float]:
    """Element-wise sum over ranks (the values unchanged in a single process)."""
    if not context.distributed:
        return values
    tensor = torch.tensor(values, dtype=torch.float64, device=context.device)
    dist.all_reduce(tensor)
    return tensor.cpu().tolist()


def all_true(context: Context, flag: bool) -> bool:
    """True when ``flag`` holds on every rank."""
    if not context.distributed:
        return flag
    tensor = torch.tensor([1 if flag else 0], dtype=torch.int64, device=context.device)
    dist.all_reduce(tensor, op=dist.ReduceOp.MIN)
    return bool(tensor.item())


def barrier(context: Context) -> None:
    if context.distributed:
        dist.barrier()


def cleanup(context: Context) -> None:
    if context.distributed and dist.is_initialized():
        dist.destroy_process_group()
