"""Write-behind buffering for zarr stores: :class:`BufferedStore`.

``BufferedStore`` wraps any zarr v3 store. ``set`` queues the value in a buffer bounded in
bytes and returns; background tasks on zarr's IO event loop write the queue to the wrapped store
with bounded concurrency, retrying transient errors. Reads see queued writes, ``flush()`` is a
barrier, and background failures are raised to the caller instead of being lost.

The machinery lives in :class:`_WriteBehind`, one per buffer; ``BufferedStore`` objects are views
on it (``with_read_only`` returns a view on the same buffer, so zarr's read-only copies made for
``mode="r"`` see queued writes too).
"""

from __future__ import annotations

import asyncio
import atexit
import builtins
import errno
import logging
import math
import os
import random
import re
import sys
import threading
import time
import warnings
import weakref
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, ParamSpec, Self, TypeVar, cast

import numpy as np
from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.storage import FsspecStore, LocalStore

from .._compat import (
    Buffer,
    WrapperStore,
    default_buffer_prototype,
    io_loop,
    running_io_loop,
    sync,
)
from .._store import resolve_store
from ..errors import ReadOnlyStoreError, WriteFailedError, ZarrWriteError

if TYPE_CHECKING:
    from collections.abc import (
        AsyncGenerator,
        AsyncIterator,
        Awaitable,
        Callable,
        Coroutine,
        Iterable,
        Mapping,
    )
    from types import TracebackType

    from zarr.abc.store import ByteRequest

    from .._compat import BufferPrototype
    from .._store import StoreLike

__all__ = ["BufferedStore", "BufferedStoreStats", "is_transient_error"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_MIB: Final = 1 << 20
_MAX_BACKOFF_S: Final = 30.0
_EXIT_FLUSH_TIMEOUT_S: Final = 60.0
_MAX_KEYS_IN_MESSAGE: Final = 10
# zarr's LocalStore writes ``<key-without-suffix>.<uuid4 hex>.partial`` and renames it into place;
# such temporary files must never be listed as keys.
_PARTIAL_FILE: Final = re.compile(r"\.[0-9a-f]{32}\.partial$")
# OSError errnos for which retrying cannot help.
_PERMANENT_ERRNOS: Final = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.EEXIST,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
    }
)
# S3 error codes worth retrying (throttling and server-side trouble).
_TRANSIENT_S3_CODES: Final = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def is_transient_error(exc: BaseException) -> bool:
    """Whether an error raised by a store operation is worth retrying.

    Transient: connection problems and timeouts (``ConnectionError``, ``TimeoutError``, which
    includes ``asyncio.TimeoutError``), botocore connection/HTTP errors and S3 throttling or 5xx
    responses, aiohttp connection/payload errors and 5xx/429 responses, and other ``OSError``
    (``EIO`` ...) unless the errno says retrying cannot help.

    Permanent: ``PermissionError``, ``FileNotFoundError`` (a missing bucket or vanished store
    root), ``FileExistsError``, ``IsADirectoryError``/``NotADirectoryError``, ``ENOSPC``/``EROFS``
    and friends, ``ValueError``/``TypeError`` (bad input, read-only store) and everything else.

    Parameters
    ----------
    exc
        The exception raised by the wrapped store.

    Returns
    -------
    bool
    """
    if isinstance(
        exc,
        ZarrWriteError  # our own verdicts (a WriteFailedError already had its retries)
        | PermissionError
        | FileNotFoundError
        | FileExistsError
        | IsADirectoryError
        | NotADirectoryError,
    ):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    # Only look at libraries that are already imported: if a module was never imported, no
    # exception of its types can exist.
    botocore_exc = sys.modules.get("botocore.exceptions")
    if botocore_exc is not None:
        if isinstance(exc, botocore_exc.ConnectionError | botocore_exc.HTTPClientError):
            return True
        if isinstance(exc, botocore_exc.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return str(error.get("Code", "")) in _TRANSIENT_S3_CODES or status >= 500
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            return True
        if isinstance(exc, aiohttp.ClientResponseError):
            return bool(exc.status >= 500 or exc.status == 429)
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS
    return False


def _owned(value: Buffer) -> Buffer:
    """Return ``value``, or a private copy of it when its memory could change after ``set``.

    zarr never reuses a Buffer it hands to ``Store.set``, but the Buffer does not always own its
    memory: for an uncompressed complete chunk (no compressor, only the ``bytes`` codec) it is a
    view of the array the caller passed to ``Array.__setitem__``, which the caller is free to
    modify as soon as the write returns, while the value is still queued here. Buffers backed by
    an immutable ``bytes`` object (the output of every compressor and all metadata documents)
    cannot change and are queued without a copy; anything else is copied once.
    """
    data = value.as_array_like()
    if isinstance(data, np.ndarray):
        base: object = data
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, bytes):
            return value
    return type(value).from_array_like(cast("Any", data).copy())  # a cupy array stays on device


def _slice(value: Buffer, byte_range: ByteRequest | None) -> Buffer:
    """The part of a queued value asked for by ``byte_range`` (zarr's ByteRequest semantics)."""
    if byte_range is None:
        return value
    n = len(value)
    if isinstance(byte_range, RangeByteRequest):
        start, stop = byte_range.start, byte_range.end
    elif isinstance(byte_range, OffsetByteRequest):
        start, stop = byte_range.offset, n
    elif isinstance(byte_range, SuffixByteRequest):
        start, stop = max(0, n - byte_range.suffix), n
    else:
        raise TypeError(f"Unexpected byte_range, got {byte_range}.")
    return value[start:stop]


