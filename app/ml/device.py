"""Device choice (cuda, then mps, then cpu) and CPU threads. Imports torch only when called."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch


def nvidia_gpu_present() -> bool:
    """Whether this machine has an NVIDIA GPU driver, found without importing torch or touching
    CUDA (for processes that must not: the worker's parent)."""
    from pathlib import Path
    from shutil import which

    return Path("/proc/driver/nvidia/version").exists() or which("nvidia-smi") is not None


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


def model_thread_count(configured: int | None, torch_threads: int, *, most: int = 4) -> int:
    """Model-executing threads: as configured, or one per `torch_threads` cores (1 to `most`)."""
    if configured is not None and configured > 0:
        return configured
    return max(1, min(most, thread_count(None) // max(1, torch_threads)))


def set_torch_threads(count: int) -> None:
    """Intra-op threads for this process (and for the calling thread's OpenMP team)."""
    import torch

    if torch.get_num_threads() != count:
        torch.set_num_threads(count)


def visible_device_type() -> str:
    """The type of select_device() ("cuda", "mps" or "cpu"), for a process that will not train."""
    return select_device().type


def precision_problem(precision: str, device: torch.device) -> str | None:
    """Why `precision` ("no", "bf16", "fp16") cannot train on `device`, or None when it can."""
    if precision == "no":
        return None
    if device.type != "cuda":
        return f"{precision} mixed precision needs a CUDA GPU; this worker trains on {device.type}"
    if precision == "bf16" and not bf16_supported(device):
        import torch

        name = torch.cuda.get_device_name(device)
        return f"bf16 needs a GPU with bfloat16 support (Ampere or newer); this worker has {name}"
    return None


def bf16_supported(device: torch.device) -> bool:
    """Mixed precision only where the hardware has it (on CPU bf16 matmul is ~150x slower, and
    a pre-Ampere GPU only emulates it)."""
    import torch

    if device.type != "cuda":
        return False
    try:
        return bool(torch.cuda.is_bf16_supported(including_emulation=False))
    except TypeError:  # a torch from before emulation (and the argument) existed
        return bool(torch.cuda.is_bf16_supported())
