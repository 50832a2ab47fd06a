"""LoRA adapters that share one copy of their base model's weights.

Every registered LoRA model of one base (same task, same base, same number of labels) is loaded as
a named adapter of one peft model: the base weights are held once, each adapter adds only its
low-rank matrices and its task head. Rows of different adapters run in one batch: peft's
`adapter_names` picks each row's adapter (and head) inside the forward.

Each row's adapter reaches the LoRA layers and the saved head through a per-thread value read by
forward hooks installed once (`AdapterRouting`), not peft's own `adapter_names` hooks, which it adds
to the shared modules for the length of a call: with those, two model threads running one base at
once would see each other's rows. So several model threads run one base at the same time.

Forwards hold the base's lock shared; adding or removing an adapter holds it alone, so a batch
never sees a half-loaded adapter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from app.predict.runtime import ModelRunner

if TYPE_CHECKING:
    import torch

log = logging.getLogger("tuneserve.predict")


class ReadWriteLock:
    """Many readers at once (forwards) or one writer (adding or removing an adapter); a waiting
    writer goes before readers that come after it."""

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._readers = 0
        self._writing = False
        self._writers_waiting = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writing or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if self._readers == 0:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._writers_waiting += 1
            while self._writing or self._readers:
                self._cond.wait()
            self._writers_waiting -= 1
            self._writing = True
        try:
            yield
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()


class AdapterRouting:
    """Which adapter each row of the calling thread's forward uses.

    A forward pre-hook on every LoRA layer and saved module (the task head) of the peft model
    passes them the calling thread's `adapter_names`, as peft's own hooks would for one call.
    `install` hooks modules an adapter load added; `rows(names)` sets the names for a forward.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._hooked: set[int] = set()

    def install(self, peft_model: Any) -> None:
        from peft.tuners.lora import LoraLayer
        from peft.utils.other import AuxiliaryTrainingWrapper

        for module in peft_model.modules():
            if isinstance(module, LoraLayer | AuxiliaryTrainingWrapper) and (
                id(module) not in self._hooked
            ):
                hooked: Any = module  # LoraLayer is a mixin of nn.Module layers
                hooked.register_forward_pre_hook(self._inject, with_kwargs=True)
                self._hooked.add(id(module))

    def _inject(
        self, module: Any, args: tuple[Any, ...], kwargs: dict[str, Any]
    ) -> tuple[tuple[Any, ...], dict[str, Any]]:
        names = getattr(self._local, "names", None)
        if names is not None:
            kwargs["adapter_names"] = names
        return args, kwargs

    @contextmanager
    def rows(self, names: list[str]) -> Iterator[None]:
        self._local.names = names
        try:
            yield
        finally:
            self._local.names = None


@dataclass
class SharedBase:
    """One base model in memory and the adapters loaded on it."""

    key: Hashable
    label: str
    peft_model: Any
    runner: ModelRunner
    base_bytes: int
    lock: ReadWriteLock = field(default_factory=ReadWriteLock)
    routing: AdapterRouting = field(default_factory=AdapterRouting)
    adapters: dict[str, int] = field(default_factory=dict)  # name -> bytes it added


def tensor_bytes(module: torch.nn.Module) -> int:
    """Bytes of a module's parameters, buffers and other stored tensors, such as a dynamically
    quantized layer's packed int8 weights, which are neither (shared tensors counted once)."""
    import torch

    def stored() -> Iterator[torch.Tensor]:
        yield from module.parameters()
        yield from module.buffers()
        for value in module.state_dict(keep_vars=True).values():
            if isinstance(value, torch.Tensor):
                yield value
            elif isinstance(value, tuple):  # packed params: (weight, bias)
                yield from (v for v in value if isinstance(v, torch.Tensor))

    seen: set[int] = set()
    total = 0
    for tensor in stored():
        if tensor.data_ptr() not in seen:
            seen.add(tensor.data_ptr())
            total += tensor.numel() * tensor.element_size()
    return total


class SharedBases:
    """The shared bases of one API process, by key."""

    def __init__(self) -> None:
        self._bases: dict[Hashable, SharedBase] = {}
        self._lock = threading.Lock()
        # Loads are rare and slow; one at a time keeps two first adapters of a base from each
        # loading the base.
        self._load_lock = threading.Lock()

    def attach(
        self,
        key: Hashable,
        *,
        label: str,
        adapter: str,
        path: Path,
        load_base: Callable[[], torch.nn.Module],
        make_runner: Callable[[Any, ReadWriteLock, AdapterRouting], ModelRunner],
    ) -> tuple[SharedBase, int]:
        """Load `adapter` onto the base for `key` (loading the base first if needed); returns the
        base and the bytes the adapter added."""
        from peft import PeftModel

        with self._load_lock:
            with self._lock:
                base = self._bases.get(key)
            if base is None:
                model = load_base()
                base_bytes = tensor_bytes(model)
                peft_model = PeftModel.from_pretrained(
                    model, str(path), adapter_name=adapter, is_trainable=False
                )
                peft_model.eval()
                lock, routing = ReadWriteLock(), AdapterRouting()
                routing.install(peft_model)
                base = SharedBase(
                    key=key,
                    label=label,
                    peft_model=peft_model,
                    runner=make_runner(peft_model, lock, routing),
                    base_bytes=base_bytes,
                    lock=lock,
                    routing=routing,
                )
                added = tensor_bytes(peft_model) - base_bytes
                base.adapters[adapter] = added
                with self._lock:
                    self._bases[key] = base
                log.info("shared base %s loaded with adapter %s", label, adapter)
                return base, added
            with base.lock.writing():
                before = tensor_bytes(base.peft_model)
                if adapter not in base.adapters:
                    base.peft_model.load_adapter(
                        str(path), adapter_name=adapter, is_trainable=False
                    )
                    base.peft_model.eval()
                    base.routing.install(base.peft_model)  # layers this adapter added
                    base.adapters[adapter] = tensor_bytes(base.peft_model) - before
                return base, base.adapters[adapter]

    def detach(self, base: SharedBase, adapter: str) -> None:
        """Remove an adapter; the base goes when its last adapter does."""
        with base.lock.writing():
            if adapter not in base.adapters:
                return
            if len(base.adapters) == 1:
                base.adapters.clear()
                with self._lock:
                    if self._bases.get(base.key) is base:
                        del self._bases[base.key]
                log.info("shared base %s unloaded with its last adapter %s", base.label, adapter)
                return
            base.peft_model.delete_adapter(adapter)
            del base.adapters[adapter]

    def memory(self) -> dict[str, int]:
        """Bytes of each loaded base's own weights, by label."""
        with self._lock:
            return {f"base:{b.label}": b.base_bytes for b in self._bases.values()}

    def adapters_of(self, key: Hashable) -> list[str]:
        with self._lock:
            base = self._bases.get(key)
        return sorted(base.adapters) if base is not None else []
