"""Non-blocking writes: :class:`StreamWriter` and :class:`WriteFuture`.

``write`` validates on the caller's thread (the same plan as :func:`write_region`), reserves
bytes from the in-flight budget (blocking when it is full: backpressure, never growth), starts
the snapshot, and returns. Everything else (waiting for the copy, CF encoding, the zarr codec
pipeline, store I/O) runs in the background: the snapshot and encoding on a small thread pool,
the chunk writes on zarr's IO loop, sharing the process-wide in-flight limit of region writes.

Errors are never lost, and never misplaced: each failed write's future holds its own
exception (a StreamWriter over a :class:`~xarray_zarrwrite.BufferedStore` puts through the
buffer's queue and waits for its own keys to be durable, so no put reports another's failure
and ``committed`` means durable in the target), and every background error is raised once more
on the caller's thread, at the next ``write``, ``flush`` or ``close``. Writes still pending at
interpreter exit are flushed with a warning.

Writes to overlapping regions are applied in submission order. Each write checks, before its
first put, that the template it was planned with is still the one in the store (the freshness
gate); if it was replaced, the step's snapshot is planned again against the new template, which
either places it at the right labels or fails its future with a typed error.
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import functools
import os
import threading
import time
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import xarray as xr

from ._assembly import Assembler, needs_assembly, plan_steps, unit_keys
from ._compat import async_array, io_loop, sync
from ._empty import check_write_empty_chunks, configured
from ._icechunk import stream_target
from ._open import (
    StaleTemplateError,
    TemplateInfo,
    load_template,
    load_template_gated,
    load_template_with_root,
)
from ._region import RegionPlan
from ._runtime import runtime
from ._staging import HostPool, Staged, stage
from ._step_arrays import arrays_dataset, native, take
from ._store import ensure_writable, leaves_no_empty_root, resolve_store
from ._stream_futures import (
    _CHARGE,
    UnclosedWriterWarning,
    WriteFuture,
    _Budget,
    _overlaps,
    _register_exit_hook,
)
from ._template import _as_dataset
from ._write import EncodedWrite, RegionWriteResult, encode_for_template, write_encoded
from .errors import WriteFailedError, ZarrWriteError
from .storage import BufferedStore
from .storage._durable import DurablePuts

if TYPE_CHECKING:
    from types import TracebackType

    from zarr.abc.store import Store

    from ._store import StoreLike
    from .codecs.cf import OnOutOfRange

__all__ = ["StreamWriter", "UnclosedWriterWarning", "WriteFuture"]


def _durable(store: Store) -> Store:
    """The store a StreamWriter puts to: over a :class:`BufferedStore`, a view whose writes go
    through the buffer's one queue (ordered with every other write through it) and return once
    durable, raising their own failure; so ``committed`` means durable in the target, and a
    failed key fails exactly the future of the write that put it."""
    if isinstance(store, BufferedStore):
        return DurablePuts(store)
    return store


def _retry_policy(store: Store) -> tuple[int, float] | None:
    """A :class:`BufferedStore`'s (retries, backoff), which its writers' puts keep."""
    if isinstance(store, BufferedStore):
        cfg = store._core.config
        return int(cfg.retries), float(cfg.retry_backoff)
    return None


class StreamWriter:
    """Non-blocking, bounded-memory region writes into a template.

    Parameters
    ----------
    store
        The template's store (path, fsspec URL or zarr Store, e.g. a
        :class:`~xarray_zarrwrite.BufferedStore`).
    max_inflight_mb
        Memory the pipeline may hold: each queued step is charged 1.5 times its raw size (its
        snapshot plus encoding buffers) until committed, and each open write unit of assembled
        steps 1.5 times its stored size (plus one byte per element) until written; ``write``
        blocks when in-flight writes fill the budget, and raises
        :class:`~xarray_zarrwrite.errors.BudgetTooSmallError` when the open units alone
        would exceed it (only later steps can complete them: waiting could not help).
    storage_options
        fsspec options for URLs.
    safe_chunks, on_out_of_range
        As for :func:`~xarray_zarrwrite.write_region`.
    threads
        Threads that wait for copies and CF-encode (compression runs in zarr's pool).
    time_dim
        The dimension along which partial units record the labels they lack (the one steps
        arrive along; variables without it use their first dimension).
    branch, message, commit_every
        With an Icechunk ``Repository`` as ``store``: the branch to commit to (default
        ``"main"``), the commit message, and a commit after every ``commit_every`` calls to
        ``write`` (made when the next step arrives, once the earlier ones are written);
        ``close`` commits the rest, a ``with`` block that raises commits nothing more. An
        Icechunk ``Session`` is written to and committed by the caller. See :doc:`/icechunk`.
    group
        The template's group inside ``store`` (``"a/b"``), as for
        :func:`~xarray_zarrwrite.write_region`; read it back with
        ``xr.open_zarr(store, group=...)``. For local, fsspec and memory stores; to buffer
        a group, give a :class:`~xarray_zarrwrite.BufferedStore` rooted at the group instead.
    borrow
        Encode host (NumPy) data straight from the caller's arrays instead of snapshotting
        them first: no copy (less memory traffic, one less pass over every step), but the
        arrays are borrowed until the step is committed (``fut.copied`` resolves then, not at
        once): the caller must not modify them before. Device data is always snapshotted, and
        steps held for chunk assembly are copied into their unit regardless.
    write_empty_chunks
        As in :func:`~xarray_zarrwrite.write_region`: ``False`` does not store a write unit
        whose every value is the fill value (and records it, so
        :func:`~xarray_zarrwrite.check` counts it written); None follows the template's
        default (``to_template(write_empty_chunks=)``, else True).

    Notes
    -----
    A step that covers only part of a write unit (chunk, or shard when sharded) is assembled
    in memory: each unit is encoded and written once, when the last of its steps arrives (in
    any order; a step written twice replaces the earlier one), or at ``flush``/``close`` as a
    partial unit listed by :func:`~xarray_zarrwrite.check`. A later writer merges with it.

    Examples
    --------
    >>> with StreamWriter("out.zarr", max_inflight_mb=512) as writer:  # doctest: +SKIP
    ...     for step in model_steps():
    ...         writer.write(step)
    """

    @leaves_no_empty_root(1)
    def __init__(
        self,
        store: StoreLike,
        *,
        max_inflight_mb: float = 512,
        storage_options: Mapping[str, Any] | None = None,
        safe_chunks: bool = True,
        on_out_of_range: OnOutOfRange = "raise",
        threads: int = 2,
        time_dim: str = "time",
        branch: str | None = None,
        message: str | None = None,
        commit_every: int | None = None,
        group: str | None = None,
        borrow: bool = False,
        write_empty_chunks: bool | None = None,
    ) -> None:
        if not (isinstance(max_inflight_mb, int | float) and max_inflight_mb > 0):
            raise ZarrWriteError(f"max_inflight_mb must be positive, got {max_inflight_mb!r}")
        self._write_empty_chunks = check_write_empty_chunks(write_empty_chunks, store)
        store, self._commits = stream_target(store, branch, message, commit_every)
        self.store = resolve_store(store, storage_options=storage_options, group=group)
        ensure_writable(self.store)
        # over a BufferedStore, puts go through its queue (its retries, once: see _durable)
        self._retry = _retry_policy(self.store)
        self._target = _durable(self.store)
        self.info: TemplateInfo = load_template(self._target)
        self._safe_chunks = safe_chunks
        self._borrow = borrow
        self._on_out_of_range = on_out_of_range
        self._budget = _Budget(int(max_inflight_mb * 2**20))
        self._pool = cf.ThreadPoolExecutor(threads, thread_name_prefix="xzw-stage")
        self._pid = os.getpid()
        self._lock = threading.Lock()
        self._inflight: set[cf.Future[Any]] = set()
        self._recent: list[WriteFuture] = []  # not yet done, in submission order
        self._unreported: list[BaseException] = []
        self.failed: list[WriteFuture] = []
        self.written = 0
        self._closed = False
        self._assembler = Assembler(
            self._target, lambda: self.info, self._budget, self._settle, time_dim
        )
        self._assembler.retry = self._retry
        self._assembler.write_empty_chunks = self._write_empty_chunks
        runtime.live.add(self)
        _register_exit_hook()

    # -- public API ---------------------------------------------------------------------------
    def write(self, ds: xr.Dataset | xr.DataArray, *, region: Any = "auto") -> WriteFuture:
        """Validate, snapshot and queue ``ds``; returns at once with a :class:`WriteFuture`.

        The template is checked for freshness before the write's first put (a template
        replaced since it was read is read again, and the step re-planned against it). Writes
        to overlapping regions are applied in the order of their ``write`` calls.

        Raises
        ------
        ZarrWriteError
            Invalid data (nothing queued), or a background error of an earlier write.
        """
        self._check_open()
        self._raise_unreported()
        if self._commits is not None:  # Icechunk: commit the previous commit_every steps
            self._commits.before_write(self)
        ds = native(_as_dataset(ds))
        plan, info, verify, root = self._plan(ds, region)
        if needs_assembly(plan) or self._assembler.is_open(unit_keys(plan)):
            return self._write_assembled(plan, info, root)
        # charged for its snapshot plus the encoder's transient buffers (measured: the
        # pipeline's resident memory peaks at about 1.4x the snapshots in flight)
        nbytes = int(plan.nbytes * _CHARGE)
        self._budget.acquire(nbytes, self._raise_unreported)
        fut = WriteFuture(plan.region)
        try:
            staged = [(w, *self._stage(w.variable.data)) for w in plan.writes]
        except BaseException:
            self._budget.release(nbytes)
            raise
        with self._lock:
            self._recent = [f for f in self._recent if not f.done()]
            after = [f.committed for f in self._recent if _overlaps(f.region, fut.region)]
            self._recent.append(fut)
            self._inflight.add(fut.committed)
        # kept for a re-plan against a replaced template: coordinates, not the caller's data
        # (the snapshots stand in for the variables written)
        rest = ds.drop_vars([w.name for w in plan.writes if w.name in ds.data_vars])
        job = _Job(rest, region, plan, info, verify, staged, fut, nbytes, after)
        io = asyncio.run_coroutine_threadsafe(self._run(job), io_loop())
        io.add_done_callback(lambda io: self._after_run(io, job))
        return fut

    def _stage(self, data: Any) -> tuple[Staged, HostPool | None]:
        """Start the snapshot of ``data``; borrowed NumPy data is used as it is (no pool)."""
        if self._borrow and isinstance(data, np.ndarray):
            return Staged(data), None
        return stage(data)

    def _plan(self, ds: xr.Dataset, region: Any) -> tuple[RegionPlan, TemplateInfo, Verify, bytes]:
        """Plan with the cached template; an error is raised only after proving it current.
        Also returns the template's freshness token (assembled units are gated on it)."""
        info, root, verify = load_template_gated(self._target)
        try:
            return plan_steps(ds, info, region, self._safe_chunks), info, verify, root
        except ZarrWriteError:
            if verify is None:
                raise
            try:
                sync(verify())
            except StaleTemplateError:
                info, root = load_template_with_root(self._target)
                self.info = info
                return plan_steps(ds, info, region, self._safe_chunks), info, None, root
            raise

    def write_arrays(
        self,
        arrays: Mapping[str, Any],
        coords: Mapping[str, Any],
        *,
        region: Any = "auto",
    ) -> WriteFuture:
        """Write plain arrays (NumPy, CuPy, PyTorch, JAX, DLPack) at ``coords``, no xarray needed.

        Parameters
        ----------
        arrays
            ``{variable: array}``, each in the template's dimension order; any framework
            :meth:`write` accepts (torch CPU tensors are viewed as NumPy without a copy, CUDA
            tensors take the device snapshot path).
        coords
            ``{dimension: labels}`` of the step, e.g. ``{"time": [t]}``; a dimension not given
            is the template's full extent along it.
        region
            As for :meth:`write`.

        Returns
        -------
        WriteFuture

        Raises
        ------
        VariableNotInTemplateError
            A name is not a data variable of the template.
        DimensionMismatchError
            An array's number of dimensions or shape disagrees with the template and ``coords``.
        ZarrWriteError
            Any error :meth:`write` raises (labels, dtypes...); nothing is queued.
        """
        self._check_open()
        ds = arrays_dataset(self.info, arrays, coords)
        return self.write(ds, region=region)

    def _write_assembled(self, plan: RegionPlan, info: TemplateInfo, root: bytes) -> WriteFuture:
        """Queue a step for chunk assembly (see :mod:`xarray_zarrwrite._assembly`)."""
        fut = WriteFuture(plan.region)
        fut.assembled = True
        fut._flush = functools.partial(self._assembler.make_durable, fut)  # see result()
        with self._lock:
            self._recent = [f for f in self._recent if not f.done()]
            # earlier whole-unit writes of the region land first (earlier assembled steps are
            # in the same units already: waiting for them would wait for ourselves)
            after = [
                f.committed
                for f in self._recent
                if not f.assembled and _overlaps(f.region, fut.region)
            ]
            self._recent.append(fut)
            self._inflight.add(fut.committed)
        # device data: its snapshot starts now (D2H into pinned memory), and is assembled on
        # the host; NumPy data is borrowed until `copied`
        sources = [w.variable.data for w in plan.writes]
        staged = [stage(d) if not isinstance(d, np.ndarray) else None for d in sources]

        def encode() -> list[np.ndarray]:
            out = []
            for w, src, st in zip(plan.writes, sources, staged, strict=True):
                host = src if st is None else take(st)
                var = w.variable.copy(deep=False, data=host)
                target = info.arrays[w.name]
                out.append(
                    np.asarray(
                        encode_for_template(
                            w.name, var, target, info.zarr_format, self._on_out_of_range
                        )
                    )
                )
            return out

        try:
            self._assembler.register(
                plan, fut, encode, int(plan.nbytes), after, self._raise_unreported, root
            )
        except BaseException:
            with self._lock:
                self._inflight.discard(fut.committed)
                self._recent.remove(fut)
            for st in staged:
                if st is not None:
                    take(st)
            raise
        return fut

    def flush(self, timeout: float | None = None) -> None:
        """Write open units (partial), wait for every queued write; raise the first error.

        Units of assembled steps still open are written as partial units (fill values where
        no step arrived), listed as partial in the archive for :func:`~xarray_zarrwrite.check`
        and for a later writer, which merges with them.
        """
        self._assembler.flush()
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
        if self._pid != os.getpid():  # a forked child's copy: the parent's writes, not ours
            self._closed = True
            return
        if self._closed:
            self._raise_unreported()
            return
        try:
            self.flush()
            if self._commits is not None:
                self._commits.at_close()
        finally:
            self._closed = True
            self._assembler.close()
            self._pool.shutdown(wait=True)
            runtime.live.discard(self)

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
        if self._commits is not None:  # the body failed: commit nothing more
            self._commits.abandon()
        try:  # the body already failed: still flush, but let its exception win
            self.close()
        except Exception as bg:  # noqa: BLE001  (the body's exception wins)
            exc.add_note(f"also, a background write failed: {bg!r}")

    # -- pipeline -----------------------------------------------------------------------------
    async def _run(self, job: _Job) -> RegionWriteResult:
        """Snapshot, encode, wait for earlier writes to the region, gate, put (on the IO loop)."""
        loop = asyncio.get_running_loop()
        t0 = time.perf_counter()
        hosts = await loop.run_in_executor(self._pool, self._snapshot, job)
        encoded = await loop.run_in_executor(self._pool, self._encode, job.plan, job.info, hosts)
        if job.after:  # the same region, submitted earlier: theirs must land first
            await asyncio.gather(*map(asyncio.wrap_future, job.after), return_exceptions=True)
        plan, info, verify = job.plan, job.info, job.verify
        for _ in range(_REPLANS):
            arrays = {
                w.name: async_array(configured(info.zarr_arrays[w.name], self._write_empty_chunks))
                for w in encoded
            }
            try:
                nchunks, nb = await write_encoded(encoded, arrays, verify, self._retry)
                break
            except StaleTemplateError:  # replaced since planned: plan the snapshot again
                plan, info, encoded = await loop.run_in_executor(
                    self._pool, self._replan, job, hosts
                )
                verify = None
        else:  # pragma: no cover  (the template replaced again and again while we write)
            raise WriteFailedError(
                f"the template in {self.store} kept changing while region {job.fut.region} "
                "was written; nothing of it was written"
            )
        return RegionWriteResult(
            region=dict(plan.region),
            variables=tuple(w.name for w in encoded),
            nchunks=nchunks,
            nbytes=nb,
            seconds=time.perf_counter() - t0,
        )

    def _snapshot(self, job: _Job) -> list[np.ndarray]:
        try:
            hosts = [s.wait() for _, s, _ in job.staged]
        except BaseException as e:
            job.fut.copied.set_exception(e)
            raise
        if all(pool is not None for _, _, pool in job.staged):  # borrowed: at commit
            job.fut.copied.set_result(None)
        return hosts

    def _encode(
        self, plan: RegionPlan, info: TemplateInfo, hosts: list[np.ndarray]
    ) -> list[EncodedWrite]:
        out = []
        for w, host in zip(plan.writes, hosts, strict=True):
            var = w.variable.copy(deep=False, data=host)
            data = encode_for_template(
                w.name, var, info.arrays[w.name], info.zarr_format, self._on_out_of_range
            )
            out.append(EncodedWrite(w.name, data, w.selection, w.chunks))
        return out

    def _replan(
        self, job: _Job, hosts: list[np.ndarray]
    ) -> tuple[RegionPlan, TemplateInfo, list[EncodedWrite]]:
        """Plan the step's snapshot against the template as it is now (typed errors if the new
        template has no place for it)."""
        snap = job.ds.copy(deep=False)
        for w, host in zip(job.plan.writes, hosts, strict=True):
            snap[w.name] = w.variable.copy(deep=False, data=host)
        info = load_template(self._target)
        plan = plan_steps(snap, info, job.region, self._safe_chunks)
        if dict(plan.region) != job.fut.region:
            job.fut.region = dict(plan.region)
        new_hosts = [np.asarray(w.variable.data) for w in plan.writes]
        return plan, info, self._encode(plan, info, new_hosts)

    def _after_run(self, io: cf.Future[RegionWriteResult], job: _Job) -> None:
        err = io.exception()
        borrowed = any(pool is None for _, _, pool in job.staged)
        if err is not None and not borrowed and not job.fut.copied.done():
            job.fut.copied.set_exception(err)  # failed before its snapshot completed
        self._finish(job.fut, job.staged, job.nbytes, None if err else io.result(), err)
        if not job.fut.copied.done():  # borrowed: the caller's arrays are free once it is over
            job.fut.copied.set_result(None)

    def _finish(
        self,
        fut: WriteFuture,
        staged: list[Any],
        nbytes: int,
        result: RegionWriteResult | None,
        err: BaseException | None,
    ) -> None:
        for _, s, pool in staged:
            if pool is not None:  # None: the caller's borrowed array
                pool.give(s.host)
        self._budget.release(nbytes)
        self._settle(fut, result, err)

    def _settle(
        self, fut: WriteFuture, result: RegionWriteResult | None, err: BaseException | None
    ) -> None:
        """Complete ``fut`` (once: later calls are ignored) and account for it."""
        if fut.committed.done():
            return
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
        if self._pid != os.getpid():
            raise ZarrWriteError(
                "this StreamWriter was created in the parent of this forked process and "
                "cannot write here; create a new StreamWriter in the child"
            )
        if self._closed:
            raise ZarrWriteError("this StreamWriter is closed")


_REPLANS = 3


Verify = Callable[[], Coroutine[Any, Any, None]] | None


@dataclass
class _Job:
    """One queued write, as the background pipeline needs it."""

    ds: xr.Dataset
    region: Any
    plan: RegionPlan
    info: TemplateInfo
    verify: Verify
    staged: list[Any]
    fut: WriteFuture
    nbytes: int
    after: list[cf.Future[Any]] = field(default_factory=list)
