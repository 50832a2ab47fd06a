"""Distillation (method distill): the student, the teacher beside it, and the loss that joins them.

The teacher is the job's base ("model:<id>", adapters merged), frozen in eval mode; its logits are
computed in every training step on the student's batch, without gradients. The student is either
the teacher with k of its transformer layers kept (one per block, or the ones named; its embeddings,
what sits above the layers and its task head are the teacher's), or a catalog base with a fresh
head. Both speak the teacher's labels in the teacher's order, so their logits line up class by
class.

    loss = alpha * CE(gold) + (1 - alpha) * T^2 * KL(softmax(teacher / T) || softmax(student / T))

(Hinton et al. 2015; DistilBERT). CE is the model's own loss on the gold labels (label smoothing
included when asked). KL is taken over the last dimension of every `*logits` output and averaged
over positions: the batch for classification, the tokens that carry a gold label for NER (labels
-100, the padding and the sub-words after the first, are left out), and the start and end
distributions over a feature's tokens for QA (their mean, as QA's CE is the mean of both). Only
training steps add the teacher's term; evaluations report the gold loss, like every other method's.
With `hidden_weight` > 0 (a student of the teacher's own layers), a third term pulls each student
layer's token vectors towards those of the teacher layer it was copied from:
`+ hidden_weight * mean over layers and non-padding tokens of (1 - cos(student, teacher))`.
"""

from __future__ import annotations

import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from app.basemodel.schemas import ResolvedBaseModel
from app.basemodel.service import resolve_base_model
from app.core.config import Settings
from app.core.errors import InvalidInput, ServiceError
from app.ml.lineage import load_base_model, load_starting_model
from app.ml.loading import read_model_metadata
from app.ml.methods.distill import DistillMethod, StudentLayers, check_kept
from worker.training import data as training_data
from worker.training.callbacks import clean_eval_metrics
from worker.training.methods.base import StartingModel, TrainingMethod
from worker.training.state import AttemptFence

if TYPE_CHECKING:
    import datasets
    import torch
    from pydantic import ValidationError
    from transformers import PreTrainedModel, Trainer

    from app.ml.tasks import TaskSpec

# Names of the module lists that hold a model's transformer layers (as worker/training/heads.py
# finds a parameter's layer): bert.encoder.layer, distilbert.transformer.layer, model.layers...
BLOCK_LISTS = ("layer", "layers", "h", "block", "blocks")
IGNORED = -100  # the label of a position no loss is taken on
# Transfer rows the teacher is asked about at once (one predict request's worth).
TRANSFER_CHUNK = 256


def kept_layers(total: int, keep: int) -> list[int]:
    """Which of `total` layers a student of `keep` layers keeps: the last layer of each of `keep`
    equal blocks (round((i + 1) * total / keep) - 1, halves up), so that each student layer
    stands for a block of the teacher's and hands on what that block's last layer did; the top
    one, on whose output the head was trained, is always kept. 3 of 6 are 1, 3 and 5, which kept
    SST-2 1.5 points closer to the teacher than 0, 3 and 5 (README, Distillation)."""
    if not 1 <= keep < total:
        raise InvalidInput(
            f"method.student.layers: {keep} must be at least 1 and fewer than the teacher's "
            f"{total} layers",
            field="method.student.layers",
        )
    # Blocks longer than 1 keep the indices distinct.
    return [int((i + 1) * total / keep + 0.5) - 1 for i in range(keep)]


def block_list(model: Any) -> tuple[str, torch.nn.ModuleList]:
    """The module list of the model's transformer layers, and its name."""
    import torch

    total = model.config.num_hidden_layers
    found = [
        (name, module)
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.ModuleList)
        and len(module) == total
        and name.rpartition(".")[2] in BLOCK_LISTS
    ]
    if len(found) != 1:
        raise ServiceError(
            f"the teacher's {total} transformer layers were not found as one module list "
            f"({[name for name, _ in found]}); use a base model as the student",
            code="invalid_input",
        )
    return found[0]


