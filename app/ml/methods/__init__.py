"""The method registry: one entry per fine-tuning method (the job spec's `method.type`).

Adding a method is a file here (its options model and MethodSpec), a line below, and the worker's
side of it: a file in worker/training/methods/ and a line in that registry.
"""

from __future__ import annotations

from typing import Any

from app.core.errors import InvalidInput
from app.ml.methods.adalora import AdaLora
from app.ml.methods.base import MethodOptions, MethodSpec, SubmitContext
from app.ml.methods.distill import Distill
from app.ml.methods.full import Full
from app.ml.methods.head_only import HeadOnly
from app.ml.methods.ia3 import Ia3
from app.ml.methods.lora import Lora
from app.ml.methods.prefix_tuning import PrefixTuning

# By name, in the order the API lists them.
METHODS: dict[str, MethodSpec[Any]] = {
    method.name: method
    for method in (
        Full(),
        Lora(),
        Ia3(),
        AdaLora(),
        PrefixTuning(),
        HeadOnly(),
        Distill(),
    )
}
# The method of a job spec that names none.
DEFAULT_METHOD = "full"


def get_method(name: str) -> MethodSpec[Any]:
    """The method called `name`, or InvalidInput listing the known ones."""
    try:
        return METHODS[name]
    except KeyError:
        raise InvalidInput(
            f"method.type: unknown method '{name}'; expected one of {list(METHODS)}",
            field="method.type",
        ) from None


__all__ = [
    "DEFAULT_METHOD",
    "METHODS",
    "MethodOptions",
    "MethodSpec",
    "SubmitContext",
    "get_method",
]
