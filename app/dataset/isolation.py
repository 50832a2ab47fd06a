"""Run upload parsing in separate processes, each job under a memory limit and a time limit.

An upload is parsed, validated and written out by a warm child process (started with `spawn`: the
API has threads, so never `fork`) whose address space is capped with RLIMIT_AS for each job. A file
that needs more memory than that, or more time, costs the child, never the API process that serves
/predict: the child is replaced and the client gets a 413 naming the setting.

Requests and replies cross the pipe as JSON, not pickles: the child reads hostile files, and what it
answers is data, never code the API process would run.
"""

from __future__ import annotations

import atexit
import ctypes
import errno
import importlib
import json
import logging
import math
import multiprocessing
import os
import resource
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from typing import Any

from app.core.config import Settings
from app.core.errors import PayloadTooLarge, ServiceError, Unavailable

log = logging.getLogger("tuneserve.parsers")

Handler = Callable[[dict[str, Any]], dict[str, Any]]

# Run by every child before its first job ("module" is imported, "module:function" called), so
# that a job pays for parsing only and measures its memory from a settled process.
WARM_UP = ("app.dataset.service:warm_up",)
# Starting a child imports pyarrow and datasets: seconds, more on a loaded machine.
START_TIMEOUT_SECONDS = 120.0
# How often the API looks at a busy child's size; one held within AT_LIMIT_BYTES of its memory
# limit for PINNED_SECONDS has run out of memory, whether or not it could say so.
WATCH_SECONDS = 0.25
AT_LIMIT_BYTES = 8 * 1024 * 1024
PINNED_SECONDS = 2.0
# How often a child looks whether the API process that started it is still there.
PARENT_CHECK_SECONDS = 1.0
# A child whose address space ends a job this much above its size after warming up is replaced:
# what a job left mapped (allocator caches) counts against the next job's limit, so this bounds
# how much less than upload_parse_memory_bytes a job may find.
RECYCLE_GROWTH_BYTES = 64 * 1024 * 1024


class ParserTimeout(Exception):
    """The child did not answer within the time limit (it has been killed)."""


class ParserDied(Exception):
    """The child ended without answering: killed for memory, or crashed (it has been reaped)."""

    def __init__(self, exitcode: int | None) -> None:
        super().__init__(f"the parsing process ended with exit code {exitcode}")
        self.exitcode = exitcode


class ParserOutOfMemory(Exception):
    """The job hit the child's memory limit (MemoryError); the child is replaced."""


def run(handler: Handler, payload: dict[str, Any], *, settings: Settings) -> dict[str, Any]:
    """`handler(payload)` in a parsing process; its ServiceError re-raised here as the same type.

    Past the memory or time limit: PayloadTooLarge (413) naming the setting.
    """
    memory = settings.upload_parse_memory_bytes
    timeout = settings.upload_parse_timeout_seconds
    try:
        return shared_pool().call(
            handler,
            payload,
            memory_bytes=memory,
            timeout_seconds=timeout,
            slots=settings.upload_parse_workers,
        )
    except ParserDied as exc:
        if exc.exitcode != -signal.SIGXCPU:
            raise _out_of_memory_error(memory, exc) from None
        raise _timeout_error(timeout) from None
    except ParserOutOfMemory as exc:
        raise _out_of_memory_error(memory, exc) from None
    except ParserTimeout:
        raise _timeout_error(timeout) from None


def _out_of_memory_error(memory: int, exc: Exception) -> PayloadTooLarge:
    how = ""
    if isinstance(exc, ParserDied):
        how = f" (the parsing process was killed: {_ended(exc)})"
        log.warning("an upload parsing process ended during a job: %s", _ended(exc))
    return PayloadTooLarge(
        f"the file needs more memory to parse than the server allows: {memory} bytes "
        f"(upload_parse_memory_bytes){how}; split it into smaller datasets",
        code="parse_memory",
        field="file",
        limit=memory,
    )


def _timeout_error(timeout: float) -> PayloadTooLarge:
    return PayloadTooLarge(
        f"parsing the file took longer than the server allows: {timeout:g} seconds "
        f"(upload_parse_timeout_seconds); split it into smaller datasets",
        code="parse_timeout",
        field="file",
        limit=timeout,
    )


def _ended(exc: ParserDied) -> str:
    code = exc.exitcode
    if code is not None and code < 0:
        try:
            return signal.Signals(-code).name
        except ValueError:
            return f"signal {-code}"
    return f"exit code {code}"


# --- the API side ---------------------------------------------------------------------------


