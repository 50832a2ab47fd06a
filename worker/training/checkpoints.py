"""The Trainer callback that marks each checkpoint complete (see app/job/checkpoints.py)."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from transformers import TrainerCallback

from app.core.store import Store
from app.job.checkpoints import publish, write_manifest

if TYPE_CHECKING:
    from transformers import TrainerControl, TrainerState, TrainingArguments

    from worker.training.state import AttemptFence


class CheckpointCallback(TrainerCallback):
    """After the Trainer saves a checkpoint: write its manifest, publish it to the store, then
    tell the job's events."""

    def __init__(
        self,
        fence: AttemptFence,
        *,
        store: Store,
        job_id: str,
        elapsed: Callable[[], float] | None = None,
    ) -> None:
        self.fence = fence
        self.store = store
        self.job_id = job_id
        # Seconds of training so far, recorded in the manifest for an attempt resuming from it.
        self.elapsed = elapsed
        self.last_metrics: dict[str, Any] = {}

    def on_evaluate(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        self.last_metrics = {
            k: v for k, v in (kw.get("metrics") or {}).items() if isinstance(v, int | float)
        }

    def on_save(
        self, args: TrainingArguments, state: TrainerState, control: TrainerControl, **kw: Any
    ) -> None:
        if not state.is_world_process_zero:
            return  # rank 0 alone marks, publishes and announces a data-parallel job's checkpoint
        path = Path(str(args.output_dir)) / f"checkpoint-{state.global_step}"
        if not path.is_dir():
            return
        epoch = float(state.epoch or 0.0)
        elapsed_s = round(self.elapsed(), 1) if self.elapsed is not None else None
        write_manifest(
            path,
            step=state.global_step,
            epoch=epoch,
            metrics=self.last_metrics,
            elapsed_s=elapsed_s,
        )
        # In the store before it is announced: an attempt elsewhere can resume from it.
        publish(self.store, self.job_id, path)
        self.fence.log(
            f"checkpoint at step {state.global_step} (epoch {epoch:.2f})",
            checkpoint_step=state.global_step,
            epoch=epoch,
            metrics=self.last_metrics,
        )