def _dir_prefix(prefix: str) -> str:
    """``"foo"`` and ``"foo/"`` -> ``"foo/"``; ``""`` and ``"/"`` -> ``""``."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _on_loop(loop: asyncio.AbstractEventLoop | None) -> bool:
    if loop is None:
        return False
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# --------------------------------------------------------------------------------------------
# Configuration, stats, bookkeeping records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BufferConfig:
    max_buffer_bytes: int
    concurrency: int
    retries: int
    retry_backoff: float


def _parse_config(
    max_buffer_mb: float, concurrency: int, retries: int, retry_backoff: float
) -> _BufferConfig:
    if isinstance(max_buffer_mb, bool) or not isinstance(max_buffer_mb, int | float):
        raise TypeError(f"max_buffer_mb must be a number of MiB, got {max_buffer_mb!r}")
    if not max_buffer_mb > 0 or not math.isfinite(max_buffer_mb):
        raise ValueError(f"max_buffer_mb must be a positive number of MiB, got {max_buffer_mb!r}")
    if isinstance(concurrency, bool) or not isinstance(concurrency, int) or concurrency < 1:
        raise ValueError(f"concurrency must be an integer >= 1, got {concurrency!r}")
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be an integer >= 0, got {retries!r}")
    if not isinstance(retry_backoff, int | float) or not 0 <= retry_backoff < math.inf:
        raise ValueError(f"retry_backoff must be a number of seconds >= 0, got {retry_backoff!r}")
    return _BufferConfig(
        max_buffer_bytes=max(1, int(max_buffer_mb * _MIB)),
        concurrency=concurrency,
        retries=retries,
        retry_backoff=float(retry_backoff),
    )


@dataclass(frozen=True, slots=True)
class BufferedStoreStats:
    """A snapshot of a :class:`BufferedStore`'s counters (shared by all its views).

    Attributes
    ----------
    bytes_queued
        Bytes accepted by ``set`` since creation.
    bytes_written
        Bytes written to the wrapped store (less than ``bytes_queued`` when writes of the same key
        were coalesced or failed).
    puts
        Successful ``set`` calls on the wrapped store.
    deletes
        Successful ``delete`` calls on the wrapped store.
    coalesced
        Queued writes superseded before being written (by a newer write of the same key, or
        by ``delete_dir``/``clear``).
    retries
        Retried operations on the wrapped store (transient errors).
    failures
        Operations that failed for good (permanent error, or transient after all retries).
    buffered_bytes
        Bytes held right now (queued or being written).
    peak_buffered_bytes
        Largest ``buffered_bytes`` seen.
    pending_keys
        Keys queued or being written right now.
    """

    bytes_queued: int
    bytes_written: int
    puts: int
    deletes: int
    coalesced: int
    retries: int
    failures: int
    buffered_bytes: int
    peak_buffered_bytes: int
    pending_keys: int


@dataclass(slots=True, eq=False)
class _Op:
    """A queued write (``value``) or delete (``value is None``) of one key."""

    value: Buffer | None
    nbytes: int
    first_seq: int  # sequence number of the oldest write coalesced into this one
    store: Store  # the wrapped store to write through (the view's, which is writable)


_GONE: Final = _Op(None, 0, 0, cast("Store", None))  # "deleted", for keys under a delete_dir


@dataclass(frozen=True, slots=True)
class _Failure:
    key: str
    action: str
    error: BaseException
    attempts: int


def _failure_error(failures: list[_Failure], where: str) -> WriteFailedError:
    keys = [f.key for f in failures]
    shown = ", ".join(repr(k) for k in keys[:_MAX_KEYS_IN_MESSAGE])
    if len(keys) > _MAX_KEYS_IN_MESSAGE:
        shown += f" and {len(keys) - _MAX_KEYS_IN_MESSAGE} more"
    first = failures[0]
    err = WriteFailedError(
        f"{len(failures)} buffered write(s) to {where} failed and were NOT stored: {shown}. "
        f"First error ({first.action} of {first.key!r}, {first.attempts} attempt(s)): "
        f"{type(first.error).__name__}: {first.error}. Write these keys again (for example "
        "re-run the affected region write); BufferedStore.failed_keys lists every key whose "
        "latest write is not durable."
    )
    if len(failures) == 1:
        err.__cause__ = first.error
    else:
        err.__cause__ = BaseExceptionGroup(
            "errors of the failed background writes", [f.error for f in failures]
        )
    return err


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------

_LIVE: weakref.WeakSet[_WriteBehind] = weakref.WeakSet()


class _WriteBehind:
    """Queue, flusher tasks, failure log and counters of one buffer.

    All queue state is touched only from zarr's IO loop thread (``run`` forwards calls made on
    other loops), so it needs no locks. The failure log is also read from other threads (``close``,
    ``failed_keys``) and is guarded by ``_lock``.
    """

    def __init__(self, config: _BufferConfig, where: str, *, write_through: bool = False) -> None:
        self.config = config
        self.where = where
        self.write_through = write_through
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._unreported: list[_Failure] = []
        self._failed: dict[str, _Failure] = {}
        self._bytes_queued = 0
        self._bytes_written = 0
        self._puts = 0
        self._deletes = 0
        self._coalesced = 0
        self._retries = 0
        self._failures = 0
        self._peak = 0
        self._reset_runtime()

    def _reset_runtime(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pid = os.getpid()
        self._queued: dict[str, _Op] = {}  # insertion order == age order
        self._inflight: dict[str, _Op] = {}  # at most one op per key is being written
        self._fences: list[str] = []  # prefixes being deleted by delete_dir / clear
        self._workers: set[asyncio.Task[None]] = set()  # strong references to the tasks
        self._active_workers = 0
        self._space_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._progress_waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._buffered = 0
        self._seq = 0

    # -- event loop ---------------------------------------------------------------------------

    def loop(self) -> asyncio.AbstractEventLoop:
        """zarr's IO loop; resets the runtime state after a fork or a restart of that loop."""
        loop = io_loop()
        pid = os.getpid()
        if loop is self._loop and pid == self._pid:
            return loop
        with self._lock:
            if pid != self._pid:
                # A forked child: the parent's queue and failures are the parent's business,
                # and nothing would flush this copy before the child exits (os._exit).
                self._unreported = []
                self._failed = {}
                self.write_through = True
            elif self._loop is not None and loop is not self._loop:
                # zarr's loop was shut down under us: whatever was queued is lost; say so.
                for key, op in {**self._inflight, **self._queued}.items():
                    action = "delete" if op.value is None else "set"
                    error = RuntimeError("zarr's IO event loop stopped before the write ran")
                    self._record_failure(key, action, error, 0, locked=True)
            if loop is not self._loop or pid != self._pid:
                self._reset_runtime()
                self._loop = loop
        return loop

    def on_loop_thread(self) -> bool:
        return _on_loop(running_io_loop())

    async def run(
        self, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Await ``fn(*args, **kwargs)`` on zarr's IO loop, from whatever loop we are called on."""
        loop = self.loop()
        if _on_loop(loop):
            return await fn(*args, **kwargs)
        future = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), loop)
        return await asyncio.wrap_future(future)

    def call_sync(
        self, what: str, fn: Callable[P, Coroutine[Any, Any, T]], *args: P.args, **kwargs: P.kwargs
    ) -> T:
        """Block until ``fn(*args, **kwargs)`` has run on zarr's IO loop."""
        if self.on_loop_thread():
            raise RuntimeError(
                f"BufferedStore.{what}() blocks and cannot be called on zarr's IO event loop; "
                f"use the async method instead (await store.{what.removesuffix('_sync')}())"
            )
        return sync(self.run(fn, *args, **kwargs))

    # -- reads of the queue -------------------------------------------------------------------

    def lookup(self, key: str) -> _Op | None:
        """The newest op of ``key`` not yet durable, if any; a delete if ``key`` is being
        deleted by ``delete_dir``/``clear`` (and not written again since)."""
        op = self._queued.get(key)
        if op is not None:
            return op
        if self.is_fenced(key):
            return _GONE
        return self._inflight.get(key)

    def pending_items(self) -> Iterable[tuple[str, _Op]]:
        """Newest op of every key not yet durable (writes being deleted excluded)."""
        for key, op in self._inflight.items():
            if key not in self._queued and not self.is_fenced(key):
                yield key, op
        yield from self._queued.items()

    def is_fenced(self, key: str) -> bool:
        return any(key.startswith(fence) for fence in self._fences)

    def has_pending(self) -> bool:
        return bool(self._queued or self._inflight)

    def has_unreported(self) -> bool:
        return bool(self._unreported)

    # -- admission (backpressure) -------------------------------------------------------------

    def _fits(self, nbytes: int) -> bool:
        return self._buffered == 0 or self._buffered + nbytes <= self.config.max_buffer_bytes

    def _take(self, nbytes: int) -> None:
        self._buffered += nbytes
        self._peak = max(self._peak, self._buffered)

    def _release(self, nbytes: int) -> None:
        self._buffered -= nbytes
        while self._space_waiters and self._fits(self._space_waiters[0][0]):
            size, future = self._space_waiters.popleft()
            if not future.done():
                self._take(size)
                future.set_result(None)

    async def _reserve(self, nbytes: int) -> None:
        """Wait, first come first served, until ``nbytes`` fit in the buffer, and take them.

        A value larger than the whole buffer is admitted once the buffer is empty, so the buffer
        never holds more than ``max(max_buffer_bytes, largest value)``.
        """
        if not self._space_waiters and self._fits(nbytes):
            self._take(nbytes)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (nbytes, future)
        self._space_waiters.append(entry)
        try:
            await future
        except asyncio.CancelledError:
            if future.done() and not future.cancelled():
                self._release(nbytes)  # space was handed to us just before the cancellation
            else:
                if entry in self._space_waiters:
                    self._space_waiters.remove(entry)
                self._release(0)  # the next waiter may fit now
            raise

    # -- progress (flush barrier, delete_dir) -------------------------------------------------

    async def _wait_until(self, predicate: Callable[[], bool]) -> None:
        if predicate():
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        entry = (predicate, future)
        self._progress_waiters.append(entry)
        try:
            await future
        finally:
            if entry in self._progress_waiters:
                self._progress_waiters.remove(entry)

    def _progress(self) -> None:
        waiting = []
        for predicate, future in self._progress_waiters:
            if future.done():
                continue
            if predicate():
                future.set_result(None)
            else:
                waiting.append((predicate, future))
        self._progress_waiters = waiting

    def _oldest_pending_seq(self) -> float:
        oldest = math.inf
        for op in self._queued.values():  # insertion order is age order: the first is oldest
            oldest = op.first_seq
            break
        for op in self._inflight.values():
            oldest = min(oldest, op.first_seq)
        return oldest

    # -- writes -------------------------------------------------------------------------------

    async def put(self, key: str, value: Buffer | None, store: Store) -> None:
        """Queue a write (``value``) or a delete (``None``) of ``key``; waits while full.

        In write-through mode, also waits until this op is durable, failed, or superseded by a
        newer op of the same key.
        """
        nbytes = 0 if value is None else len(value)
        await self._reserve(nbytes)
        try:
            if value is not None and not self.write_through:
                value = _owned(value)  # write-through callers wait: their buffer stays valid
        except BaseException:
            self._release(nbytes)
            raise
        old = self._queued.get(key)
        if old is not None:
            # Coalesce: the newer value replaces the queued one in place (keeping its age, so
            # a flush() that was waiting for the older value now waits for this one).
            op = self._queued[key] = _Op(value, nbytes, old.first_seq, store)
            self._coalesced += 1
            self._release(old.nbytes)
            self._progress()
        else:
            self._seq += 1
            op = self._queued[key] = _Op(value, nbytes, self._seq, store)
        self._bytes_queued += nbytes
        _LIVE.add(self)
        self._kick()
        if self.write_through:
            await self._wait_until(
                lambda: self._queued.get(key) is not op and self._inflight.get(key) is not op
            )

    def _kick(self) -> None:
        """Start flusher tasks, up to ``concurrency``, while there is queued work."""
        loop = self._loop
        assert loop is not None
        wanted = min(self.config.concurrency, len(self._queued))
        while self._active_workers < wanted:
            # Counted here and uncounted by the worker in the same step in which it finds the
            # queue empty: a finished task waiting for its done-callback is never counted.
            self._active_workers += 1
            task = loop.create_task(self._worker())
            self._workers.add(task)
            task.add_done_callback(self._workers.discard)

    def _pick(self) -> tuple[str, _Op] | None:
        """The oldest queued op whose key is not being written and not being deleted."""
        for key in self._queued:
            if key not in self._inflight and not self.is_fenced(key):
                return key, self._queued.pop(key)
        return None

    async def _worker(self) -> None:
        try:
            await self._work()
        finally:
            self._active_workers -= 1

    async def _work(self) -> None:
        while (picked := self._pick()) is not None:
            key, op = picked
            self._inflight[key] = op
            action = "delete" if op.value is None else "set"
            try:
                if op.value is None:
                    error, attempts = await self.retrying(op.store.delete, key)
                else:
                    error, attempts = await self.retrying(op.store.set, key, op.value)
                if error is not None:
                    self._record_failure(key, action, error, attempts)
                else:
                    if op.value is None:
                        self._deletes += 1
                    else:
                        self._puts += 1
                        self._bytes_written += op.nbytes
                    if key in self._failed:
                        with self._lock:
                            self._failed.pop(key, None)
            except asyncio.CancelledError as exc:
                self._record_failure(key, action, exc, 1)
                raise
            finally:
                del self._inflight[key]
                self._release(op.nbytes)
                self._progress()

    async def retrying(
        self, fn: Callable[P, Awaitable[Any]], *args: P.args, **kwargs: P.kwargs
    ) -> tuple[Exception | None, int]:
        """Call ``fn``, retrying transient errors; return ``(final error or None, attempts)``."""
        attempt = 1
        while True:
            try:
                await fn(*args, **kwargs)
            except Exception as exc:  # noqa: BLE001 - classified below, returned to the caller
                if attempt > self.config.retries or not is_transient_error(exc):
                    return exc, attempt
                self._retries += 1
                delay = min(_MAX_BACKOFF_S, self.config.retry_backoff * 2 ** (attempt - 1))
                logger.debug("retrying after %s (attempt %d): %r", fn, attempt, exc)
                await asyncio.sleep(delay * self._rng.uniform(0.5, 1.5))
                attempt += 1
            else:
                return None, attempt

    async def read(self, fn: Callable[P, Awaitable[T]], *args: P.args, **kwargs: P.kwargs) -> T:
        """Call a read of the wrapped store, retrying transient errors like writes."""
        result: list[T] = []

        async def call() -> None:
            result.append(await fn(*args, **kwargs))

        error, _ = await self.retrying(call)
        if error is not None:
            raise error
        return result[0]

    async def delete_prefix(self, prefix: str, action: Callable[[], Awaitable[None]]) -> None:
        """Delete everything under ``prefix`` (``""``: everything), ordered with queued writes.

        Writes queued before the call are dropped (they would be deleted anyway), writes being
        written are waited for, then ``action`` deletes in the wrapped store. Writes queued while
        this runs are kept and written afterwards; reads meanwhile see them and nothing else under
        the prefix.
        """
        self._fences.append(prefix)
        try:
            for key in [k for k in self._queued if k.startswith(prefix)]:
                op = self._queued.pop(key)
                self._coalesced += 1
                self._release(op.nbytes)
            self._progress()
            await self._wait_until(lambda: not any(k.startswith(prefix) for k in self._inflight))
            error, _ = await self.retrying(action)
            if error is not None:
                raise error
            with self._lock:
                for key in [k for k in self._failed if k.startswith(prefix)]:
                    del self._failed[key]
        finally:
            self._fences.remove(prefix)
            self._kick()

    async def flush(self, strict: bool = False) -> None:
        target = self._seq
        self._kick()
        await self._wait_until(lambda: self._oldest_pending_seq() > target)
        self.raise_failures(strict=strict)

    # -- failures -----------------------------------------------------------------------------

    def _record_failure(
        self, key: str, action: str, error: BaseException, attempts: int, *, locked: bool = False
    ) -> None:
        failure = _Failure(key, action, error, attempts)
        logger.debug(
            "buffered %s of %r failed after %d attempt(s): %r", action, key, attempts, error
        )
        self._failures += 1
        if locked:
            self._unreported.append(failure)
            self._failed[key] = failure
            return
        with self._lock:
            self._unreported.append(failure)
            self._failed[key] = failure

    def raise_failures(self, *, strict: bool = False) -> None:
        """Raise the failures nobody has been told about yet (each is raised once).

        With ``strict``, also raise when failures were reported before but their keys are still
        not durable.
        """
        with self._lock:
            failures, self._unreported = self._unreported, []
            if not failures and strict:
                failures = list(self._failed.values())
        if failures:
            raise _failure_error(failures, self.where)

    def failed_keys(self) -> tuple[str, ...]:
        with self._lock:
            return tuple(sorted(self._failed))

    def stats(self) -> BufferedStoreStats:
        return BufferedStoreStats(
            bytes_queued=self._bytes_queued,
            bytes_written=self._bytes_written,
            puts=self._puts,
            deletes=self._deletes,
            coalesced=self._coalesced,
            retries=self._retries,
            failures=self._failures,
            buffered_bytes=self._buffered,
            peak_buffered_bytes=self._peak,
            pending_keys=len(self._queued) + len(self._inflight),
        )


