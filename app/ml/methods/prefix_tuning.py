"""Prefix tuning (peft.PrefixTuningConfig): trained key/value vectors before every input."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from app.ml.methods.base import ADAPTER, MethodOptions, MethodSpec


class PrefixTuningMethod(MethodOptions):
    """Prefix tuning (peft.PrefixTuningConfig): trained key/value vectors that every attention
    layer attends to before the input; the task head trains with them and is saved beside them.
    The prefix cannot be folded into the weights: the model is served as base + prefix, and the
    prefix takes num_virtual_tokens of the base model's positions."""

    type: Literal["prefix_tuning"]
    # 50: on SST-2 (1,500 rows, 2 epochs, batch 32, lr 1e-2, seed 0) 20 tokens scored 0.713, 50
    # 0.737, 100 0.703 (benchmarks/method_defaults.py; the README has the rest of the sweep).
    num_virtual_tokens: int = Field(
        default=50, ge=1, le=512, description="Length of the trained prefix, in tokens."
    )
    prefix_projection: bool = Field(
        default=False,
        description="Train the prefix through a two-layer MLP (more stable, more weights while "
        "training; the saved prefix is the MLP's output either way).",
    )
    encoder_hidden_size: int | None = Field(
        default=None,
        ge=1,
        le=65_536,
        description="Hidden size of that MLP; only with prefix_projection. Default: the base "
        "model's hidden size.",
    )

    @model_validator(mode="after")
    def _projection_size(self) -> PrefixTuningMethod:
        if self.encoder_hidden_size is not None and not self.prefix_projection:
            raise ValueError("encoder_hidden_size is only used with prefix_projection: true")
        return self


class PrefixTuning(MethodSpec[PrefixTuningMethod]):
    name = "prefix_tuning"
    options_model = PrefixTuningMethod
    default_learning_rate = 1e-2  # 1e-2 0.713, 3e-2 0.683
    # A prefix is extra keys and values fed to every layer, not a change of weights: there is no
    # plain model to merge it into.
    not_mergeable = "was trained with prefix tuning, whose prefix cannot be merged into the weights"

    def artifact(self, options: PrefixTuningMethod) -> str:
        return ADAPTER
