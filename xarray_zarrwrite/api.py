"""The public functions; ``ds.fastzarr.*`` and the command line are thin layers over these."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np
import xarray as xr
from zarr.abc.store import Store

from ._compat import async_array, sync
from ._dask import RegionTarget, gated, range_checked
from ._empty import check_write_empty_chunks, configured
from ._icechunk import is_icechunk, transactional, write_dask_forked
from ._open import StaleTemplateError, load_template, load_template_gated, load_template_with_root
from ._region import plan_region
from ._runtime import runtime
from ._staging import is_device_array, to_host
from ._store import ensure_writable, group_path, leaves_no_empty_root, resolve_store, store_key
from ._stream import StreamWriter, WriteFuture
from ._template import _as_dataset, open_template
from ._template import to_template as _to_template
from ._write import RegionWriteResult, encode_plan, write_encoded
from .errors import ZarrWriteError

if TYPE_CHECKING:
    from collections.abc import Callable, Coroutine

    from dask.delayed import Delayed

    from ._open import ArrayInfo, TemplateInfo
    from ._region import RegionPlan
    from ._store import StoreLike
    from .codecs.cf import OnOutOfRange

__all__ = ["RegionWriteResult", "open_template", "plan", "to_template", "write_region"]

F = TypeVar("F", bound="Callable[..., Any]")


def _refuse_empty_on_icechunk(fn: F) -> F:
    """``fn(ds, store, ..., write_empty_chunks=...)`` refusing ``write_empty_chunks=False``
    with an Icechunk target before anything else: Icechunk's ``to_template`` runs on a
    staging store, where the target's kind is no longer seen."""

    @functools.wraps(fn)
    def guarded(ds: Any, store: Any, *args: Any, **kwargs: Any) -> Any:
        check_write_empty_chunks(kwargs.get("write_empty_chunks"), store)
        return fn(ds, store, *args, **kwargs)

    return cast("F", guarded)


to_template = _refuse_empty_on_icechunk(_to_template)


def plan(
    ds: xr.Dataset | xr.DataArray,
    store: StoreLike,
    *,
    region: Mapping[str, Any] | str = "auto",
    safe_chunks: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    group: str | None = None,
) -> RegionPlan:
    """Validate ``ds`` against the template in ``store`` and return where it goes.

    Writes nothing. Useful to check data before a long run; :func:`write_region` does the
    same validation. ``group``: the template's group in ``store``, as for
    :func:`write_region`.
    """
    target = resolve_store(store, storage_options=storage_options, group=group)
    return plan_region(_as_dataset(ds), load_template(target), region, safe_chunks=safe_chunks)


