"""Head only: a linear probe on the frozen pretrained model."""

from __future__ import annotations

from typing import Literal

from app.ml.methods.base import MethodOptions, MethodSpec


class HeadOnlyMethod(MethodOptions):
    """Only the new task head trains; the pretrained model is frozen (a linear probe)."""

    type: Literal["head_only"]


class HeadOnly(MethodSpec[HeadOnlyMethod]):
    name = "head_only"
    options_model = HeadOnlyMethod
    # 1e-3 0.650, 3e-3 0.677, 1e-2 0.663: a linear layer wants a high rate.
    default_learning_rate = 3e-3
