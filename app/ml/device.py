"""Device choice (cuda, then mps, then cpu) and CPU threads. Imports torch only when called."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def select_device() -> torch.device:
    """The fastest device this process can use."""
    import torch

    if torch.cuda.is_available():
        return torch.device("cuda")
    mps = getattr(torch.backends, "mps", None)
    if mps is not None and mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def thread_count(configured: int | None) -> int:
    """The configured thread count, or every core this process may run on."""
    if configured is not None and configured > 0:
        return configured
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not Linux
        return max(1, os.cpu_count() or 1)


def set_torch_threads(count: int) -> None:
    """Intra-op threads for this process (and for the calling thread's OpenMP team)."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def bf16_supported(device: torch.device) -> bool:
    """Mixed precision only where the hardware has it (on CPU bf16 matmul is ~150x slower)."""
    import torch

    return device.type == "cuda" and torch.cuda.is_bf16_supported()
