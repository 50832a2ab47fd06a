"""The data-parallel processes training one job: which one this is, and how they agree.

A job with `resources.processes` N > 1 runs as N processes started by torchrun (see launch.py);
each is a rank of one process group (gloo on CPU, NCCL on GPUs). A single-process job has a World
of size 1, whose collectives return at once, so the runner reads the same either way.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, TypeVar

T = TypeVar("T")


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        """Rank 0: the one process that writes events, checkpoints to the store and the model."""
        return self.rank == 0

    @classmethod
    def from_env(cls) -> World:
        """The rank torchrun gave this process (RANK, WORLD_SIZE, LOCAL_RANK); size 1 outside it."""
        return cls(
            rank=int(os.environ.get("RANK", "0")),
            size=int(os.environ.get("WORLD_SIZE", "1")),
            local_rank=int(os.environ.get("LOCAL_RANK", "0")),
        )

    def join(self, backend: str) -> None:
        """Join the process group (before the Trainer would, so the runner can agree on values
        first); accelerate then uses this group."""
        if self.size == 1:
            return
        import torch.distributed as dist

        if not dist.is_initialized():
            dist.init_process_group(backend=backend)

    def leave(self) -> None:
        if self.size == 1:
            return
        import torch.distributed as dist

        if dist.is_initialized():
            dist.destroy_process_group()

    def broadcast(self, value: T) -> T:
        """Rank 0's `value`, on every rank (values some ranks could compute differently, such as
        a batch size from free memory, are decided once)."""
        if self.size == 1:
            return value
        import torch.distributed as dist

        box: list[Any] = [value if self.is_main else None]
        dist.broadcast_object_list(box, src=0)
        return box[0]  # type: ignore[no-any-return]

    def gather(self, value: T) -> list[T]:
        """Every rank's `value`, in rank order, on every rank."""
        if self.size == 1:
            return [value]
        import torch.distributed as dist

        out: list[Any] = [None] * self.size
        dist.all_gather_object(out, value)
        return out

    def barrier(self) -> None:
        if self.size == 1:
            return
        import torch.distributed as dist

        dist.barrier()


# The world of a job trained in one process.
SINGLE = World()
