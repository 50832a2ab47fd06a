"""(IA)^3 (peft.IA3Config): learned rescaling vectors."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from app.ml.methods.base import MERGE_DESCRIPTION, MethodOptions, MethodSpec, adapter_artifact


class Ia3Method(MethodOptions):
    """(IA)^3 (peft.IA3Config): learned rescaling vectors, far fewer weights than LoRA; the task
    head trains with them and is saved beside them."""

    type: Literal["ia3"]
    target_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Module names to rescale; found from the architecture when omitted.",
    )
    feedforward_modules: list[str] | None = Field(
        default=None,
        min_length=1,
        description="Which of target_modules are feed-forward layers (their inputs are scaled); "
        "found from the architecture when omitted.",
    )
    merge_adapter: bool = Field(default=False, description=MERGE_DESCRIPTION)


class Ia3(MethodSpec[Ia3Method]):
    name = "ia3"
    options_model = Ia3Method
    # 3e-3 (before the pooler trained) 0.52, 1e-2 0.757, 3e-2 0.697
    default_learning_rate = 1e-2

    def artifact(self, options: Ia3Method) -> str:
        return adapter_artifact(options.merge_adapter)