def prune_layers(model: Any, keep: list[int]) -> None:
    """Keep only the layers `keep` (in order) of `model`, renumbered 0..k-1 as its config says;
    saved, it loads as an ordinary model of k layers."""
    import torch

    name, blocks = block_list(model)
    total = len(blocks)
    owner_name, _, attribute = name.rpartition(".")
    kept = torch.nn.ModuleList([blocks[i] for i in keep])
    setattr(model.get_submodule(owner_name), attribute, kept)
    for index, block in enumerate(kept):
        # Attention modules that know their layer's index (a cache slot) learn the new one.
        for module in block.modules():
            if isinstance(getattr(module, "layer_idx", None), int):
                module.layer_idx = index  # type: ignore[assignment]
    config = model.config
    config.num_hidden_layers = len(keep)
    layer_types = getattr(config, "layer_types", None)
    if isinstance(layer_types, list) and len(layer_types) == total:
        config.layer_types = [layer_types[i] for i in keep]


def soft_target_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    *,
    temperature: float,
    mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """T^2 * KL(softmax(teacher / T) || softmax(student / T)), each distribution over the last
    dimension, averaged over the positions (those where `mask` is true); zero when the logits
    are equal."""
    import torch.nn.functional as F

    log_student = F.log_softmax(student.float() / temperature, dim=-1)
    log_teacher = F.log_softmax(teacher.float() / temperature, dim=-1)
    per_position = F.kl_div(log_student, log_teacher, reduction="none", log_target=True).sum(-1)
    if mask is not None:
        per_position = per_position[mask]
    if per_position.numel() == 0:  # no labelled position in the batch
        return student.sum() * 0.0
    return per_position.mean() * temperature**2


def distillation_term(
    student: Mapping[str, Any],
    teacher: Mapping[str, Any],
    *,
    temperature: float,
    labels: torch.Tensor | None = None,
) -> torch.Tensor:
    """The soft-target loss of every `*logits` output (classification's and NER's `logits`, QA's
    `start_logits` and `end_logits`), averaged; positions whose gold label is -100 are left out
    where there is a label per position."""
    import torch

    terms = []
    for key in [k for k in student if k.endswith("logits")]:
        logits = student[key]
        mask = None
        if labels is not None and labels.shape == logits.shape[:-1]:
            mask = labels != IGNORED
        terms.append(soft_target_loss(logits, teacher[key], temperature=temperature, mask=mask))
    if not terms:
        raise ServiceError("the model returned no logits to distil", code="training_error")
    return torch.stack(terms).mean()


def hidden_state_term(
    student: Any,
    teacher: Any,
    *,
    layer_map: list[int],
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Mean cosine distance (1 - cos) between the student's layer outputs and the teacher's they
    were copied from: student hidden_states[i + 1] against teacher hidden_states[layer_map[i] + 1]
    (index 0 is the embeddings' output), over the tokens `attention_mask` marks; zero when they
    are equal."""
    import torch
    import torch.nn.functional as F

    if student is None or teacher is None or len(student) != len(layer_map) + 1:
        raise ServiceError(
            "the student's or the teacher's hidden states do not line up with the kept layers",
            code="training_error",
        )
    terms = []
    for i, t in enumerate(layer_map):
        distance = 1 - F.cosine_similarity(student[i + 1].float(), teacher[t + 1].float(), dim=-1)
        if attention_mask is not None and attention_mask.shape == distance.shape:
            distance = distance[attention_mask.bool()]
        terms.append(distance.mean() if distance.numel() else distance.sum() * 0.0)
    return torch.stack(terms).mean()


def combined_loss(gold: torch.Tensor, soft: torch.Tensor, *, alpha: float) -> torch.Tensor:
    """alpha * gold + (1 - alpha) * soft."""
    return alpha * gold + (1 - alpha) * soft


@dataclass
class Teacher:
    """The frozen teacher, the method's settings and what the training steps measured."""

    model: PreTrainedModel
    method: DistillMethod
    # The teacher's forward arguments (a student of another architecture may take others).
    inputs: frozenset[str]
    # The teacher's layer each student layer was copied from ({"layers": k} students).
    layer_map: list[int] | None = None
    # The teacher's model id and what /predict serves it with (its tuneserve.json: max_length,
    # task_options), for labelling a transfer set as /predict would answer.
    model_id: str = ""
    serving: dict[str, Any] = field(default_factory=dict)
    # Running sums over training steps: the gold loss, the soft-target loss, the hidden-state
    # loss, and steps.
    sums: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0, 0.0])

    @property
    def matches_hidden(self) -> bool:
        return self.method.hidden_weight > 0 and self.layer_map is not None

    def logits(self, batch: Mapping[str, Any], *, skip: set[str]) -> Any:
        """The teacher's outputs on the student's batch (labels left out), without gradients;
        with its hidden states when the student matches them."""
        import torch

        device = batch[next(iter(batch))].device
        if next(self.model.parameters()).device != device:
            self.model.to(device)
        inputs = {k: v for k, v in batch.items() if k in self.inputs and k not in skip}
        if self.matches_hidden:
            inputs["output_hidden_states"] = True
        with torch.no_grad():
            return self.model(**inputs)

    def summary(self) -> dict[str, float | None]:
        gold, soft, hidden, steps = self.sums
        if not steps:
            return {"mean_gold_loss": None, "mean_soft_loss": None}
        means: dict[str, float | None] = {
            "mean_gold_loss": round(gold / steps, 6),
            "mean_soft_loss": round(soft / steps, 6),
        }
        if self.matches_hidden:
            means["mean_hidden_loss"] = round(hidden / steps, 6)
        return means