@leaves_no_empty_root(1)
@transactional("write_region")
def write_region(
    ds: xr.Dataset | xr.DataArray,
    store: StoreLike,
    *,
    region: Mapping[str, Any] | str = "auto",
    safe_chunks: bool = True,
    storage_options: Mapping[str, Any] | None = None,
    compute: bool = True,
    on_out_of_range: OnOutOfRange = "raise",
    blocking: bool = True,
    group: str | None = None,
    branch: str | None = None,
    message: str | None = None,
    write_empty_chunks: bool | None = None,
) -> RegionWriteResult | Delayed | WriteFuture:
    """Write ``ds`` into its region of the template in ``store``.

    Every check runs before the first byte is written: variables must exist in the template
    with the same dimensions, dtypes must cast safely, coordinate labels must be a contiguous
    run of the template's labels, time encodings must agree, and (with ``safe_chunks``) every
    region boundary must fall on a chunk boundary so that concurrent writers never share a
    chunk. Coordinates already in the template (``lat``, ``lon``, bounds, the labels of the
    region) are skipped for you.

    NumPy-backed data is encoded, then every chunk of every variable is written concurrently
    under one process-wide in-flight limit. Dask-backed data is written by the workers that
    compute each block; nothing is gathered to the client.

    Parameters
    ----------
    ds
        The data: a Dataset, or a named DataArray.
    store
        The template's store: path, fsspec URL or zarr Store; or an Icechunk ``Session``
        (written through, the caller commits) or ``Repository`` (committed once when the
        write succeeds; nothing is committed if it fails). See :doc:`/icechunk`.
    region
        ``"auto"`` (found from coordinate labels) or ``{dim: slice(start, stop)}``; dims
        left out are found automatically.
    safe_chunks
        Refuse regions (and dask chunks) that do not fall on chunk boundaries. ``False``
        allows partial chunks, which zarr writes by read-modify-write: unsafe when other
        writers may touch the same chunk.
    storage_options
        fsspec options for URLs.
    compute
        With dask-backed data, ``False`` returns a :class:`dask.delayed.Delayed` that writes
        when computed and returns the :class:`RegionWriteResult`.
    on_out_of_range
        For CF-packed variables: ``"raise"`` (default) refuses values outside the packing
        range, ``"clip"`` clips them. Values never wrap around.
    blocking
        ``False`` validates, snapshots and returns a
        :class:`~xarray_zarrwrite.WriteFuture` at once; encoding and I/O run in the
        background through a per-store :class:`~xarray_zarrwrite.StreamWriter` (see
        :doc:`/streaming`).
    group
        The template's group inside ``store`` (``"a/b"``), as ``to_zarr(group=)``.
    branch, message
        With an Icechunk ``Repository``: the branch to commit to (default ``"main"``) and
        the commit message.
    write_empty_chunks
        As ``to_zarr(write_empty_chunks=)``: ``False`` does not store a write unit (the
        shard when sharded, else the chunk) whose every value is the fill value (all NaN for
        a NaN fill), and deletes an object stored earlier for it, so that it reads back as
        fill value; such units are recorded (one small object per call and array, under
        the array's ``.xzw_empty/`` prefix) so that :func:`~xarray_zarrwrite.check` counts
        them as written. ``None`` (the default): the template's default
        (``to_template(write_empty_chunks=)``, else True); ``True`` stores every unit. Not
        available with Icechunk targets (:class:`~.errors.IcechunkTargetError`). See
        :doc:`/templates`.

    Returns
    -------
    RegionWriteResult or dask.delayed.Delayed or WriteFuture

    Raises
    ------
    RegionError
        Or a subclass (see :mod:`xarray_zarrwrite.errors`) for invalid data; nothing written.
    TemplateNotFoundError
        No template at ``store``.
    WriteFailedError
        A store write failed after validation; :class:`~.errors.CommitConflictError` when
        an Icechunk commit conflicts with another commit to the same chunks.
    """
    ds = _as_dataset(ds)
    empty = check_write_empty_chunks(write_empty_chunks, store)
    target = resolve_store(store, storage_options=storage_options, group=group)
    ensure_writable(target)
    if not blocking:
        options = _WriterOptions(safe_chunks, on_out_of_range, empty)
        writer = _shared_writer(store, target, group, options)
        return writer.write(ds, region=region)
    opts = _Options(region, safe_chunks, compute, on_out_of_range, empty)
    info, root, verify = load_template_gated(target)
    try:
        return _write_region(ds, target, info, root, verify, opts)
    except StaleTemplateError:  # the template was replaced: start over with the new one
        info, root = load_template_with_root(target)
        return _write_region(ds, target, info, root, None, opts)


@dataclasses.dataclass(frozen=True)
class _Options:
    """The options of one blocking region write."""

    region: Mapping[str, Any] | str
    safe_chunks: bool
    compute: bool
    on_out_of_range: OnOutOfRange
    write_empty_chunks: bool | None


def _write_region(
    ds: xr.Dataset,
    target: Store,
    info: TemplateInfo,
    root: bytes,
    verify: Callable[[], Coroutine[Any, Any, None]] | None,
    opts: _Options,
) -> RegionWriteResult | Delayed:
    """One attempt with ``info`` (read under ``root``); ``verify`` (if given) proves ``info``
    current before writing."""
    t0 = time.perf_counter()
    try:
        planned = plan_region(ds, info, opts.region, safe_chunks=opts.safe_chunks)
        is_dask = any(w.variable.chunks is not None for w in planned.writes)
        encoded = [] if is_dask else encode_plan(_on_host(planned), info, opts.on_out_of_range)
    except ZarrWriteError:
        if verify is not None:
            sync(verify())  # the error must not come from a stale template
        raise
    if is_dask:
        if verify is not None:
            sync(verify())
        return _write_dask(planned, target, info, root, opts)
    arrays = {
        w.name: async_array(configured(info.zarr_arrays[w.name], opts.write_empty_chunks))
        for w in encoded
    }
    nchunks, nbytes = sync(write_encoded(encoded, arrays, verify))
    return RegionWriteResult(
        region=dict(planned.region),
        variables=tuple(w.name for w in encoded),
        nchunks=nchunks,
        nbytes=nbytes,
        seconds=time.perf_counter() - t0,
    )


def _on_host(planned: RegionPlan) -> RegionPlan:
    """``planned`` with device (CuPy) data copied to the host through the device snapshot:
    device arrays never reach ``np.asarray``."""
    if not any(is_device_array(w.variable.data) for w in planned.writes):
        return planned
    writes = tuple(
        dataclasses.replace(w, variable=w.variable.copy(deep=False, data=to_host(w.variable.data)))
        if is_device_array(w.variable.data)
        else w
        for w in planned.writes
    )
    return dataclasses.replace(planned, writes=writes)


