"""The report of how a data-parallel job's epoch is split among its processes."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from worker.training.state import AttemptFence
    from worker.training.world import World


def planned_rows(loader: Any) -> list[int]:
    """The train rows this process's data loader will give it this epoch, in order, read from
    its batch sampler without moving the random state the real pass draws from."""
    import torch

    with torch.random.fork_rng(devices=[]):
        return [int(i) for batch in loader.batch_sampler for i in batch]


class ShardReport(TrainerCallback):
    """When training starts, every rank's rows for the epoch are gathered and rank 0 reports
    them: the shard sizes, how many distinct train rows they cover and how many repeat (the
    sampler repeats a few to give every process a full last step)."""

    def __init__(self, fence: AttemptFence, world: World, *, train_rows: int) -> None:
        self.fence = fence
        self.world = world
        self.train_rows = train_rows

    def on_train_begin(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        loader = kw.get("train_dataloader")
        if loader is None:
            return
        shards = self.world.gather(planned_rows(loader))
        if not self.world.is_main:
            return
        sizes = [len(rows) for rows in shards]
        distinct = len(set().union(*(set(rows) for rows in shards)))
        repeated = sum(sizes) - distinct
        per_step = args.per_device_train_batch_size * args.gradient_accumulation_steps
        self.fence.log(
            f"{self.world.size} processes, each training {per_step} rows a step"
            f" ({self.world.size * per_step} in all); the epoch's shards hold {sizes} rows:"
            f" {distinct} distinct of {self.train_rows} train rows, {repeated} repeated to fill"
            " every process's last step",
            processes=self.world.size,
            rows_per_process_step=per_step,
            shard_rows=sizes,
            distinct_rows=distinct,
            train_rows=self.train_rows,
            repeated_rows=repeated,
        )