def start_student(
    settings: Settings,
    fence: AttemptFence,
    *,
    task: TaskSpec,
    base: ResolvedBaseModel,
    method: DistillMethod,
    label_names: list[str],
) -> tuple[PreTrainedModel, list[str], Teacher, dict[str, Any]]:
    """The student to train (and its head's weight names), the teacher, and what to record of
    both in the model's metadata."""
    if base.lineage is None:  # submission checks it; a row written by hand may not
        raise InvalidInput(
            f"base_model: distill needs the teacher as \"model:<id>\", not '{base.id}'",
            field="base_model",
        )
    teacher = load_base_model(task, base, label_names=label_names)
    teacher.requires_grad_(False)
    student_spec = method.student
    if isinstance(student_spec, StudentLayers):
        model, head = load_starting_model(task, base, label_names=label_names)
        total = int(model.config.num_hidden_layers)
        check_kept(student_spec, total, teacher=base.id)  # as at submission, on the real config
        layers = student_spec.layers
        keep = kept_layers(total, layers) if isinstance(layers, int) else list(layers)
        prune_layers(model, keep)
        student: dict[str, Any] = {"from": "teacher", "layers_kept": keep, "teacher_layers": total}
        fence.log(
            f"student: the teacher with {len(keep)} of its {total} layers ({keep})",
            layers_kept=keep,
            teacher_layers=total,
        )
    else:
        student_base = resolve_base_model(settings, student_spec)
        model, head = load_starting_model(task, student_base, label_names=label_names)
        student = {"from": student_spec, "layers": int(model.config.num_hidden_layers)}
        fence.log(f"student: {student_spec} with a fresh head", student_base=student_spec)
    teacher_inputs = frozenset(training_data.model_input_columns(teacher))
    unseen = sorted(
        (teacher_inputs & {"token_type_ids", "position_ids"})
        - training_data.model_input_columns(model)
    )
    if unseen:
        fence.warning(
            f"the teacher takes {unseen}, which the student's batches do not carry: it reads "
            "the student's inputs without them",
            teacher_inputs=unseen,
        )
    assert base.lineage is not None
    record = {
        "teacher": {
            "id": base.lineage.parent_id,
            "storage_path": base.lineage.parent_storage_path,
            "layers": base.num_layers,
        },
        "student": student,
        "temperature": method.temperature,
        "alpha": method.alpha,
        "hidden_weight": method.hidden_weight,
    }
    layer_map = keep if isinstance(student_spec, StudentLayers) else None
    serving = read_model_metadata(base.path_or_hub_id)
    state = Teacher(
        teacher,
        method,
        teacher_inputs,
        layer_map,
        model_id=base.lineage.parent_id,
        serving={k: serving.get(k) for k in ("max_length", "task_options")},
    )
    return model, head, state, record


