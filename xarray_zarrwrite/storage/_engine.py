"""The write-behind engine behind :class:`BufferedStore`: queue, byte budget, workers, retries,
failure records, and the reset after a fork or a restart of zarr's IO loop.

One :class:`_WriteBehind` per buffer; ``BufferedStore`` objects are views on it.
"""

from __future__ import annotations

import asyncio
import atexit
import logging
import math
import os
import random
import threading
import time
import warnings
import weakref
from collections import deque
from typing import TYPE_CHECKING, Any, Final, ParamSpec, TypeVar

from .._compat import io_loop, running_io_loop, sync
from ._records import (
    _GONE,
    BufferedStoreStats,
    _BufferConfig,
    _Failure,
    _failure_error,
    _Op,
    _owned,
)
from ._retry import mark_retried, retry_call

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable, Coroutine, Iterable

    from zarr.abc.store import Store

    from .._compat import Buffer

logger = logging.getLogger(__name__)

P = ParamSpec("P")
T = TypeVar("T")

_EXIT_FLUSH_TIMEOUT_S: Final = 60.0


def _on_loop(loop: asyncio.AbstractEventLoop | None) -> bool:
    if loop is None:
        return False
    try:
        return asyncio.get_running_loop() is loop
    except RuntimeError:
        return False


# --------------------------------------------------------------------------------------------
# The engine
# --------------------------------------------------------------------------------------------

