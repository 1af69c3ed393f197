"""Write-behind buffering for zarr stores: :class:`BufferedStore`.

``BufferedStore`` wraps any zarr v3 store. ``set`` queues the value in a buffer bounded in
bytes and returns; background tasks on zarr's IO event loop write the queue to the wrapped store
with bounded concurrency, retrying transient errors. Reads see queued writes, ``flush()`` is a
barrier, and background failures are raised to the writer instead of being lost.

This module is the zarr ``Store`` overlay (get/set, read-your-writes; listing is in
:mod:`._listing`); the queue itself is
:class:`._engine._WriteBehind`, one per buffer, and ``BufferedStore`` objects are views on it
(``with_read_only`` returns a view on the same buffer, so zarr's read-only copies made for
``mode="r"`` see queued writes too).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any, Self

from zarr.abc.store import Store

from .._compat import Buffer, WrapperStore, default_buffer_prototype
from ..errors import ReadOnlyStoreError
from ._engine import _WriteBehind
from ._keys import _dir_prefix, _resolve_target, _slice
from ._listing import _Listing
from ._records import _MIB, BufferedStoreStats, _owned, _parse_config
from ._retry import is_transient_error

if TYPE_CHECKING:
    from collections.abc import AsyncGenerator, Iterable, Mapping
    from types import TracebackType

    from zarr.abc.store import ByteRequest

    from .._compat import BufferPrototype
    from .._store import StoreLike

__all__ = ["BufferedStore", "BufferedStoreStats", "_owned", "is_transient_error"]


class BufferedStore(_Listing, WrapperStore[Store]):
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
        the bound is accepted once the buffer is empty. Default: ``config`` key
        ``max_buffer_mb`` (256), read when the store is constructed, like the three below.
    concurrency
        Most writes to the wrapped store in flight at once. Default: ``config`` key
        ``concurrency``.
    retries
        Retries of an operation that failed with a transient error (see
        :func:`is_transient_error`); ``retries=3`` makes at most 4 attempts per key. This is
        the only retry loop of a buffered write. Default: ``config`` key ``retries``.
    retry_backoff
        First retry delay in seconds; doubled at each retry (at most 30 s), with +-50 % jitter.
        Default: ``config`` key ``retry_backoff``.
    write_through
        Make ``set`` and ``delete`` wait until their own write is durable (or failed, which they
        then raise): no write-behind, but the same retries, coalescing, ordering and bounded
        concurrency. Copies made by pickling, or inherited by a forked process, write through.

    Raises
    ------
    InputError
        Invalid options (given, or read from the config), or ``storage_options`` with a Store
        target. A ``ValueError``.
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

    **Errors belong to the writer.** An operation that fails for good in the background
    (permanent error, or transient after ``retries`` retries, ``retries + 1`` attempts in all)
    is raised exactly once, as a :class:`WriteFailedError` naming the key(s), the true number of
    attempts, and chained to the original exception, on the writing side: by the next ``set``,
    ``delete``, ``delete_dir`` or ``clear``, by ``flush()``/``flush_sync()``, or by
    ``close()``/``aclose()`` (and so by the context managers), whichever comes first. It is never
    dropped and never only logged. ``set`` and ``delete`` queue their own value before raising
    (the error is about earlier writes). Reads (``get``, ``get_partial_values``, ``exists``,
    ``getsize``, ``is_empty``, ``list*``) never raise nor consume it, and neither does anything
    done through a read-only view (its ``flush`` only waits, its ``close`` only closes): a reader
    such as ``xr.open_zarr`` must not take a failure and leave the writer believing everything
    landed. ``WriteFailedError`` is not a ``ValueError``, so xarray's ``consolidated=None``
    fallback cannot swallow it. The failed keys stay in :attr:`failed_keys` until a later write
    of the same key succeeds; ``flush(strict=True)`` raises while any remain, even after they
    were reported. Later writes are still accepted and written after a failure. Reads after a
    failure see what the wrapped store holds (the failed value is not served from memory).
    Transient errors of reads are retried by the same policy; an error that has had its retries
    is marked so that :func:`is_transient_error` says ``False`` for it and no outer retry loop
    (a region write's) multiplies the attempts.

    **Pickling** captures the wrapped store and the configuration only, so that dask workers can
    use the store. When pickled from any thread but zarr's IO thread, pending writes are flushed
    first (their failures are raised then), so the copy reads what this store wrote. The copy
    has an empty buffer of its own and writes through (``write_through=True``): in a worker
    process nothing would flush it before the task that wrote is reported done. A forked child
    process likewise starts with an empty buffer, no failures and fresh locks (reset by
    ``os.register_at_fork``), and writes through; it can create BufferedStores of its own.

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
        max_buffer_mb: float | None = None,
        concurrency: int | None = None,
        retries: int | None = None,
        retry_backoff: float | None = None,
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
        # (dask's tokenize pickles a store that xr.open_zarr reads from: a read-only view waits
        # for the queue like flush() does, but leaves the writer's failures to the writer)
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
    def wrapped(self) -> Store:
        """The store this buffer writes to."""
        return self._store

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

        On a read-only view (a reader) this only waits: failures belong to the writer.

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
        await self._core.run(self._core.flush, strict, report=not self.read_only)

    def flush_sync(self, *, strict: bool = False) -> None:
        """Blocking :meth:`flush`; not callable on zarr's IO loop.

        Parameters
        ----------
        strict
            As for :meth:`flush`.
        """
        self._core.call_sync("flush_sync", self._core.flush, strict, report=not self.read_only)

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
            Called on zarr's IO loop while writes are still queued; use
            ``await store.aclose()``.
        """
        core = self._core
        if self.read_only:
            self._store.close()
            return
        if core.on_loop_thread():
            if core.has_pending():
                raise RuntimeError(
                    "BufferedStore.close() cannot block on zarr's IO event loop while writes are "
                    "pending; use `await store.aclose()` or `async with store:`"
                )
            try:
                core.raise_failures()
            finally:
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
        self._core.raise_failures()

    async def clear(self) -> None:
        # docstring inherited
        self._check_writable()
        await self._core.run(self._core.delete_prefix, "", self._store.clear)
        self._core.raise_failures()

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