def trainer_class(base: type[Trainer], teacher: Teacher) -> type[Trainer]:
    """`base` whose training steps add the teacher's soft targets to the gold loss."""

    class DistillTrainer(base):  # type: ignore[valid-type,misc]
        # compute_loss returns a per-batch mean, as `base` takes every model's loss to be
        # (model_accepts_loss_kwargs off: no num_items_in_batch, no scaling by the process
        # count): the Trainer divides it for gradient accumulation.
        loss_is_scaled_for_ga = False

        def compute_loss(
            self,
            model: Any,
            inputs: dict[str, Any],
            return_outputs: bool = False,
            num_items_in_batch: Any = None,
        ) -> Any:
            if not model.training:  # evaluation: the gold loss, comparable with other methods'
                return super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            method = teacher.method
            labels = inputs.get("labels")
            # A copy: the Trainer's label smoother pops the labels out of what it is given.
            student_inputs = dict(inputs)
            if teacher.matches_hidden:
                student_inputs["output_hidden_states"] = True
            gold, outputs = super().compute_loss(model, student_inputs, return_outputs=True)
            teacher_outputs = teacher.logits(inputs, skip=set(self.label_names))
            soft = distillation_term(
                outputs, teacher_outputs, temperature=method.temperature, labels=labels
            )
            loss = combined_loss(gold, soft, alpha=method.alpha)
            sums = teacher.sums
            if teacher.matches_hidden:
                assert teacher.layer_map is not None
                hidden = hidden_state_term(
                    outputs.get("hidden_states"),
                    teacher_outputs.get("hidden_states"),
                    layer_map=teacher.layer_map,
                    attention_mask=inputs.get("attention_mask"),
                )
                loss = loss + method.hidden_weight * hidden
                sums[2] += float(hidden.detach())
            sums[0] += float(gold.detach())
            sums[1] += float(soft.detach())
            sums[3] += 1
            return (loss, outputs) if return_outputs else loss

        def evaluate_teacher(self) -> dict[str, Any]:
            """The teacher's evaluation on the student's validation features, by the same
            Trainer evaluation and task metrics."""
            from transformers import PrinterCallback

            plain = base(
                model=teacher.model,
                args=self.args,
                eval_dataset=self.eval_dataset,
                data_collator=self.data_collator,
                processing_class=self.processing_class,
                compute_metrics=self.compute_metrics,
            )
            plain.remove_callback(PrinterCallback)
            return clean_eval_metrics(plain.evaluate())

    return DistillTrainer


def load_transfer_set(settings: Settings, fence: AttemptFence, dataset_id: str) -> datasets.Dataset:
    """The transfer set's stored rows (InvalidInput naming method.transfer_dataset once it is
    gone: submission checked it, and deleting it waits for the job)."""
    from app.db.models import Dataset
    from app.db.session import session_scope

    with session_scope(fence.factory) as session:
        row = session.get(Dataset, dataset_id)
    if row is None:
        raise InvalidInput(
            f"method.transfer_dataset: dataset '{dataset_id}' no longer exists",
            field="method.transfer_dataset",
        )
    return training_data.load_rows(settings, row)


def label_transfer_set(
    fence: AttemptFence,
    task: TaskSpec,
    teacher: Teacher,
    tokenizer: Any,
    rows: datasets.Dataset,
    *,
    label_names: list[str],
) -> datasets.Dataset:
    """`rows` with the labels the teacher gives them, as its /predict would answer (the task's
    preprocess, forward and postprocess, top answer): its rows' own labels are not read."""
    import torch
    from pydantic import ValidationError

    from app.predict.predictor import Predictor, plain_runner, served_settings

    model = teacher.model
    model.eval()  # type: ignore[no-untyped-call]
    max_length, options = served_settings(task, teacher.serving)
    predictor = Predictor(
        model_id=teacher.model_id,
        task=task,
        model=model,
        tokenizer=tokenizer,
        label_names=label_names,
        max_length=max_length,
        threads=torch.get_num_threads(),
        options=options,
        runner=plain_runner(teacher.model_id, task, model, tokenizer),
    )
    inputs = task.transfer_inputs(rows)
    total = len(inputs)
    fence.log(
        f"transfer set: the teacher labels its {total:,} rows",
        transfer_rows=total,
    )
    started = time.monotonic()
    predictions: list[Any] = []
    told = 0
    for first in range(0, total, TRANSFER_CHUNK):
        fence.raise_if_cancelled()
        part = inputs[first : first + TRANSFER_CHUNK]
        try:
            request = task.predict_request.model_validate(
                {"model": teacher.model_id, "inputs": part}
            )
        except ValidationError as exc:
            raise InvalidInput(
                f"method.transfer_dataset: {_bad_row(exc, task, first)}",
                field="method.transfer_dataset",
            ) from None
        predictions += predictor.predict(request)
        done = len(predictions)
        if done < total and done * 10 // total > told:  # each tenth
            told = done * 10 // total
            elapsed = time.monotonic() - started
            eta = elapsed * (total - done) / done
            fence.log(
                f"transfer set: {100 * done / total:.0f}% labelled ({done:,} of {total:,} rows), "
                f"ETA {eta:.0f} s",
                transfer_labelled=done,
                transfer_rows=total,
                eta_seconds=round(eta, 1),
            )
    labelled = task.with_predicted_labels(rows, predictions)
    fence.log(
        f"transfer set: {total:,} rows labelled by the teacher in "
        f"{time.monotonic() - started:.1f} s; the student trains on them beside the train set",
        transfer_rows=total,
        seconds=round(time.monotonic() - started, 1),
    )
    return labelled