def _flush_at_exit() -> None:
    """Write what is still queued when the interpreter exits, and report what failed.

    Runs as a *threading* exit hook when available: those run before ``concurrent.futures``
    refuses new work (``LocalStore`` writes through ``asyncio.to_thread``) and before the plain
    ``atexit`` hooks, among them zarr's, which stops the IO loop. Bounded by
    ``_EXIT_FLUSH_TIMEOUT_S`` in all: never hangs for good.
    """
    deadline = time.monotonic() + _EXIT_FLUSH_TIMEOUT_S
    for core in list(_LIVE):
        if not (core.has_pending() or core.has_unreported()):
            continue
        try:
            timeout = max(0.1, deadline - time.monotonic())
            sync(core.run(core.flush), timeout=timeout)
        except Exception as exc:  # noqa: BLE001 - at exit, report instead of raising
            warnings.warn(
                f"BufferedStore({core.where}) was not closed and could not write everything at "
                f"exit: {exc}",
                RuntimeWarning,
                stacklevel=1,
            )


_register_exit_hook = getattr(threading, "_register_atexit", atexit.register)
_register_exit_hook(_flush_at_exit)


# --------------------------------------------------------------------------------------------
# The store
# --------------------------------------------------------------------------------------------


def _resolve_target(
    target: StoreLike, storage_options: Mapping[str, Any] | None, read_only: bool
) -> Store:
    if isinstance(target, Store):
        if storage_options:
            raise ValueError(
                "storage_options cannot be used when target is a zarr Store; configure the Store "
                "itself, or pass a URL instead"
            )
        store = target.with_read_only(True) if read_only and not target.read_only else target
    else:
        store = resolve_store(target, storage_options=storage_options, read_only=read_only)
    if isinstance(store, FsspecStore):
        # fsspec's local filesystem writes files in place (a reader can see half a chunk);
        # zarr's LocalStore writes a temporary file and renames it.
        from fsspec.implementations.local import LocalFileSystem

        if isinstance(getattr(store.fs, "sync_fs", store.fs), LocalFileSystem):
            store = LocalStore(store.path, read_only=store.read_only)
    return store


