"""Non-blocking writes: :class:`StreamWriter` and :class:`WriteFuture`.

``write`` validates on the caller's thread (the same plan as :func:`write_region`), reserves
bytes from the in-flight budget (blocking when it is full: backpressure, never growth), starts
the snapshot, and returns. Everything else (waiting for the copy, CF encoding, the zarr codec
pipeline, store I/O) runs in the background: the snapshot and encoding on a small thread pool,
the chunk writes on zarr's IO loop, sharing the process-wide in-flight limit of region writes.

Errors are never lost: each failed write's future holds its exception, and every background
error is raised once more on the caller's thread, at the next ``write``, ``flush`` or
``close``. Writes still pending at interpreter exit are flushed with a warning.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures as cf
import threading
import time
import warnings
import weakref
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Self

import xarray as xr

from ._compat import async_array, io_loop
from ._open import load_template
from ._region import RegionPlan, plan_region
from ._staging import stage
from ._store import ensure_writable, resolve_store
from ._template import _as_dataset
from ._write import EncodedWrite, RegionWriteResult, encode_for_template, write_encoded
from .errors import WriteFailedError, ZarrWriteError

if TYPE_CHECKING:
    from types import TracebackType

    from ._open import TemplateInfo
    from ._store import StoreLike
    from .codecs.cf import OnOutOfRange

__all__ = ["StreamWriter", "UnclosedWriterWarning", "WriteFuture"]


class UnclosedWriterWarning(UserWarning):
    """A StreamWriter still had pending writes at interpreter exit; they were flushed."""


class WriteFuture:
    """The two stages of a non-blocking write.

    Attributes
    ----------
    copied : concurrent.futures.Future
        Resolves when the data has been copied into pipeline memory: the caller may now
        overwrite or free its arrays (GPU memory included).
    committed : concurrent.futures.Future
        Resolves with the :class:`~xarray_zarrwrite.RegionWriteResult` once every chunk is
        durable in the store, or with the write's exception.
    """

    def __init__(self, region: Mapping[str, slice]) -> None:
        self.region = dict(region)
        self.copied: cf.Future[None] = cf.Future()
        self.committed: cf.Future[RegionWriteResult] = cf.Future()

    def result(self, timeout: float | None = None) -> RegionWriteResult:
        """Wait until committed; return the result or raise the write's error."""
        return self.committed.result(timeout)

    def done(self) -> bool:
        return self.committed.done()

    def exception(self, timeout: float | None = None) -> BaseException | None:
        return self.committed.exception(timeout)

    def __repr__(self) -> str:
        state = (
            "committed"
            if self.committed.done() and not self.committed.exception()
            else "failed"
            if self.committed.done()
            else "copied"
            if self.copied.done()
            else "pending"
        )
        return f"<WriteFuture {state} region={self.region}>"


