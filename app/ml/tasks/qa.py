"""Extractive question answering (SQuAD v1.1 and v2.0): schema, features, metrics, serving.

The data side lives in qa_data.py (SQuAD JSON, row checks), the document-stride features in
qa_features.py and the n-best post-processing with EM/F1 in qa_postprocess.py; this file puts
them behind the TaskSpec protocol.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationInfo,
    model_validator,
)

from app.core.errors import InvalidInput
from app.core.text import RealText, UnicodeText
from app.ml.tasks import qa_data, qa_features
from app.ml.tasks.base import (
    DatasetSummary,
    Encoded,
    Normalized,
    TaskDefaults,
    column_values,
    predicted,
    replace_column,
)
from app.ml.tasks.qa_baseline import baseline_answers
from app.ml.tasks.qa_postprocess import (
    Answer,
    FeatureLogits,
    PostprocessOptions,
    best_answers,
    squad_scores,
)
from app.ml.tasks.serving import feature_rows

if TYPE_CHECKING:
    import datasets
    from transformers import PreTrainedTokenizerBase

    from app.ml.tables import ParsedTable

# The context key under which the job service passes the train set's DatasetSummary when it
# validates task_options, so that "auto" options can be resolved from the data.
TRAIN_SUMMARY_CONTEXT = "train_summary"


# Learning rate per method when the job leaves it out (see QaTask.default_hyperparameters).
QA_LEARNING_RATE = {"full": 2e-4, "lora": 2e-3, "ia3": 3e-2, "adalora": 1e-2, "head_only": 3e-2}
# Passes over the train set, in questions: (questions' worth, fewest epochs, most epochs). Full
# fine-tuning needs about 3,000 questions' worth; the adapters move this checkpoint's token vectors
# more slowly and need twice that (1,000 SQuAD questions, F1 after 3 and after 6 epochs: LoRA
# 0.174 and 0.346, IA3 0.156 and 0.315, AdaLoRA 0.151 and 0.365). A head alone gains nothing from
# more (0.108 and 0.111) and keeps full fine-tuning's.
QA_PASSES: dict[str, tuple[int, float, float]] = {
    "full": (3000, 1.5, 3.0),
    "head_only": (3000, 1.5, 3.0),
}
QA_ADAPTER_PASSES = (6000, 1.5, 6.0)


def qa_epochs(train_rows: int | None, method: str = "full") -> float:
    """Epochs for a train set of `train_rows` questions, in halves: full fine-tuning and a head
    alone 1.5 from 2,000 questions up to 3 for 1,000 or fewer; the adapters 6,000 questions'
    worth, 1.5 to 6 epochs."""
    passes, fewest, most = QA_PASSES.get(method, QA_ADAPTER_PASSES)
    if not train_rows:
        return fewest
    return min(most, max(fewest, round(2 * passes / train_rows) / 2))


class QAOptions(BaseModel):
    """task_options of a QA job; stored resolved on the job and used again at serving."""

    model_config = ConfigDict(extra="forbid")

    doc_stride: int = Field(
        default=128,
        ge=0,
        le=4096,
        description="Context tokens shared by consecutive windows of a long context (capped at "
        "half the room a window leaves for the context).",
    )
    max_answer_length: int = Field(default=30, ge=1, le=512, description="Longest answer, tokens.")
    n_best_size: int = Field(
        default=20, ge=1, le=100, description="Start and end tokens tried per feature."
    )
    null_score_diff_threshold: float = Field(
        default=0.0,
        allow_inf_nan=False,
        description='v2: answer "no answer" when its score beats the best span\'s by more.',
    )
    version_2_with_negative: bool | Literal["auto"] = Field(
        default="auto",
        description='Whether the model may answer "no answer" (SQuAD v2). auto: true when the '
        "train set has unanswerable questions; resolved when the job is submitted.",
    )

    @model_validator(mode="after")
    def _resolve_auto(self, info: ValidationInfo) -> QAOptions:
        summary = (info.context or {}).get(TRAIN_SUMMARY_CONTEXT)
        if self.version_2_with_negative == "auto" and isinstance(summary, DatasetSummary):
            self.version_2_with_negative = int(summary.stats.get("unanswerable", 0)) > 0
        return self

    def postprocess(self) -> PostprocessOptions:
        # An "auto" never resolved (a spec that did not go through submission) means v1.
        return PostprocessOptions(
            n_best_size=self.n_best_size,
            max_answer_length=self.max_answer_length,
            allow_null=self.version_2_with_negative is True,
            null_score_diff_threshold=self.null_score_diff_threshold,
        )


class QAInput(BaseModel):
    model_config = ConfigDict(extra="forbid")

    question: RealText
    context: RealText


class QAPredictRequest(BaseModel):
    """Body of POST /v1/predict/qa."""

    model_config = ConfigDict(extra="forbid")

    model: UnicodeText = Field(description="Model id from /v1/models, or an alias (/v1/aliases).")
    inputs: list[QAInput] = Field(min_length=1, description="Questions, each with its context.")
    top_k: int = Field(default=1, ge=1, le=100, description="Answers returned per input.")


class QAAnswer(BaseModel):
    """An answer: context[start:end] == answer; "no answer" is answer "" with start = end = 0."""

    answer: str = Field(description='The answer text; "" when the model finds none (SQuAD v2).')
    score: float = Field(
        description="Softmax over the n-best candidates of this question (and the null answer)."
    )
    start: int = Field(description="Offset of the answer's first character in the context.")
    end: int = Field(description="Offset just past its last character: context[start:end].")


def _options(options: BaseModel) -> QAOptions:
    assert isinstance(options, QAOptions)
    return options


class QATask(TaskDefaults):
    name: str = "qa"
    required_columns: tuple[str, ...] = ("question", "context", "answers")
    optional_columns: tuple[str, ...] = ("id", "title")
    column_aliases: Mapping[str, tuple[str, ...]] = {
        "question": ("query", "questions"),
        "context": ("passage", "paragraph", "document", "contexts"),
        "answers": ("answer",),
        "id": ("qid", "question_id", "example_id"),
    }
    native_formats: tuple[str, ...] = ("squad",)
    auto_model_class_name: str = "AutoModelForQuestionAnswering"
    # Not "QUESTION_ANS": peft's PeftModelForQuestionAnswering.forward drops token_type_ids (and
    # position_ids), so a LoRA model would train without segment ids and then be served, merged,
    # with them. The generic PeftModel passes every input through; the head trains through
    # modules_to_save either way.
    peft_task_type: str | None = None
    per_token_outputs: bool = True
    # Prefix tuning would need that wrapper (get_peft_model has no generic model for prompt
    # learning: KeyError: None), and its prefix path drops token_type_ids as well (peft 0.21).
    unsupported_methods: Mapping[str, str] = MappingProxyType(
        {
            "prefix_tuning": "peft's question-answering wrapper drops token_type_ids when it adds "
            "the prefix, so a BERT-like model would train and answer without telling the question "
            "from the context; use lora, adalora or ia3"
        }
    )
    primary_metric: str = "f1"
    input_fields: tuple[str, ...] = ("question", "context")
    eval_metrics: tuple[str, ...] = ("exact_match", "f1")
    # Targets are start/end token positions, not labels: nothing to smooth.
    supports_label_smoothing: bool = False
    options_model: type[BaseModel] = QAOptions
    predict_request: type[BaseModel] = QAPredictRequest
    # Which question a feature belongs to and where its tokens sit in the context.
    eval_only_columns: tuple[str, ...] = ("example_id", "offset_mapping", "cls_index")

    def default_hyperparameters(
        self, method: str, *, train_rows: int | None = None
    ) -> dict[str, Any]:
        # Tuned on SQuAD v1.1 dev split by article (3,036 questions to train, 1,589 held out),
        # all-MiniLM-L6-v2: full 1.5 epochs, batch 8, lr 2e-4 gave F1 0.60 (three seeds, 0.597
        # to 0.608); 2 epochs gave 0.61 for a third more time, 1 epoch 0.54 to 0.57. LoRA (r=8)
        # needs a higher rate: 2e-3 gave 0.51, 1e-3 only 0.40. SQuAD contexts average ~160
        # tokens, so 384 keeps most in one window (256 scored the same for 3% more tokens).
        # A small set needs more passes: on 1,000 questions (benchmarks/method_defaults.py, 5
        # held-out articles, heuristic baseline 0.166) full scored 0.212 after 1.5 epochs and
        # 0.493 after 3; the adapters need twice the passes (QA_PASSES: LoRA 2e-3 0.346, IA3 3e-2
        # 0.315, AdaLoRA 1e-2 0.365 after 6 epochs). At 3 epochs LoRA 5e-3 gave 0.176 and LoRA on
        # every linear layer (r=16, 3e-3, 4 epochs) 0.121. A head alone on the frozen token
        # vectors stays below the baseline (3e-2: 0.108 after 3 epochs, 0.111 after 6).
        defaults: dict[str, Any] = {"max_length": 384, "batch_size": 8}
        defaults["epochs"] = qa_epochs(train_rows, method)
        defaults["learning_rate"] = QA_LEARNING_RATE.get(method, 2e-3)
        return defaults

    def sniff_format(self, head: str, *, filename: str | None) -> str | None:
        return "squad" if qa_data.looks_like_squad(head) else None

    def read_native(self, path: Path, fmt: str, *, max_rows: int) -> ParsedTable:
        if fmt != "squad":
            raise NotImplementedError(f"no native format '{fmt}'")
        return qa_data.read_squad(path, max_rows=max_rows)

    def normalize(self, ds: datasets.Dataset, *, strict: bool = False) -> Normalized:
        import datasets as hf

        columns, notes = qa_data.validated_columns(ds)
        features = {
            "id": hf.Value("string"),
            "title": hf.Value("string"),
            "question": hf.Value("string"),
            "context": hf.Value("string"),
            "answers": {
                "text": hf.List(hf.Value("string")),
                "answer_start": hf.List(hf.Value("int32")),
            },
        }
        # Columns in the order of `features`: id, title (when given), question, context, answers.
        ordered = {k: columns[k] for k in features if k in columns}
        chosen = hf.Features({k: features[k] for k in ordered})
        return Normalized(hf.Dataset.from_dict(ordered, features=chosen), notes)

    def summarize(self, ds: datasets.Dataset) -> DatasetSummary:
        return DatasetSummary(
            num_rows=ds.num_rows,
            columns=list(ds.column_names),
            label_names=None,
            stats=qa_data.dataset_stats(ds),
        )

    def label_names(
        self, train: datasets.Dataset, validation: datasets.Dataset | None
    ) -> list[str]:
        return []  # the head predicts token positions, not labels

    def check_compatible(self, train: DatasetSummary, validation: DatasetSummary) -> None:
        if int(train.stats.get("answerable", 1)) == 0:
            raise InvalidInput(
                "train_dataset has no answerable questions; a QA model must see answers",
                field="train_dataset",
            )

    def stratify_column(self) -> str | None:
        return None

    def transfer_inputs(self, rows: datasets.Dataset) -> list[Any]:
        return [
            {"question": q, "context": c}
            for q, c in zip(
                column_values(rows, "question"), column_values(rows, "context"), strict=True
            )
        ]

    def with_predicted_labels(
        self, rows: datasets.Dataset, predictions: Sequence[Any]
    ) -> datasets.Dataset:
        # The best answer (top_k 1) as the row's one answer; "" (none found) leaves it unanswered.
        answers = []
        for p in predictions:
            text, start = str(predicted(p[0], "answer")), int(predicted(p[0], "start"))
            answers.append(
                {"text": [text], "answer_start": [start]}
                if text
                else {"text": [], "answer_start": []}
            )
        return replace_column(rows, "answers", answers)

    def preprocess(
        self,
        tokenizer: PreTrainedTokenizerBase,
        *,
        label2id: Mapping[str, int],
        max_length: int,
        options: BaseModel,
        for_eval: bool,
    ) -> Callable[[dict[str, list[Any]]], dict[str, list[Any]]]:
        stride = _options(options).doc_stride

        def encode(batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
            features = qa_features.encode(
                tokenizer,
                batch["question"],
                batch["context"],
                max_length=max_length,
                doc_stride=stride,
            )
            # Eval features carry positions too: the Trainer then reports eval_loss and calls
            # compute_metrics (it only does when the features have labels).
            qa_features.label_features(features, batch["answers"])
            out = features.inputs
            if for_eval:
                out["example_id"] = [batch["id"][i] for i in features.example_index]
                out["offset_mapping"] = [
                    [None if o is None else list(o) for o in offs] for offs in features.offsets
                ]
                out["cls_index"] = features.cls_index
            return out

        return encode

    def data_collator(self, tokenizer: PreTrainedTokenizerBase) -> Callable[[list[Any]], Any]:
        from transformers import DataCollatorWithPadding

        # Pads input_ids/attention_mask/token_type_ids; start/end positions become tensors.
        return DataCollatorWithPadding(tokenizer)

    def compute_metrics(
        self,
        label_names: Sequence[str],
        *,
        options: BaseModel,
        eval_rows: datasets.Dataset,
        eval_features: datasets.Dataset,
    ) -> Callable[[Any], dict[str, Any]]:
        post = _options(options).postprocess()
        ids = list(eval_features["example_id"][:])
        offsets = list(eval_features["offset_mapping"][:])
        cls = list(eval_features["cls_index"][:])
        contexts = list(eval_rows["context"][:])
        golds = [a["text"] for a in eval_rows["answers"][:]]
        row_of = {qid: i for i, qid in enumerate(eval_rows["id"][:])}

        def metrics(pred: Any) -> dict[str, Any]:
            start_logits, end_logits = pred.predictions[:2]
            per_row: list[list[FeatureLogits]] = [[] for _ in contexts]
            for f, qid in enumerate(ids):
                per_row[row_of[qid]].append(
                    FeatureLogits(start_logits[f], end_logits[f], offsets[f], cls[f])
                )
            texts = [
                best_answers(context, feats, post, top_k=1)[0].text
                for context, feats in zip(contexts, per_row, strict=True)
            ]
            return dict(squad_scores(texts, golds))

        return metrics

    def baseline_metrics(
        self,
        train_rows: datasets.Dataset,
        validation_rows: datasets.Dataset,
        *,
        label_names: Sequence[str],
        options: BaseModel,
    ) -> dict[str, float]:
        """The span qa_baseline picks by word overlap (no training rows needed), scored with
        squad_scores as the model's answers are."""
        texts = baseline_answers(
            list(validation_rows["question"][:]), list(validation_rows["context"][:])
        )
        golds = [a["text"] for a in validation_rows["answers"][:]]
        scores = squad_scores(texts, golds)
        return {k: float(scores[k]) for k in self.eval_metrics}

    def encode_inputs(
        self,
        tokenizer: PreTrainedTokenizerBase,
        request: BaseModel,
        *,
        max_length: int,
        options: BaseModel,
    ) -> Encoded:
        assert isinstance(request, QAPredictRequest)
        features = qa_features.encode(
            tokenizer,
            [x.question for x in request.inputs],
            [x.context for x in request.inputs],
            max_length=max_length,
            doc_stride=_options(options).doc_stride,
        )
        names = [k for k in features.inputs if k in tokenizer.model_input_names]
        return Encoded(feature_rows(features.inputs, names), state=features)

    def postprocess(
        self,
        request: BaseModel,
        encoded: Encoded,
        outputs: Sequence[Mapping[str, np.ndarray]],
        *,
        label_names: Sequence[str],
        options: BaseModel,
    ) -> list[Any]:
        assert isinstance(request, QAPredictRequest)
        features: qa_features.Features = encoded.state
        per_item: list[list[FeatureLogits]] = [[] for _ in request.inputs]
        for f, item in enumerate(features.example_index):
            per_item[item].append(
                FeatureLogits(
                    outputs[f]["start_logits"],
                    outputs[f]["end_logits"],
                    features.offsets[f],
                    features.cls_index[f],
                )
            )
        post = _options(options).postprocess()
        return [
            [_to_schema(a) for a in best_answers(x.context, feats, post, top_k=request.top_k)]
            for x, feats in zip(request.inputs, per_item, strict=True)
        ]


def _to_schema(answer: Answer) -> QAAnswer:
    return QAAnswer(answer=answer.text, score=answer.score, start=answer.start, end=answer.end)
