"""Inference batching shared by the tasks: similar lengths together, answers back in input order."""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator, Sequence
from typing import TypeVar

T = TypeVar("T")


def sorted_batches(
    items: Sequence[T],
    *,
    batch_size: int,
    length: Callable[[T], int],
    kind: Callable[[T], Hashable] = lambda _: None,
) -> Iterator[list[int]]:
    """Yield lists of input indexes: one `kind` per batch, lengths close, so padding stays small."""
    order = sorted(range(len(items)), key=lambda i: (str(kind(items[i])), length(items[i])))
    batch: list[int] = []
    for i in order:
        if batch and (len(batch) == batch_size or kind(items[i]) != kind(items[batch[0]])):
            yield batch
            batch = []
        batch.append(i)
    if batch:
        yield batch
