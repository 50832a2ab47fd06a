"""LoRA (peft.LoraConfig): low-rank updates of chosen weight matrices."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.ml.methods.base import MERGE_DESCRIPTION, MethodOptions, MethodSpec, adapter_artifact


class LoraMethod(MethodOptions):
    """LoRA adapters (peft.LoraConfig); the task head trains with them and is saved beside them."""

    type: Literal["lora"]
    r: int = Field(default=8, ge=1, le=512, description="Rank of the update matrices.")
    lora_alpha: float | None = Field(
        default=None, gt=0, le=4096, description="Scaling numerator (alpha/r); default 2 * r."
    )
    lora_dropout: float = Field(default=0.1, ge=0, lt=1)
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Module names to adapt; found from the architecture when omitted.",
    )
    merge_adapter: bool = Field(default=False, description=MERGE_DESCRIPTION)


class Lora(MethodSpec[LoraMethod]):
    name = "lora"
    options_model = LoraMethod
    default_learning_rate = 2e-3  # 1e-3 0.743, 2e-3 0.790, 4e-3 0.767
    # peft mixes the rows of several LoRA adapters of one base in one forward.
    shares_base = True

    def fill_defaults(self, options: LoraMethod, *, base_model: str) -> LoraMethod:
        if options.lora_alpha is None:
            return options.model_copy(update={"lora_alpha": 2.0 * options.r})
        return options

    def artifact(self, options: LoraMethod) -> str:
        return adapter_artifact(options.merge_adapter)