class _Worker:
    """One child process and our end of its pipe."""

    def __init__(self, process: BaseProcess, conn: Connection) -> None:
        self.process = process
        self.conn = conn
        # The child's address space once warmed up: a job's limit is this plus its budget.
        self.settled: int | None = None

    @classmethod
    def start(cls, warm: tuple[str, ...]) -> _Worker:
        ctx = multiprocessing.get_context("spawn")
        ours, theirs = ctx.Pipe()
        process = ctx.Process(
            target=_serve, args=(theirs, warm), name="tuneserve-upload-parser", daemon=True
        )
        process.start()
        theirs.close()
        worker = cls(process, ours)
        try:
            if not ours.poll(START_TIMEOUT_SECONDS):
                raise TimeoutError(f"not ready within {START_TIMEOUT_SECONDS:g} s")
            worker.settled = json.loads(ours.recv_bytes())["settled"]
        except (EOFError, OSError, TimeoutError) as exc:
            worker.kill()
            log.error("an upload parsing process did not start: %s", exc)
            raise Unavailable(
                "the upload parser could not be started; try again shortly",
                code="parser_unavailable",
            ) from None
        return worker

    def call(self, message: bytes, *, memory_bytes: int, timeout_seconds: float) -> dict[str, Any]:
        try:
            self.conn.send_bytes(message)
            self._wait(memory_bytes, timeout_seconds)
            reply: dict[str, Any] = json.loads(self.conn.recv_bytes())
        except (EOFError, OSError):
            self.kill()
            raise ParserDied(self.process.exitcode) from None
        return reply

    def _wait(self, memory_bytes: int, timeout_seconds: float) -> None:
        """Until the answer is there; past the time limit, or stuck at the memory limit: killed.

        CPython can spin forever on a MemoryError it cannot even raise (3.11 allocates while
        unwinding to a handler), holding its GIL, so the child cannot tell; its size can.
        """
        deadline = time.monotonic() + timeout_seconds
        limit = None if self.settled is None else self.settled + memory_bytes
        pinned = 0.0
        while not self.conn.poll(max(min(WATCH_SECONDS, deadline - time.monotonic()), 0)):
            if time.monotonic() >= deadline:
                self.kill()
                raise ParserTimeout
            size = vm_bytes(self.process.pid or 0)
            at_limit = limit is not None and size is not None and size > limit - AT_LIMIT_BYTES
            pinned = pinned + WATCH_SECONDS if at_limit else 0.0
            if pinned >= PINNED_SECONDS:
                self.kill()
                raise ParserOutOfMemory

    def stop(self) -> None:
        """Ask the child to leave (end of its pipe), and make sure it does."""
        self.conn.close()
        self.process.join(5)
        if self.process.exitcode is None:
            self.kill()

    def kill(self) -> None:
        self.process.kill()
        self.process.join()
        self.conn.close()


class ParserPool:
    """Warm parsing processes, started when first needed, at most `slots` busy at once."""

    def __init__(self, warm: tuple[str, ...] = WARM_UP) -> None:
        self._warm = warm
        self._cond = threading.Condition()
        self._idle: list[_Worker] = []
        self._busy = 0
        self._closed = False

    def call(
        self,
        handler: Handler,
        payload: dict[str, Any],
        *,
        memory_bytes: int,
        timeout_seconds: float,
        slots: int,
    ) -> dict[str, Any]:
        """Run `handler(payload)` in a child; raises what the handler raised, or a Parser* error."""
        message = json.dumps(
            {
                "handler": f"{handler.__module__}:{handler.__qualname__}",
                "payload": payload,
                "memory_bytes": memory_bytes,
                "timeout_seconds": timeout_seconds,
            }
        ).encode()
        worker = self._checkout(slots)
        keep = False
        try:
            reply = worker.call(message, memory_bytes=memory_bytes, timeout_seconds=timeout_seconds)
            keep = not reply.get("retire", False)
        finally:
            self._checkin(worker, keep=keep, slots=slots)
        return _unwrap(reply)

    def _checkout(self, slots: int) -> _Worker:
        with self._cond:
            while self._busy >= slots:
                self._cond.wait()
            self._busy += 1
            idle = self._idle.pop() if self._idle else None
        if idle is not None:
            return idle
        try:
            return _Worker.start(self._warm)
        except BaseException:
            with self._cond:
                self._busy -= 1
                self._cond.notify()
            raise

    def _checkin(self, worker: _Worker, *, keep: bool, slots: int) -> None:
        alive = worker.process.exitcode is None
        with self._cond:
            self._busy -= 1
            self._cond.notify()
            if keep and alive and not self._closed and len(self._idle) < slots:
                self._idle.append(worker)
                return
        if alive:
            worker.stop()

    def close(self) -> None:
        """Stop the idle children; busy ones stop when their job ends."""
        with self._cond:
            self._closed = True
            idle, self._idle = self._idle, []
        for worker in idle:
            worker.stop()

    @property
    def pids(self) -> list[int]:
        """The idle children's process ids (for tests and benchmarks)."""
        with self._cond:
            return [w.process.pid for w in self._idle if w.process.pid is not None]