class BufferedStore(WrapperStore[Store]):
    """A write-behind buffer in front of any zarr v3 store.

    ``set`` copies the value into a buffer bounded in bytes (only when needed, see Notes) and
    returns; background tasks on zarr's IO event loop write queued keys to the wrapped store, at
    most ``concurrency`` at a time, retrying transient errors. When the buffer is full, ``set``
    waits (backpressure) instead of growing it.

    Parameters
    ----------
    target
        A local path or ``file://`` URL (zarr's ``LocalStore``, which writes atomically), any
        other fsspec URL (``memory://``, ``s3://`` ...; synchronous filesystems are wrapped), or a
        zarr Store to wrap. An ``FsspecStore`` on the local filesystem is replaced by a
        ``LocalStore`` on the same directory, so that local writes are atomic.
    storage_options
        fsspec options for a URL ``target``.
    read_only
        Open read-only (reads only; ``set`` and ``delete`` raise ``ReadOnlyStoreError``).
    max_buffer_mb
        Bound of the buffer in MiB (values queued or being written). A single value larger than
        the bound is accepted once the buffer is empty.
    concurrency
        Most writes to the wrapped store in flight at once.
    retries
        Retries of an operation that failed with a transient error (see
        :func:`is_transient_error`); ``retries=3`` makes at most 4 attempts.
    retry_backoff
        First retry delay in seconds; doubled at each retry (at most 30 s), with +-50 % jitter.
    write_through
        Make ``set`` and ``delete`` wait until their own write is durable (or failed, which they
        then raise): no write-behind, but the same retries, coalescing, ordering and bounded
        concurrency. Copies made by pickling, or inherited by a forked process, write through.

    Raises
    ------
    ValueError
        Invalid options, or ``storage_options`` with a Store target.
    TypeError
        ``target`` of an unsupported type.

    Notes
    -----
    **Ordering and coalescing.** A key has at most one write in flight. A write of a key that is
    still queued replaces the queued value (last write wins); a write of a key being written
    waits in the queue until that write finishes, so the wrapped store never receives an older
    value after a newer one. Deletes are queued like writes and ordered the same way;
    ``delete_dir`` and ``clear`` drop queued writes under the prefix, wait for the ones in
    flight, then delete in the wrapped store.

    **Read-your-writes.** ``get``, ``get_partial_values``, ``getsize``, ``exists``, ``list*`` and
    ``is_empty`` see queued writes and deletes. Views made by ``with_read_only`` (zarr makes one
    for ``mode="r"``) share the buffer.

    **Copies.** zarr never reuses a Buffer passed to ``set``, but for an uncompressed complete
    chunk that Buffer is a view of the caller's array, which the caller may modify as soon as the
    write returns. Buffers backed by an immutable ``bytes`` object (compressed chunks, metadata)
    are queued as they are; others are copied once.

    **Errors.** An operation that fails for good in the background (permanent error, or transient
    after ``retries`` retries) is reported exactly once, as a :class:`WriteFailedError` naming the
    key(s) and chained to the original exception, to the next caller of ``set``, ``delete``,
    ``get``, ``get_partial_values``, ``flush`` or ``close``. ``set`` and ``delete`` queue their
    own value before raising (the error is about earlier writes). The failed keys stay in
    :attr:`failed_keys` until a later write of the same key succeeds; ``flush(strict=True)``
    raises while any remain. ``close`` raises if a failure was never reported. Later writes are
    still accepted and written after a failure. Reads after a failure see what the wrapped store
    holds (the failed value is not served from memory). Transient errors of foreground reads are
    retried too.

    **Pickling** captures the wrapped store and the configuration only, so that dask workers can
    use the store. When pickled from any thread but zarr's IO thread, pending writes are flushed
    first (their failures are raised then), so the copy reads what this store wrote. The copy
    has an empty buffer of its own and writes through (``write_through=True``): in a worker
    process nothing would flush it before the task that wrote is reported done. A forked child
    process likewise starts with an empty buffer and writes through.

    **Exit.** Writes still queued at interpreter exit are flushed by an ``atexit`` hook (at most
    60 s in all); failures then are reported as a ``RuntimeWarning``. Call ``close()`` instead.

    ``set_if_not_exists`` is not atomic with respect to other writers of the wrapped store.

    Examples
    --------
    >>> import xarray as xr
    >>> ds = xr.Dataset({"a": ("x", [1, 2, 3])})
    >>> with BufferedStore("memory://doc-example") as store:
    ...     _ = ds.to_zarr(store, zarr_format=3, consolidated=False)
    ...     store.flush_sync()
    ...     xr.open_zarr(store, consolidated=False)["a"].values.tolist()
    [1, 2, 3]
    """

    _core: _WriteBehind

    def __init__(
        self,
        target: StoreLike,
        *,
        storage_options: Mapping[str, Any] | None = None,
        read_only: bool = False,
        max_buffer_mb: float = 256,
        concurrency: int = 16,
        retries: int = 3,
        retry_backoff: float = 0.1,
        write_through: bool = False,
    ) -> None:
        config = _parse_config(max_buffer_mb, concurrency, retries, retry_backoff)
        inner = _resolve_target(target, storage_options, read_only)
        super().__init__(inner)
        self._core = _WriteBehind(config, str(inner), write_through=bool(write_through))

    @classmethod
    def _view(cls, store: Store, core: _WriteBehind) -> Self:
        view = cls.__new__(cls)
        WrapperStore.__init__(view, store)
        view._core = core
        return view

    @classmethod
    async def open(cls, target: StoreLike, **kwargs: Any) -> Self:  # type: ignore[override]
        """Create the store and open the wrapped store.

        Parameters
        ----------
        target
            As for the constructor.
        **kwargs
            Keyword arguments of the constructor.

        Returns
        -------
        BufferedStore
        """
        store = cls(target, **kwargs)
        await store._open()
        return store

    def _with_store(self, store: Store) -> Self:
        # docstring inherited; a different wrapped store gets a buffer of its own
        core = _WriteBehind(self._core.config, str(store), write_through=self.write_through)
        return self._view(store, core)

    def with_read_only(self, read_only: bool = False) -> Self:
        """A view of the same buffer on a copy of the wrapped store with the given ``read_only``.

        Parameters
        ----------
        read_only
            Whether the view is read-only.

        Returns
        -------
        BufferedStore
            Shares this store's queue, so it sees queued writes; it is not opened.
        """
        return self._view(self._store.with_read_only(read_only), self._core)

    # -- identity -----------------------------------------------------------------------------

    def __eq__(self, value: object) -> bool:
        return (
            type(self) is type(value)
            and isinstance(value, BufferedStore)
            and self._store == value._store
            and self._core.config == value._core.config
        )

    def __str__(self) -> str:
        return f"buffered+{self._store}"

    def __repr__(self) -> str:
        cfg = self._core.config
        mode = ", write_through=True" if self.write_through else ""
        return (
            f"BufferedStore({self._store!r}, max_buffer_mb={cfg.max_buffer_bytes / _MIB:g}, "
            f"concurrency={cfg.concurrency}, retries={cfg.retries}{mode})"
        )

    def __getstate__(self) -> dict[str, Any]:
        if self._core.has_pending() and not self._core.on_loop_thread():
            self.flush_sync()
        return {"store": self._store, "config": self._core.config}

    def __setstate__(self, state: dict[str, Any]) -> None:
        # The copy usually lives in a dask worker, where nothing would flush it before the task
        # that wrote is reported done: it writes through.
        WrapperStore.__init__(self, state["store"])
        self._core = _WriteBehind(state["config"], str(state["store"]), write_through=True)

    # -- public extras ------------------------------------------------------------------------

    @property
    def max_buffer_bytes(self) -> int:
        """Bound of the buffer in bytes."""
        return self._core.config.max_buffer_bytes

    @property
    def concurrency(self) -> int:
        """Most writes in flight at once."""
        return self._core.config.concurrency

    @property
    def write_through(self) -> bool:
        """Whether ``set`` and ``delete`` wait until their write is durable (see Notes)."""
        return self._core.write_through

    @property
    def stats(self) -> BufferedStoreStats:
        """Counters of the buffer (shared with ``with_read_only`` views)."""
        return self._core.stats()

    @property
    def failed_keys(self) -> tuple[str, ...]:
        """Keys whose latest write or delete failed for good, sorted."""
        return self._core.failed_keys()

    async def flush(self, *, strict: bool = False) -> None:
        """Wait until everything queued before the call is written (or failed), then report.

        Parameters
        ----------
        strict
            Also raise if keys that failed earlier (and were reported then) are still not
            durable.

        Raises
        ------
        WriteFailedError
            Background writes failed (see Notes of the class).
        """
        await self._core.run(self._core.flush, strict)

    def flush_sync(self, *, strict: bool = False) -> None:
        """Blocking :meth:`flush`; not callable on zarr's IO loop.

        Parameters
        ----------
        strict
            As for :meth:`flush`.
        """
        self._core.call_sync("flush_sync", self._core.flush, strict)

    async def aclose(self) -> None:
        """Flush, then close the wrapped store (a read-only view only closes its wrapped store).

        Raises
        ------
        WriteFailedError
            Background writes failed and were not reported before.
        """
        try:
            if not self.read_only:
                await self.flush()
        finally:
            self._store.close()

    def close(self) -> None:
        """Flush (blocking), then close the wrapped store.

        A read-only view (such as the copy zarr makes for ``mode="r"``, which xarray closes with
        the dataset) only closes its wrapped store: readers do not wait for, or get the errors
        of, the writers' queue.

        Raises
        ------
        WriteFailedError
            Background writes failed and were not reported before.
        RuntimeError
            Called on zarr's IO loop while writes are pending; use ``await store.aclose()``.
        """
        core = self._core
        if self.read_only:
            self._store.close()
            return
        if core.on_loop_thread():
            if core.has_pending() or core.has_unreported():
                raise RuntimeError(
                    "BufferedStore.close() cannot block on zarr's IO event loop while writes are "
                    "pending; use `await store.aclose()` or `async with store:`"
                )
            self._store.close()
            return
        core.call_sync("close", self.aclose)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc_value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.aclose()

    # -- open / writable ----------------------------------------------------------------------

    async def _open(self) -> None:
        await self._core.run(self._store._open)

    async def _ensure_open(self) -> None:
        await self._core.run(self._store._ensure_open)

    def _check_writable(self) -> None:
        if self._store.read_only or not self._store.supports_writes:
            raise ReadOnlyStoreError(
                f"store was opened in read-only mode and does not support writing ({self}); "
                "use a store opened with read_only=False, e.g. store.with_read_only(False)"
            )
        self._store._check_writable()

    # -- writes -------------------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        await self._core.run(self._set, key, value)

    async def _set(self, key: str, value: Buffer) -> None:
        self._check_writable()
        if not isinstance(value, Buffer):
            raise TypeError(
                f"BufferedStore.set(): `value` must be a Buffer instance, got {type(value)}"
            )
        if not self._store._is_open:
            await self._store._ensure_open()
        await self._core.put(key, value, self._store)
        self._core.raise_failures()

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        # docstring inherited
        items = list(values)
        await self._core.run(self._set_many_on_loop, items)

    async def _set_many_on_loop(self, items: list[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self._set(key, value) for key, value in items))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited
        await self._core.run(self._set_if_not_exists, key, value)

    async def _set_if_not_exists(self, key: str, value: Buffer) -> None:
        self._check_writable()
        if not await self._exists(key):
            await self._set(key, value)

    async def delete(self, key: str) -> None:
        # docstring inherited
        await self._core.run(self._delete, key)

    async def _delete(self, key: str) -> None:
        self._check_writable()
        await self._core.put(key, None, self._store)
        self._core.raise_failures()

    async def delete_dir(self, prefix: str) -> None:
        # docstring inherited
        self._check_writable()
        await self._core.run(
            self._core.delete_prefix, _dir_prefix(prefix), lambda: self._store.delete_dir(prefix)
        )

    async def clear(self) -> None:
        # docstring inherited
        self._check_writable()
        await self._core.run(self._core.delete_prefix, "", self._store.clear)

    # -- reads --------------------------------------------------------------------------------

    async def get(
        self,
        key: str,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        # docstring inherited
        return await self._core.run(self._get, key, prototype, byte_range)

    async def _get(
        self, key: str, prototype: BufferPrototype | None, byte_range: ByteRequest | None
    ) -> Buffer | None:
        # Reads never raise (nor consume) a background write failure: it belongs to the writer,
        # who gets it from its next write, flush() or close(). A reader (xr.open_zarr, zarr's
        # metadata checks) taking it would leave the writer believing everything landed.
        prototype = default_buffer_prototype() if prototype is None else prototype
        op = self._core.lookup(key)
        if op is not None:
            if op.value is None:
                return None
            return prototype.buffer.from_buffer(_slice(op.value, byte_range))
        return await self._core.read(self._store.get, key, prototype, byte_range)

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        return await self._core.run(self._get_partial_values, prototype, list(key_ranges))

    async def _get_partial_values(
        self, prototype: BufferPrototype, key_ranges: list[tuple[str, ByteRequest | None]]
    ) -> list[Buffer | None]:
        # (reads never raise a write failure: see _get)
        results: list[Buffer | None] = [None] * len(key_ranges)
        positions: list[int] = []
        requests: list[tuple[str, ByteRequest | None]] = []
        for i, (key, byte_range) in enumerate(key_ranges):
            op = self._core.lookup(key)
            if op is not None:
                if op.value is not None:
                    results[i] = prototype.buffer.from_buffer(_slice(op.value, byte_range))
            else:
                positions.append(i)
                requests.append((key, byte_range))
        if requests:
            values = await self._core.read(self._store.get_partial_values, prototype, requests)
            for i, value in zip(positions, values, strict=True):
                results[i] = value
        return results

    async def _get_many(
        self, requests: Iterable[tuple[str, BufferPrototype, ByteRequest | None]]
    ) -> AsyncGenerator[tuple[str, Buffer | None], None]:
        # docstring inherited
        for key, prototype, byte_range in requests:
            yield key, await self.get(key, prototype, byte_range)

    async def exists(self, key: str) -> bool:
        # docstring inherited
        return await self._core.run(self._exists, key)

    async def _exists(self, key: str) -> bool:
        op = self._core.lookup(key)
        if op is not None:
            return op.value is not None
        return await self._core.read(self._store.exists, key)

    async def getsize(self, key: str) -> int:
        # docstring inherited
        return await self._core.run(self._getsize, key)

    async def _getsize(self, key: str) -> int:
        op = self._core.lookup(key)
        if op is not None:
            if op.value is None:
                raise FileNotFoundError(key)
            return op.nbytes
        return await self._core.read(self._store.getsize, key)

    async def is_empty(self, prefix: str) -> bool:
        # docstring inherited
        return await Store.is_empty(self, prefix)

    # -- listing ------------------------------------------------------------------------------

    def _hidden(self, key: str) -> bool:
        """Keys of the wrapped store that a reader must not see right now."""
        if _PARTIAL_FILE.search(key):
            return True
        op = self._core.lookup(key)
        return op is not None and op.value is None

    async def _collect(self, iterator: AsyncIterator[str]) -> list[str]:
        return [key async for key in iterator]

    def _pending_writes(self, prefix: str) -> builtins.set[str]:  # `set` is a method here
        return {
            key
            for key, op in self._core.pending_items()
            if op.value is not None and key.startswith(prefix)
        }

    async def _list_prefix(self, prefix: str) -> list[str]:
        # Pending writes are taken before the listing as well as after it: one that lands in
        # the wrapped store while the listing runs may be missing from both otherwise.
        before = self._pending_writes(prefix)
        if prefix:
            found = await self._core.read(self._collect_prefix, prefix)
        else:
            found = await self._core.read(self._collect_all)
        keys = {key for key in found if not self._hidden(key)}
        keys.update(k for k in before if not self._hidden(k))
        keys.update(self._pending_writes(prefix))
        return sorted(keys)

    async def _collect_prefix(self, prefix: str) -> list[str]:
        return await self._collect(self._store.list_prefix(prefix))

    async def _collect_all(self) -> list[str]:
        return await self._collect(self._store.list())

    async def _collect_dir(self, prefix: str) -> list[str]:
        return await self._collect(self._store.list_dir(prefix))

    async def _list_dir(self, prefix: str) -> list[str]:
        base = _dir_prefix(prefix)
        before = self._pending_writes(base)  # see _list_prefix
        found = await self._core.read(self._collect_dir, prefix)
        names = set()
        for name in found:
            full = base + name
            if _PARTIAL_FILE.search(name) or self._core.is_fenced(full + "/"):
                continue
            op = self._core.lookup(full)
            if op is not None and op.value is None:
                continue
            names.add(name)
        for key in {k for k in before if not self._hidden(k)} | self._pending_writes(base):
            names.add(key[len(base) :].split("/", 1)[0])
        return sorted(names)

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._core.run(self._list_prefix, ""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._core.run(self._list_prefix, prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for name in await self._core.run(self._list_dir, prefix):
            yield name