class _Budget:
    """Bytes in flight; ``acquire`` blocks while full (a single oversized write may pass alone)."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.used = 0
        self.peak = 0
        self._cond = threading.Condition()

    def acquire(self, n: int, check: Any) -> None:
        with self._cond:
            while self.used and self.used + n > self.limit:
                self._cond.wait(0.05)
                check()
            self.used += n
            self.peak = max(self.peak, self.used)

    def release(self, n: int) -> None:
        with self._cond:
            self.used -= n
            self._cond.notify_all()


_CHARGE = 1.5
_live: weakref.WeakSet[StreamWriter] = weakref.WeakSet()
_atexit_registered = False


def _flush_at_exit() -> None:
    for writer in list(_live):
        pending = writer.pending
        if pending:
            warnings.warn(
                f"StreamWriter for {writer.store} was not closed: flushing {pending} pending "
                "write(s) at interpreter exit. Use `with StreamWriter(...)` or call close().",
                UnclosedWriterWarning,
                stacklevel=1,
            )
        try:
            writer.close()
        except Exception as e:  # noqa: BLE001  (at exit nobody is left to raise to)
            import sys

            print(f"xarray_zarrwrite: writes failed at exit: {e!r}", file=sys.stderr)


def _register_exit_hook() -> None:
    # Pending writes need thread pools (ours, zarr's, the loop's default executor), and
    # `concurrent.futures` refuses new work once interpreter shutdown has begun: its own hook
    # runs through `threading._register_atexit`, *before* plain `atexit` handlers. Ours must run
    # earlier still, so it uses the same (private, but long-stable) hook, registered later.
    register = getattr(threading, "_register_atexit", None)
    if register is None:  # pragma: no cover
        atexit.register(_flush_at_exit)
    else:
        register(_flush_at_exit)


class StreamWriter:
    """Non-blocking, bounded-memory region writes into a template.

    Parameters
    ----------
    store
        The template's store (path, fsspec URL or zarr Store, e.g. a
        :class:`~xarray_zarrwrite.BufferedStore`).
    max_inflight_mb
        Memory the pipeline may hold: each queued step is charged 1.5 times its raw size (its
        snapshot plus encoding buffers) until committed; ``write`` blocks when the budget is
        full.
    storage_options
        fsspec options for URLs.
    safe_chunks, on_out_of_range
        As for :func:`~xarray_zarrwrite.write_region`.
    threads
        Threads that wait for copies and CF-encode (compression runs in zarr's pool).

    Examples
    --------
    >>> with StreamWriter("out.zarr", max_inflight_mb=512) as writer:  # doctest: +SKIP
    ...     for step in model_steps():
    ...         writer.write(step)
    """

    def __init__(
        self,
        store: StoreLike,
        *,
        max_inflight_mb: float = 512,
        storage_options: Mapping[str, Any] | None = None,
        safe_chunks: bool = True,
        on_out_of_range: OnOutOfRange = "raise",
        threads: int = 2,
    ) -> None:
        global _atexit_registered
        if not (isinstance(max_inflight_mb, int | float) and max_inflight_mb > 0):
            raise ZarrWriteError(f"max_inflight_mb must be positive, got {max_inflight_mb!r}")
        self.store = resolve_store(store, storage_options=storage_options)
        ensure_writable(self.store)
        self.info: TemplateInfo = load_template(self.store)
        self._safe_chunks = safe_chunks
        self._on_out_of_range = on_out_of_range
        self._budget = _Budget(int(max_inflight_mb * 2**20))
        self._pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="xzw-stage")
        self._lock = threading.Lock()
        self._inflight: set[cf.Future[Any]] = set()
        self._unreported: list[BaseException] = []
        self.failed: list[WriteFuture] = []
        self.written = 0
        self._closed = False
        _live.add(self)
        if not _atexit_registered:
            _register_exit_hook()
            _atexit_registered = True

    # -- public API ---------------------------------------------------------------------------
    def write(self, ds: xr.Dataset | xr.DataArray, *, region: Any = "auto") -> WriteFuture:
        """Validate, snapshot and queue ``ds``; returns at once with a :class:`WriteFuture`.

        Raises
        ------
        ZarrWriteError
            Invalid data (nothing queued), or a background error of an earlier write.
        """
        self._check_open()
        self._raise_unreported()
        ds = _as_dataset(ds)
        info = self.info  # read once: a template does not change under its writer
        plan = plan_region(ds, info, region, safe_chunks=self._safe_chunks)
        # charged for its snapshot plus the encoder's transient buffers (measured: the
        # pipeline's resident memory peaks at about 1.4x the snapshots in flight)
        nbytes = int(plan.nbytes * _CHARGE)
        self._budget.acquire(nbytes, self._raise_unreported)
        fut = WriteFuture(plan.region)
        try:
            staged = [(w, *stage(w.variable.data)) for w in plan.writes]
        except BaseException:
            self._budget.release(nbytes)
            raise
        job = self._pool.submit(self._encode, plan, info, staged, fut)
        with self._lock:
            self._inflight.add(fut.committed)
        job.add_done_callback(lambda j: self._after_encode(j, info, fut, staged, nbytes))
        return fut

    def flush(self, timeout: float | None = None) -> None:
        """Wait for every queued write to be committed; raise the first unreported error."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            with self._lock:
                waiting = list(self._inflight)
            if not waiting:
                break
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            done, _ = cf.wait(waiting, timeout=left)
            if deadline is not None and time.monotonic() >= deadline and len(done) < len(waiting):
                raise TimeoutError(f"{len(waiting) - len(done)} write(s) still pending")
        self._raise_unreported()

    def close(self) -> None:
        """Flush, release resources, and raise any error not raised yet."""
        if self._closed:
            self._raise_unreported()
            return
        try:
            self.flush()
        finally:
            self._closed = True
            self._pool.shutdown(wait=True)
            _live.discard(self)

    @property
    def pending(self) -> int:
        """Writes queued and not yet committed or failed."""
        with self._lock:
            return len(self._inflight)

    @property
    def peak_inflight_bytes(self) -> int:
        """The most bytes charged to the budget at once (1.5x the raw size of each step)."""
        return self._budget.peak

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is None:
            self.close()
            return
        try:  # the body already failed: still flush, but let its exception win
            self.close()
        except Exception as bg:  # noqa: BLE001  (the body's exception wins)
            exc.add_note(f"also, a background write failed: {bg!r}")

    # -- pipeline -----------------------------------------------------------------------------
    def _encode(
        self, plan: RegionPlan, info: TemplateInfo, staged: list[Any], fut: WriteFuture
    ) -> list[EncodedWrite]:
        hosts = [s.wait() for _, s, _ in staged]
        fut.copied.set_result(None)
        out = []
        for (w, _, _), host in zip(staged, hosts, strict=True):
            var = w.variable.copy(deep=False, data=host)
            data = encode_for_template(
                w.name, var, info.arrays[w.name], info.zarr_format, self._on_out_of_range
            )
            out.append(EncodedWrite(w.name, data, w.selection, w.chunks))
        return out

    def _after_encode(
        self,
        job: cf.Future[list[EncodedWrite]],
        info: TemplateInfo,
        fut: WriteFuture,
        staged: list[Any],
        nbytes: int,
    ) -> None:
        err = job.exception()
        if err is not None:
            if not fut.copied.done():
                fut.copied.set_exception(err)
            self._finish(fut, staged, nbytes, None, err)
            return
        encoded = job.result()
        arrays = {w.name: async_array(info.zarr_arrays[w.name]) for w in encoded}
        t0 = time.perf_counter()
        io = asyncio.run_coroutine_threadsafe(write_encoded(encoded, arrays), io_loop())

        def done(io: cf.Future[tuple[int, int]]) -> None:
            e = io.exception()
            if e is not None:
                self._finish(fut, staged, nbytes, None, e)
                return
            nchunks, nb = io.result()
            result = RegionWriteResult(
                region=fut.region,
                variables=tuple(w.name for w in encoded),
                nchunks=nchunks,
                nbytes=nb,
                seconds=time.perf_counter() - t0,
            )
            self._finish(fut, staged, nbytes, result, None)

        io.add_done_callback(done)

    def _finish(
        self,
        fut: WriteFuture,
        staged: list[Any],
        nbytes: int,
        result: RegionWriteResult | None,
        err: BaseException | None,
    ) -> None:
        for _, s, pool in staged:
            pool.give(s.host)
        self._budget.release(nbytes)
        if err is not None:
            if not isinstance(err, ZarrWriteError):
                wrapped = WriteFailedError(
                    f"background write of region {fut.region} failed: {err!r}"
                )
                wrapped.__cause__ = err
                err = wrapped
            with self._lock:
                self.failed.append(fut)
                self._unreported.append(err)
                self._inflight.discard(fut.committed)
            fut.committed.set_exception(err)
            return
        with self._lock:
            self.written += 1
            self._inflight.discard(fut.committed)
        fut.committed.set_result(result)  # type: ignore[arg-type]

    def _raise_unreported(self) -> None:
        with self._lock:
            if not self._unreported:
                return
            first, rest = self._unreported[0], self._unreported[1:]
            self._unreported = []
        if rest:
            first.add_note(f"{len(rest)} more background write(s) failed; see writer.failed")
        raise first

    def _check_open(self) -> None:
        if self._closed:
            raise ZarrWriteError("this StreamWriter is closed")