def _bad_row(exc: ValidationError, task: TaskSpec, first: int) -> str:
    """Which transfer row a predict request refused, and why, in the API's plain words."""
    from app.core.validation import plain_errors

    problem = plain_errors(exc.errors(), root=task.predict_request)[0]
    # The request's field (inputs[i] of this chunk) is the row, named below.
    why = problem.message.removeprefix(f"{problem.field}: ")
    loc = exc.errors()[0]["loc"]
    if len(loc) >= 2 and loc[0] == "inputs" and isinstance(loc[1], int):
        return f"row {first + loc[1] + 1}: the teacher cannot be asked about it ({why})"
    return f"the teacher cannot be asked about its rows ({problem.message})"


def concatenate(train: datasets.Dataset, transfer: datasets.Dataset) -> datasets.Dataset:
    """The train rows, then the transfer rows (which have the same columns: submission checks
    it), in the train set's column order and types."""
    import datasets as hf

    if set(train.column_names) != set(transfer.column_names):
        raise InvalidInput(
            f"method.transfer_dataset: its columns {sorted(transfer.column_names)} are not the "
            f"train set's {sorted(train.column_names)}",
            field="method.transfer_dataset",
        )
    transfer = transfer.select_columns(train.column_names).cast(train.features)
    return hf.concatenate_datasets([train, transfer])


def teacher_metrics(trainer: Any, teacher: Teacher, fence: AttemptFence) -> dict[str, Any]:
    """The teacher evaluated on the student's validation rows (every rank takes its share);
    logged beside the mean losses of training."""
    metrics: dict[str, Any] = trainer.evaluate_teacher()
    shown = ", ".join(f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
    fence.log(
        f"teacher on the same validation rows: {shown}",
        teacher_metrics=metrics,
        **teacher.summary(),
    )
    return metrics


class DistillTraining(TrainingMethod[DistillMethod]):
    """The student starts from the teacher (base_model) and trains every weight with the
    DistillTrainer; the teacher's evaluation on the same rows becomes its parent_metrics."""

    name = "distill"

    def start(
        self,
        settings: Settings,
        fence: AttemptFence,
        *,
        task: TaskSpec,
        base: ResolvedBaseModel,
        options: DistillMethod,
        label_names: list[str],
    ) -> StartingModel:
        model, head, teacher, record = start_student(
            settings, fence, task=task, base=base, method=options, label_names=label_names
        )
        return StartingModel(model, head, state=teacher, metadata={"distillation": record})

    def train_rows(
        self,
        settings: Settings,
        fence: AttemptFence,
        *,
        task: TaskSpec,
        starting: StartingModel,
        options: DistillMethod,
        rows: datasets.Dataset,
        label_names: list[str],
        tokenizer: Any,
    ) -> datasets.Dataset:
        # The train split, then the transfer set with the teacher's labels.
        if options.transfer_dataset is None:
            return rows
        transfer = load_transfer_set(settings, fence, options.transfer_dataset)
        labelled = label_transfer_set(
            fence, task, starting.state, tokenizer, transfer, label_names=label_names
        )
        starting.metadata["distillation"]["transfer_set"] = {
            "dataset": options.transfer_dataset,
            "rows": labelled.num_rows,
        }
        return concatenate(rows, labelled)

    def trainer_class(self, trainer: type[Trainer], starting: StartingModel) -> type[Trainer]:
        # Its training steps add the teacher's soft targets.
        return trainer_class(trainer, starting.state)

    def parent_metrics(
        self, trainer: Trainer, starting: StartingModel, fence: AttemptFence
    ) -> dict[str, Any] | None:
        # The teacher beside the student, on the same rows.
        metrics = teacher_metrics(trainer, starting.state, fence)
        starting.metadata["distillation"]["teacher_metrics"] = metrics
        return metrics