def _unwrap(reply: dict[str, Any]) -> dict[str, Any]:
    if "ok" in reply:
        result: dict[str, Any] = reply["ok"]
        return result
    if "error" in reply:
        raise _rebuild(reply["error"])
    if "memory" in reply:
        raise ParserOutOfMemory
    raise RuntimeError(f"the upload parsing process failed:\n{reply.get('crash', reply)}")


def _error_types() -> dict[str, type[ServiceError]]:
    found: dict[str, type[ServiceError]] = {}
    todo: list[type[ServiceError]] = [ServiceError]
    while todo:
        cls = todo.pop()
        found[f"{cls.__module__}.{cls.__qualname__}"] = cls
        todo.extend(cls.__subclasses__())
    return found


def _rebuild(error: dict[str, Any]) -> ServiceError:
    """The child's ServiceError as the same type here, with its code, message and details."""
    cls = _error_types().get(error["type"])
    exc = (cls or ServiceError).__new__(cls or ServiceError)
    # The base initializer: a subclass's own may want arguments the details already hold.
    ServiceError.__init__(
        exc, error["message"], code=error["code"], headers=error["headers"], **error["details"]
    )
    if cls is None:
        exc.status_code = error["status"]
    return exc


# --- one process per API process: held by the apps that serve ---------------------------------

_state = threading.Lock()
_pool: ParserPool | None = None
_holders = 0
_atexit_registered = False


def shared_pool() -> ParserPool:
    """This process's pool, started on first use."""
    global _pool, _atexit_registered
    with _state:
        if _pool is None:
            _pool = ParserPool()
            if not _atexit_registered:
                atexit.register(_close_at_exit)
                _atexit_registered = True
        return _pool


@contextmanager
def held() -> Iterator[None]:
    """Keep the pool while the block runs (an app's lifespan); the last holder out closes it."""
    global _pool, _holders
    with _state:
        _holders += 1
    try:
        yield
    finally:
        with _state:
            _holders -= 1
            closing = _pool if _holders == 0 else None
            if closing is not None:
                _pool = None
        if closing is not None:
            closing.close()


def _close_at_exit() -> None:
    global _pool
    with _state:
        closing, _pool = _pool, None
    if closing is not None:
        closing.close()


# --- the child side -------------------------------------------------------------------------


def vm_bytes(pid: int | str = "self", field: str = "VmSize") -> int | None:
    """A /proc/<pid>/status figure in bytes (VmSize, VmRSS, VmHWM), or None where there is none."""
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(f"{field}:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


def _limit_cpu(seconds: float | None) -> None:
    """Allow `seconds` more CPU time (None: no limit)."""
    _, hard = resource.getrlimit(resource.RLIMIT_CPU)
    soft = hard
    if seconds is not None:
        used = resource.getrusage(resource.RUSAGE_SELF)
        soft = math.ceil(used.ru_utime + used.ru_stime + seconds) + 1
        if hard != resource.RLIM_INFINITY:
            soft = min(soft, hard)
    resource.setrlimit(resource.RLIMIT_CPU, (soft, hard))


def _limit_address_space(size: int | None) -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_AS)
    if size is None or (hard != resource.RLIM_INFINITY and size > hard):
        size = hard
    resource.setrlimit(resource.RLIMIT_AS, (size, hard))


def _leave_with(parent: int) -> None:
    """End this process, even in the middle of a job, once the API process that started it is
    gone (killed, so it could not say goodbye): nobody is waiting for the answer."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        os._exit(1)

    threading.Thread(target=watch, name="parent-watch", daemon=True).start()


def _glibc() -> Any:
    """The C library's malloc controls where it is glibc, else None."""
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.malloc_trim, libc.mallopt  # noqa: B018  (both must exist)
    except (OSError, AttributeError):
        return None
    return libc


