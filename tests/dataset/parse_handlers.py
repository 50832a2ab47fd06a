"""Jobs for the parsing-process tests: imported by name in the child, so kept light."""

from __future__ import annotations

import os
import resource
import signal
import time
from typing import Any

from app.core.errors import InvalidInput, PayloadTooLarge

MIB = 1024 * 1024


def whoami(payload: dict[str, Any]) -> dict[str, Any]:
    return {"pid": os.getpid(), "echo": payload}


def refuse(payload: dict[str, Any]) -> dict[str, Any]:
    raise InvalidInput("row 3: column 'text' is empty", code="empty_cell", row=3, field="text")


def too_large(payload: dict[str, Any]) -> dict[str, Any]:
    raise PayloadTooLarge("decodes to more than 5 bytes", code="decoded_too_large", limit=5)


def allocate(payload: dict[str, Any]) -> dict[str, Any]:
    """Hold `mib` MiB (touched, so resident) for a moment."""
    block = bytearray(payload["mib"] * MIB)
    block[::4096] = b"x" * len(block[::4096])
    return {"pid": os.getpid(), "held": len(block)}


def allocate_and_wrap(payload: dict[str, Any]) -> dict[str, Any]:
    """A parser that turns its MemoryError into a 'bad file' error, as pyarrow's callers do."""
    try:
        allocate(payload)
    except MemoryError:
        raise InvalidInput("could not read the rows", code="invalid_rows") from None
    return {}


def die(payload: dict[str, Any]) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGKILL)
    return {}


def sleep(payload: dict[str, Any]) -> dict[str, Any]:
    time.sleep(payload["seconds"])
    return {"pid": os.getpid()}


def crash(payload: dict[str, Any]) -> dict[str, Any]:
    raise ValueError("a bug in a parser")


def fill_and_hang(payload: dict[str, Any]) -> dict[str, Any]:
    """Take address space until none is left, then hang on to it without a word: what CPython
    does when it cannot even raise its MemoryError."""
    held = []
    try:
        while True:
            held.append(bytearray(MIB))
    except MemoryError:
        pass
    time.sleep(payload["seconds"])
    return {"held": len(held)}


def cpu_limit(payload: dict[str, Any]) -> dict[str, Any]:
    soft, _ = resource.getrlimit(resource.RLIMIT_CPU)
    used = resource.getrusage(resource.RUSAGE_SELF)
    return {"soft": soft, "used": used.ru_utime + used.ru_stime}


def out_of_cpu(payload: dict[str, Any]) -> dict[str, Any]:
    os.kill(os.getpid(), signal.SIGXCPU)
    time.sleep(5)
    return {}