@dataclasses.dataclass(frozen=True)
class _WriterOptions:
    """The options a shared non-blocking writer is made with (part of its key)."""

    safe_chunks: bool
    on_out_of_range: OnOutOfRange
    write_empty_chunks: bool | None


def _shared_writer(
    store: StoreLike, target: Store, group: str | None, options: _WriterOptions
) -> StreamWriter:
    """The one :class:`StreamWriter` of this process for (``store``, ``group``, options).

    Paths and URLs name a place: one writer serves every call with the same name (``target``,
    the store rooted at the group, names the place and the group). A Store object is its own
    thing (two stores on one place may differ in credentials, latency or fault injection), so
    it gets writers of its own, one per group: keyed by the caller's object, not by ``target``
    (a new object on every call when ``group`` is given), and kept with the entry so that its
    id cannot be reused by another store while the writer lives.
    """
    own = isinstance(store, Store)
    name = f"object:{id(store)}:{group_path(group) if group else ''}" if own else store_key(target)
    key = (name, *dataclasses.astuple(options))
    owners: dict[tuple[Any, ...], object] = runtime.slot("shared_writer_owners", dict)
    with runtime.lock:
        writer = runtime.writers.get(key)
        same_owner = owners.get(key) is store
    if writer is None or writer._closed or (own and not same_owner):
        writer = StreamWriter(target, **_stream_options(options))
        with runtime.lock:
            runtime.writers[key] = writer
            owners[key] = store
    assert isinstance(writer, StreamWriter)
    return writer


def _stream_options(options: _WriterOptions) -> dict[str, Any]:
    """Keywords of :class:`StreamWriter` for ``options``."""
    return {
        "safe_chunks": options.safe_chunks,
        "on_out_of_range": options.on_out_of_range,
        "write_empty_chunks": options.write_empty_chunks,
    }


def _write_dask(
    planned: RegionPlan,
    store: Store,
    info: TemplateInfo,
    root: bytes,
    opts: _Options,
) -> RegionWriteResult | Delayed:
    """Store every block through a :class:`~._dask.RegionTarget`: encoded on the worker that
    computed it, written with the same retries, limit and freshness gate as NumPy writes."""
    import dask.array as da
    from dask.delayed import delayed

    sources, targets, regions = [], [], []
    for w in planned.writes:
        arr = info.arrays[w.name]
        data = w.variable.data
        # one block per write-unit piece (the shard when sharded): no two tasks ever share a
        # write unit, even with safe_chunks=False (first and last pieces may be partial)
        grid = tuple(
            tuple(s.stop - s.start for s in w.grid.dim_pieces(axis, sel))
            for axis, sel in enumerate(w.selection)
        )
        if not isinstance(data, da.Array):
            data = da.from_array(data, chunks=grid)  # type: ignore[no-untyped-call]  # dask: unannotated
        elif not planned_aligned(data.chunks, grid):
            data = data.rechunk(grid)  # type: ignore[no-untyped-call]  # dask: unannotated
        sources.append(data)
        targets.append(_target(store, w.name, root, arr, opts))
        regions.append(w.selection)
    # every block range-checked before any block is stored (all or nothing)
    sources = range_checked(sources, [w.name for w in planned.writes], info, opts.on_out_of_range)
    # one freshness gate per compute call, not per block (a task every store waits for)
    into = gated(targets, info, root, regions)
    stored = da.store(sources, into, regions=regions, lock=False, compute=False)
    result = RegionWriteResult(
        region=dict(planned.region),
        variables=tuple(w.name for w in planned.writes),
        nchunks=planned.nchunks,
        nbytes=planned.nbytes,
    )
    if is_icechunk(store):  # blocks write through forks of the session, merged back into it
        return write_dask_forked(store, sources, targets, regions, result, opts.compute)
    task: Delayed = delayed(_after, pure=False)(stored, result)
    if opts.compute:
        done: RegionWriteResult = task.compute()  # type: ignore[no-untyped-call]  # dask: unannotated
        return done
    return task


def _target(store: Store, name: str, root: bytes, arr: ArrayInfo, opts: _Options) -> RegionTarget:
    """The ``da.store`` target of one variable."""
    return RegionTarget(
        store,
        name,
        root,
        arr.shape,
        arr.stored_dtype,
        opts.on_out_of_range,
        write_empty_chunks=opts.write_empty_chunks,
    )


def planned_aligned(have: tuple[tuple[int, ...], ...], grid: tuple[tuple[int, ...], ...]) -> bool:
    """True when every dask block boundary is a chunk boundary of the grid."""
    return all(set(np.cumsum(h)) <= set(np.cumsum(g)) for h, g in zip(have, grid, strict=True))


def _after(_: Any, result: RegionWriteResult) -> RegionWriteResult:
    return result