def _prepare(warm: tuple[str, ...], libc: Any) -> None:
    # Ctrl-C reaches the whole process group: the API decides when its children stop.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    # The system allocator returns what it frees and reserves no address space ahead (mimalloc
    # reserves a GiB at a time), so RLIMIT_AS measures what a job really uses. Arrow reads this
    # when it loads; set_memory_pool below covers a pyarrow loaded before.
    os.environ["ARROW_DEFAULT_MEMORY_POOL"] = "system"
    if libc is not None:
        # One malloc arena (M_ARENA_MAX): each thread's own would reserve 64 MiB of addresses.
        libc.mallopt(-8, 1)
    import pyarrow as pa

    pa.set_memory_pool(pa.system_memory_pool())
    # One Arrow thread: a job takes one core.
    pa.set_cpu_count(1)
    pa.set_io_thread_count(1)
    for name in warm:
        if ":" in name:
            _resolve(name)()
        else:
            _resolve(name)


def _resolve(name: str) -> Any:
    """ "module" imports the module; "module:function" imports it and calls the function."""
    module, _, attribute = name.partition(":")
    target: Any = importlib.import_module(module)
    if not attribute:
        return target
    for part in attribute.split("."):
        target = getattr(target, part)
    return target


def _serve(conn: Connection, warm: tuple[str, ...]) -> None:
    """The child's loop: one JSON job in, one JSON reply out, until the API closes the pipe."""
    libc = _glibc()
    _prepare(warm, libc)
    _leave_with(os.getppid())
    # Each job's limit: this size (imports done, warmed up) plus the job's memory budget.
    settled = vm_bytes()
    conn.send_bytes(json.dumps({"settled": settled}).encode())
    while True:
        try:
            request = json.loads(conn.recv_bytes())
        except (EOFError, OSError):
            return
        if settled is not None:
            _limit_address_space(settled + int(request["memory_bytes"]))
        # The kernel's own stop (SIGXCPU) for a job the API no longer watches: the API's wall
        # clock, which CPU time never outruns, answers first.
        _limit_cpu(float(request["timeout_seconds"]))
        try:
            reply = _run(request)
        finally:
            _limit_address_space(None)
            _limit_cpu(None)
        if libc is not None:
            libc.malloc_trim(0)  # hand back what the job freed before measuring what is left
        now = vm_bytes()
        if settled is not None and now is not None and now - settled > RECYCLE_GROWTH_BYTES:
            reply["retire"] = True
        conn.send_bytes(json.dumps(reply, default=str).encode())
        if reply.get("retire"):
            return


def _run(request: dict[str, Any]) -> dict[str, Any]:
    outcome: tuple[str, Any]
    try:
        outcome = ("ok", _resolve(request["handler"])(request["payload"]))
    except MemoryError:
        outcome = ("memory", None)
    except ServiceError as exc:
        # A parser that wraps the error it caught (pyarrow's ArrowMemoryError is also a
        # MemoryError) still ran out of memory; its message would blame the file's contents.
        outcome = ("memory", None) if _out_of_memory(exc) else ("error", _describe(exc))
    except Exception as exc:
        outcome = ("memory", None) if _out_of_memory(exc) else ("crash", traceback.format_exc())
    # Built only here, once the failed job's frames (and what they held) are gone.
    kind, value = outcome
    if kind == "ok":
        return {"ok": value}
    if kind == "error":
        return {"error": value}
    return {kind: value if value is not None else True, "retire": True}


def _out_of_memory(exc: BaseException) -> bool:
    """Whether a failure came from the memory limit, however the code on the way reported it."""
    chain: list[BaseException] = []
    link: BaseException | None = exc
    while link is not None and link not in chain:
        chain.append(link)
        link = link.__cause__ or link.__context__
    return any(_memory_failure(e) for e in chain)


def _memory_failure(exc: BaseException) -> bool:
    if isinstance(exc, MemoryError):
        return True
    if isinstance(exc, OSError):
        return exc.errno == errno.ENOMEM
    # C code that lost its MemoryError ("error return without exception set"), a thread or a
    # buffer that could not be allocated, as CPython, pyarrow and dill report them.
    text = str(exc)
    return isinstance(exc, SystemError) or any(
        words in text
        for words in ("can't start new thread", "bad_alloc", "Out of memory", "malloc of size")
    )


def _describe(exc: ServiceError) -> dict[str, Any]:
    cls = type(exc)
    return {
        "type": f"{cls.__module__}.{cls.__qualname__}",
        "status": exc.status_code,
        "code": exc.code,
        "message": exc.message,
        "headers": exc.headers,
        "details": exc.details,
    }