_LIVE: weakref.WeakSet[_WriteBehind] = weakref.WeakSet()  # engines that queued, for the exit hook
_ALL: weakref.WeakSet[_WriteBehind] = weakref.WeakSet()  # every engine, for the fork reset


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
        _ALL.add(self)

    def _reset_runtime(self) -> None:
        self._loop: asyncio.AbstractEventLoop | None = None
        self._queued: dict[str, _Op] = {}  # insertion order == age order
        self._inflight: dict[str, _Op] = {}  # at most one op per key is being written
        self._fences: list[str] = []  # prefixes being deleted by delete_dir / clear
        self._workers: set[asyncio.Task[None]] = set()  # strong references to the tasks
        self._active_workers = 0
        self._space_waiters: deque[tuple[int, asyncio.Future[None]]] = deque()
        self._progress_waiters: list[tuple[Callable[[], bool], asyncio.Future[None]]] = []
        self._buffered = 0
        self._seq = 0

    def reset_in_child(self) -> None:
        """Start afresh in a forked child: new lock, empty queue, no failures, write-through.

        The parent's queue and failures are the parent's business (its threads, loop and
        futures do not exist here, and a lock may have been held by one of its threads at the
        fork); nothing would flush this copy before the child exits (``os._exit``).
        """
        self._lock = threading.Lock()
        self._unreported = []
        self._failed = {}
        self.write_through = True
        self._reset_runtime()

    # -- event loop ---------------------------------------------------------------------------

    def loop(self) -> asyncio.AbstractEventLoop:
        """zarr's IO loop; resets the runtime state after a restart of that loop.

        (A fork is handled by :meth:`reset_in_child`, run by ``os.register_at_fork``.)
        """
        loop = io_loop()
        if loop is self._loop:
            return loop
        with self._lock:
            if self._loop is not None and loop is not self._loop:
                # zarr's loop was shut down under us: whatever was queued is lost; say so.
                for key, op in {**self._inflight, **self._queued}.items():
                    action = "delete" if op.value is None else "set"
                    error = RuntimeError("zarr's IO event loop stopped before the write ran")
                    self._record_failure(key, action, error, 0, locked=True)
            if loop is not self._loop:
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

    async def put(
        self,
        key: str,
        value: Buffer | None,
        store: Store,
        waiter: asyncio.Future[None] | None = None,
    ) -> None:
        """Queue a write (``value``) or a delete (``None``) of ``key``; waits while full.

        In write-through mode, also waits until this op is durable, failed, or superseded by a
        newer op of the same key. With a ``waiter`` (see :meth:`put_and_wait`), the caller owns
        the op's outcome: ``waiter`` gets it, and its failure is not reported to anyone else.
        """
        nbytes = 0 if value is None else len(value)
        await self._reserve(nbytes)
        try:
            if value is not None and not self.write_through and waiter is None:
                value = _owned(value)  # callers who wait keep their buffer valid
        except BaseException:
            self._release(nbytes)
            raise
        owners = [] if waiter is None else [waiter]
        old = self._queued.get(key)
        if old is not None:
            # Coalesce: the newer value replaces the queued one in place (keeping its age, so
            # a flush() that was waiting for the older value now waits for this one; an owner
            # of the older value gets the newer one's outcome: its write was superseded).
            op = self._queued[key] = _Op(value, nbytes, old.first_seq, store)
            op.waiters = old.waiters + owners
            op.unowned = old.unowned or waiter is None
            self._coalesced += 1
            self._release(old.nbytes)
            self._progress()
        else:
            self._seq += 1
            op = self._queued[key] = _Op(value, nbytes, self._seq, store)
            op.waiters, op.unowned = owners, waiter is None
        self._bytes_queued += nbytes
        _LIVE.add(self)
        self._kick()
        if self.write_through:
            await self._wait_until(
                lambda: self._queued.get(key) is not op and self._inflight.get(key) is not op
            )

    async def put_and_wait(self, key: str, value: Buffer | None, store: Store) -> None:
        """Queue like :meth:`put` (same order, coalescing, limits and retries as every other
        write of this buffer), then wait until this write is durable in the wrapped store.

        Raises the write's own failure (a marked ``WriteFailedError`` naming the key and the
        attempts made): it is the caller's, so ``flush``/``close`` do not report it again (its
        key stays in ``failed_keys`` until written). A write superseded by a newer write of the
        same key before it started shares that write's outcome.
        """
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        await self.put(key, value, store, waiter)
        await waiter

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
                    self._failed_op(op, key, action, error, attempts)
                else:
                    _settle(op.waiters, None)
                    if op.value is None:
                        self._deletes += 1
                    else:
                        self._puts += 1
                        self._bytes_written += op.nbytes
                    if key in self._failed:
                        with self._lock:
                            self._failed.pop(key, None)
            except asyncio.CancelledError as exc:
                self._failed_op(op, key, action, exc, 1)
                raise
            finally:
                del self._inflight[key]
                self._release(op.nbytes)
                self._progress()

    def _failed_op(
        self, op: _Op, key: str, action: str, error: BaseException, attempts: int
    ) -> None:
        """Record a failed op: reported to its owners, and to the buffer's writers only when
        some coalesced put had no owner (an owner's failure is raised once, to the owner)."""
        self._record_failure(key, action, error, attempts, unreported=op.unowned)
        if op.waiters:
            err = _failure_error([_Failure(key, action, error, attempts)], self.where)
            err.__cause__ = error
            mark_retried(err)  # its retries are spent: a caller's retry loop must not redo them
            _settle(op.waiters, err)

    async def retrying(
        self, fn: Callable[P, Awaitable[Any]], *args: P.args, **kwargs: P.kwargs
    ) -> tuple[Exception | None, int]:
        """Call ``fn`` under the one retry policy; return ``(final error or None, attempts)``."""
        cfg = self.config
        return await retry_call(
            fn, cfg.retries, cfg.retry_backoff, self._rng, self._count_retry, *args, **kwargs
        )

    def _count_retry(self) -> None:
        self._retries += 1

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
                _settle(op.waiters, None)  # superseded by the delete, like a coalesced write
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

    async def flush(self, strict: bool = False, *, report: bool = True) -> None:
        """Wait until everything queued before the call is written or failed.

        Then raise the failures not raised yet (``report``; all failed keys with ``strict``).
        ``report=False`` waits only: for a reader, who must not take the writer's failures.
        """
        target = self._seq
        self._kick()
        await self._wait_until(lambda: self._oldest_pending_seq() > target)
        if report:
            self.raise_failures(strict=strict)

    # -- failures -----------------------------------------------------------------------------

    def _record_failure(
        self,
        key: str,
        action: str,
        error: BaseException,
        attempts: int,
        *,
        locked: bool = False,
        unreported: bool = True,
    ) -> None:
        failure = _Failure(key, action, error, attempts)
        logger.debug(
            "buffered %s of %r failed after %d attempt(s): %r", action, key, attempts, error
        )
        self._failures += 1
        if locked:
            if unreported:
                self._unreported.append(failure)
            self._failed[key] = failure
            return
        with self._lock:
            if unreported:
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


def _settle(waiters: list[asyncio.Future[None]], error: BaseException | None) -> None:
    """Give the owners of an op its outcome (those who gave up waiting are skipped)."""
    for waiter in waiters:
        if waiter.done():
            continue
        if error is None:
            waiter.set_result(None)
        else:
            waiter.set_exception(error)


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


def _reset_after_fork() -> None:
    """In a forked child, reset every engine (zarr resets its IO loop by the same mechanism)."""
    _LIVE.clear()
    for core in list(_ALL):
        core.reset_in_child()


if hasattr(os, "register_at_fork"):  # not on Windows, which cannot fork
    os.register_at_fork(after_in_child=_reset_after_fork)
