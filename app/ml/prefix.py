"""Prefix tuning on transformers releases that renamed `past_key_values` to `cache`.

peft feeds a trained prefix to every attention layer as past keys and values, and decides whether a
model can take them by looking for a `past_key_values` parameter in the forward signature of the
task model or its backbone. transformers 5.2x renamed that parameter to `cache` (the old name is
still accepted through a deprecation shim until 5.40), so peft finds neither and refuses with
"Model does not support past key values". The cache itself works as before on encoders: BERT's
embeddings number the input's positions after the cached ones and its attention reads the longer
key/value sequence under the mask peft widens by the prefix.

`accept_prefix(model)` gives the task model a forward that declares `past_key_values` and hands it
on under the name the backbone takes. It changes nothing where peft already finds the parameter.
"""

from __future__ import annotations

import functools
import inspect
from typing import Any

PEFT_NAME = "past_key_values"
RENAMED = "cache"


def _parameters(fn: Any) -> dict[str, inspect.Parameter]:
    return dict(inspect.signature(fn).parameters)


def backbone_cache_argument(model: Any) -> str | None:
    """The name under which the model's backbone takes past keys and values, or None."""
    backbone = getattr(model, getattr(model, "base_model_prefix", ""), None)
    for candidate in (model, backbone):
        if candidate is None:
            continue
        params = _parameters(candidate.forward)
        for name in (PEFT_NAME, RENAMED):
            if name in params:
                return name
    return None


def accept_prefix(model: Any) -> Any:
    """Let peft's prefix tuning reach `model`'s attention layers (returns `model` itself).

    Raises ValueError naming the model class when its backbone takes no cache at all.
    """
    if PEFT_NAME in _parameters(model.forward):
        return model
    argument = backbone_cache_argument(model)
    if argument is None:
        raise ValueError(
            f"{type(model).__name__} takes no past keys and values, which prefix tuning needs"
        )
    if argument == PEFT_NAME:
        # peft passes the prefix straight to the backbone itself.
        return model
    original = model.forward
    params = list(inspect.signature(original).parameters.values())
    variadic = [p for p in params if p.kind is inspect.Parameter.VAR_KEYWORD]
    if not variadic:
        raise ValueError(
            f"{type(model).__name__} does not hand past keys and values on to its backbone, "
            "which prefix tuning needs"
        )

    @functools.wraps(original)
    def forward(*args: Any, past_key_values: Any = None, **kwargs: Any) -> Any:
        if past_key_values is not None:
            # The task model hands unknown keyword arguments on to its backbone.
            kwargs[RENAMED] = past_key_values
        return original(*args, **kwargs)

    extra = inspect.Parameter(PEFT_NAME, inspect.Parameter.KEYWORD_ONLY, default=None)
    fixed = [p for p in params if p.kind is not inspect.Parameter.VAR_KEYWORD]
    forward.__signature__ = inspect.signature(original).replace(  # type: ignore[attr-defined]
        parameters=[*fixed, extra, *variadic]
    )
    # An instance attribute: nn.Module.__call__ and peft's signature check both find it.
    model.forward = forward
    return model
