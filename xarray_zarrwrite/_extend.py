"""Growing a template along one dimension (time): :func:`extend` and :func:`append`.

``extend`` writes, in this order, so that no reader or writer ever sees a shape without its
labels: the new coordinate labels (whole chunks, computed from the axis' regular step, so two
processes extending at once write the same bytes), then the shape of every array with that
dimension (the coordinate last), then the root document (consolidated metadata, when the
template has it; else a root attribute recording the extent, so that every writer's cached
template sees the change). The metadata steps run under a lock object in the store (see
:mod:`._storelock`) and only ever grow: two concurrent extends converge to the larger extent.

``append`` extends as far as the data's last label, then writes the data's region. Pieces that
cover part of a write unit (a day into a 5-day chunk), and the unit at the archive's end, are
written under a per-unit lock by read-modify-write (stored part + new part, stored as one whole
unit), so two appenders of one unit never lose each other's data.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
import zarr.api.asynchronous as zasync
from zarr.storage import StorePath

from ._check import PARTIAL_ATTR
from ._compat import regular_chunk_shape, sync
from ._encoding import cf_encoding, encode_variable
from ._grid import ChunkGrid
from ._groups import NOT_CONSOLIDATED, consolidate_root
from ._store import ensure_writable, leaves_no_empty_root, resolve_store
from ._storelock import lock_key, store_locks
from .errors import ExtentError, TemplateNotFoundError

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from ._store import StoreLike

__all__ = ["EXTENT_ATTR", "extend", "next_labels"]

#: Root attribute recording the extent of templates without consolidated metadata.
EXTENT_ATTR = "xarray_zarrwrite:extent"


@leaves_no_empty_root(0)
def extend(
    store: StoreLike,
    dim: str = "time",
    *,
    until: Any = None,
    steps: int | None = None,
    freq: Any = None,
    exist_ok: bool = False,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> xr.Dataset:
    """Grow the template in ``store`` along ``dim`` (its last labels first, never shrinking).

    Parameters
    ----------
    store
        The template: path, fsspec URL, ``fsspec.FSMap`` or zarr Store.
    dim
        The dimension to grow; it must have a regular coordinate (a fixed time step, or a
        number step).
    until
        The new last label, inclusive: a string (``"2001-01-31"``), ``pandas.Timestamp``,
        ``numpy.datetime64``, ``datetime``, a ``cftime`` date for cftime axes, or a number for
        numeric axes. It must be on the axis' step. Equal to the current last label: nothing
        to do.
    steps
        How many labels to add (instead of ``until``), counted from the extent at the call.
    freq
        The axis' step (pandas offset alias, or a number for numeric axes); inferred from the
        labels when None.
    exist_ok
        With True, an ``until`` the axis already reaches (another process extended further,
        say) is not an error: nothing to do. Concurrent extends converge either way.
    group
        The template's group inside ``store`` (default: the root).
    storage_options
        fsspec options for URLs.

    Returns
    -------
    xarray.Dataset
        The grown template, opened lazily.

    Raises
    ------
    ExtentError
        ``until`` is before the current last label (extend never shrinks; see
        ``exist_ok``), off the axis' step, or of another kind than the axis; ``steps`` is not a positive integer; the
        step cannot be inferred. Nothing is changed.
    TemplateNotFoundError
        No template (or no coordinate ``dim``) at ``store``.
    WriteFailedError
        The extend lock could not be taken (another extend holds it for long).
    """
    target = resolve_store(store, storage_options=storage_options, group=group)
    ensure_writable(target)
    path = ""  # the store is rooted at the group
    index, coord = _read_axis(target, path, dim)
    count = _count(index, until, steps, freq, exist_ok)
    if count > 0:
        sync(_commit(target, path, dim, index, coord, count, freq))
        refresh_root(store, group, storage_options)
    return _open(target, path)


def refresh_root(store: StoreLike, group: str | None, storage_options: Any) -> None:
    """After a change in ``group``: the root's consolidated metadata (if any) covers the
    group too, as ``to_zarr(group=)`` writes it, so it is written again."""
    if group is None:
        return
    base = resolve_store(store, storage_options=storage_options)
    if zarr.open_group(base, mode="r").metadata.consolidated_metadata is not None:
        consolidate_root(base)


def _open(store: Store, path: str) -> xr.Dataset:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message=NOT_CONSOLIDATED, category=RuntimeWarning)
        ds: xr.Dataset = xr.open_zarr(store, group=path or None, consolidated=None, chunks=None)
    return ds


def _read_axis(store: Store, path: str, dim: str) -> tuple[pd.Index, xr.Variable]:
    """The current labels of ``dim`` (read from the arrays, not consolidated metadata)."""
    try:
        ds = xr.open_zarr(store, group=path or None, consolidated=False, chunks=None)
    except (FileNotFoundError, KeyError) as e:
        raise TemplateNotFoundError(f"no Zarr template at {store} (group {path!r}): {e}") from e
    if dim not in ds.indexes:
        raise TemplateNotFoundError(
            f"the template at {store} has no coordinate {dim!r} to extend "
            f"(coordinates: {sorted(map(str, ds.indexes))})"
        )
    index = ds.indexes[dim]
    if len(index) == 0 or not index.is_monotonic_increasing or not index.is_unique:
        raise ExtentError(f"coordinate {dim!r} must be increasing to be extended")
    return index, ds[dim].variable


def _offset(index: pd.Index, freq: Any) -> Any:
    """The axis' step: a pandas offset for time axes, a number for numeric ones."""
    if isinstance(index, pd.DatetimeIndex | xr.CFTimeIndex):
        if freq is None and len(index) >= 3:
            freq = xr.infer_freq(index)  # type: ignore[no-untyped-call]  # xarray: unannotated
        elif freq is None and len(index) == 2 and isinstance(index, pd.DatetimeIndex):
            freq = index[1] - index[0]
        if freq is None:
            raise ExtentError(
                f"cannot infer the step of the axis from its {len(index)} label(s) "
                f"({index[0]!r} ..); pass freq="
            )
        try:
            return pd.tseries.frequencies.to_offset(freq)
        except ValueError as e:
            raise ExtentError(f"freq={freq!r} is not a pandas offset alias: {e}") from e
    values = np.asarray(index)
    if values.dtype.kind not in "iuf":
        raise ExtentError(f"only time and numeric axes can be extended, not {values.dtype} labels")
    if freq is not None:
        return values.dtype.type(freq)
    diffs = np.diff(values)
    if len(diffs) == 0 or not np.allclose(diffs, diffs[0], rtol=1e-9, atol=0):
        raise ExtentError("the axis' step is irregular or unknown; pass freq= (a number)")
    return diffs[0]


def next_labels(index: pd.Index, count: int, freq: Any = None) -> pd.Index:
    """The ``count`` labels that follow ``index`` at its step (``freq``, or inferred)."""
    step = _offset(index, freq)
    last = index[-1]
    if isinstance(index, pd.DatetimeIndex):
        out = pd.date_range(last, periods=count + 1, freq=step)[1:]
        return out.as_unit(index.unit)
    if isinstance(index, xr.CFTimeIndex):
        cal = index.calendar
        rng = xr.date_range(last, periods=count + 1, freq=step, calendar=cal, use_cftime=True)
        return rng[1:]
    values = np.asarray(index)
    return pd.Index(last + step * np.arange(1, count + 1, dtype=values.dtype))


def _count(index: pd.Index, until: Any, steps: int | None, freq: Any, exist_ok: bool) -> int:
    """How many labels to add to reach ``until`` (or ``steps``)."""
    if (until is None) == (steps is None):
        raise ExtentError("give exactly one of until= (the new last label) or steps=")
    if steps is not None:
        if isinstance(steps, bool) or not isinstance(steps, int | np.integer) or steps < 0:
            raise ExtentError(f"steps must be a non-negative integer, got {steps!r}")
        _offset(index, freq)  # the step must be known
        return int(steps)
    stop = _as_label(index, until)
    last = index[-1]
    if stop < last and exist_ok and stop in index:
        return 0
    if stop < last:
        raise ExtentError(
            f"until={until!r} is before the axis' last label {last!r}: extend never shrinks "
            "an archive"
        )
    if stop == last:
        return 0
    step = _offset(index, freq)
    if isinstance(index, pd.DatetimeIndex | xr.CFTimeIndex):
        n = _count_dates(index, stop, step)
    else:
        ratio = (stop - last) / step
        n = round(float(ratio))
        if not math.isclose(ratio, n, rel_tol=1e-9):
            n = -1
    if n <= 0 or next_labels(index, n, step)[-1] != stop:
        raise ExtentError(
            f"until={until!r} is not on the axis' step {step!r} from its last label {last!r}"
        )
    return n


def _count_dates(index: pd.Index, stop: Any, step: Any) -> int:
    if isinstance(index, pd.DatetimeIndex):
        return len(pd.date_range(index[-1], stop, freq=step)) - 1
    cal = index.calendar
    rng = xr.date_range(index[-1], stop, freq=step, calendar=cal, use_cftime=True)
    return len(rng) - 1


def _as_label(index: pd.Index, value: Any) -> Any:
    """``value`` as a label comparable with the axis', or :class:`ExtentError`."""
    try:
        if isinstance(index, pd.DatetimeIndex):
            if isinstance(value, int | float | np.number):
                raise TypeError("a number is not a date")
            return pd.Timestamp(value).as_unit(index.unit)
        if isinstance(index, xr.CFTimeIndex):
            if isinstance(value, str):
                cal = index.calendar
                return xr.date_range(value, periods=1, calendar=cal, use_cftime=True)[0]
            if getattr(value, "calendar", index.calendar) != index.calendar:
                raise TypeError(f"a date in calendar {value.calendar!r}")
            _ = value < index[-1]
            return value
        if not isinstance(value, int | float | np.number) or isinstance(value, bool):
            raise TypeError(f"{type(value).__name__} is not a number")
        return np.asarray(index).dtype.type(value)
    except (TypeError, ValueError, OverflowError) as e:
        raise ExtentError(
            f"until={value!r} is not a label of the axis' kind ({type(index[-1]).__name__}, "
            f"last label {index[-1]!r}): {e}"
        ) from e


async def _commit(
    store: Store,
    path: str,
    dim: str,
    index: pd.Index,
    coord: xr.Variable,
    count: int,
    freq: Any,
) -> None:
    """Under the extend lock: labels, then shapes, then the root document."""
    async with store_locks(store, [root_lock(path, dim)]):
        grp = await zasync.open_group(store, path=path, mode="r+", use_consolidated=False)
        axis = await grp.getitem(dim)
        assert isinstance(axis, zarr.AsyncArray)
        have = int(axis.shape[0])
        want = max(have, len(index) + count)
        if want > have:
            await _write_labels(store, path, dim, axis, index, coord, want, freq)
        full = index.append(next_labels(index, want - len(index), freq))
        partial = await _resize_all(grp, dim, want, full)
        await write_root(store, path, partial=partial, extent={dim: want})


def root_lock(path: str, dim: str) -> str:
    """The lock serialising changes of the template's extent and root attributes."""
    return lock_key(f"{path}/{dim}" if path else dim, "extend")


async def _write_labels(
    store: Store,
    path: str,
    dim: str,
    axis: zarr.AsyncArray[Any],
    index: pd.Index,
    coord: xr.Variable,
    want: int,
    freq: Any,
) -> None:
    """Write the labels of every chunk from the one holding the old end, as whole chunks
    (past ``want`` too, up to the chunk's end: deterministic, invisible outside the shape)."""
    have = int(axis.shape[0])
    (c,) = regular_chunk_shape(axis)
    start = (min(have, len(index)) // c) * c
    stop = math.ceil(want / c) * c
    known = index[start : len(index)]
    labels = known.append(next_labels(index, stop - len(index), freq))
    var = xr.Variable((dim,), np.asarray(labels), coord.attrs, cf_encoding(coord.encoding))
    fmt = axis.metadata.zarr_format
    encoded = np.asarray(encode_variable(var, dim, fmt).values).astype(axis.dtype, copy=False)
    key = f"{path}/{dim}" if path else dim
    view: zarr.AsyncArray[Any] = zarr.AsyncArray(
        axis.metadata.update_shape((stop,)),
        StorePath(store, key),
        config={"write_empty_chunks": True},
    )
    await view.setitem(slice(start, stop), encoded)


def _dims_of(arr: zarr.AsyncArray[Any]) -> tuple[str, ...]:
    meta = arr.metadata
    names = getattr(meta, "dimension_names", None)
    if names is None:
        names = meta.attributes.get("_ARRAY_DIMENSIONS") or ()
    return tuple(str(n) for n in names)


def label_text(value: Any) -> str:
    """A label as the partial record spells it (ISO 8601 for dates, cftime included)."""
    if isinstance(value, pd.Timestamp | np.datetime64):
        return str(pd.Timestamp(value).isoformat())
    iso = getattr(value, "isoformat", None)
    return str(iso()) if callable(iso) else str(value)


Record = dict[str, dict[str, list[str]]]


async def _resize_all(grp: zarr.AsyncGroup, dim: str, want: int, labels: pd.Index) -> Record:
    """Every array with ``dim`` to ``want`` along it (never smaller), the coordinate last.

    Returns the partial-unit record of the units that were the edge at the old end and are
    now partial (stored in part: their new labels are missing), for :func:`check` and for
    ``convert``/``append`` to complete them.
    """
    arrays = [a async for _, a in grp.arrays()]
    record: Record = {}
    for last in (False, True):
        for arr in arrays:
            dims = _dims_of(arr)
            if dim not in dims or (arr.basename == dim) != last:
                continue
            axis = dims.index(dim)
            old = arr.shape[axis]
            if old >= want:
                continue
            shape = tuple(want if i == axis else n for i, n in enumerate(arr.shape))
            await arr.resize(shape, delete_outside_chunks=False)
            unit = regular_chunk_shape(arr)[axis]
            if old % unit and not last:
                stop = min((old // unit + 1) * unit, want)
                missing = [label_text(x) for x in labels[old:stop]]
                grid = ChunkGrid.from_array(arr)
                grid = dataclasses.replace(grid, shape=shape)
                edge = old // unit
                keys = (grid.key(c) for c in grid.all_coords() if c[axis] == edge)
                record[arr.basename] = dict.fromkeys(keys, missing)
    return record


def _merge(old: Any, new: Record, done: Record) -> Record:
    """``old`` plus the missing labels of ``new``, less the labels of ``done``."""
    out: Record = {}
    if isinstance(old, Mapping):
        for var, units in old.items():
            if isinstance(units, Mapping):
                out[str(var)] = {str(k): [str(x) for x in v] for k, v in units.items()}
    for var, units in new.items():
        for key, labels in units.items():
            have = out.setdefault(var, {}).setdefault(key, [])
            have.extend(x for x in labels if x not in have)
    for var, units in done.items():
        for key, labels in units.items():
            left = [x for x in out.get(var, {}).get(key, []) if x not in set(labels)]
            if left:
                out[var][key] = left
            else:
                out.get(var, {}).pop(key, None)
    return {var: dict(sorted(units.items())) for var, units in sorted(out.items()) if units}


async def write_root(
    store: Store,
    path: str,
    *,
    partial: Record | None = None,
    done: Record | None = None,
    extent: Mapping[str, int] | None = None,
) -> None:
    """Update the root document last: the partial-unit record (``partial`` added, ``done``
    removed), the extent attribute (templates without consolidated metadata: it is what
    tells writers that the template changed), then the consolidated metadata if any.

    Called under :func:`root_lock`.
    """
    grp = await zasync.open_group(store, path=path, mode="r+", use_consolidated=None)
    consolidated = grp.metadata.consolidated_metadata is not None
    attrs = dict(grp.attrs)
    update: dict[str, Any] = {}
    if partial or done:
        record = _merge(attrs.get(PARTIAL_ATTR), partial or {}, done or {})
        if record != attrs.get(PARTIAL_ATTR, {}):
            update[PARTIAL_ATTR] = record
    if extent and not consolidated:
        update[EXTENT_ATTR] = {**dict(attrs.get(EXTENT_ATTR) or {}), **extent}
    if update:
        attrs.update(update)
        if PARTIAL_ATTR in update and not update[PARTIAL_ATTR]:
            del attrs[PARTIAL_ATTR]
        plain = await zasync.open_group(store, path=path, mode="r+", use_consolidated=False)
        plain.metadata.attributes.clear()  # replaced whole: a finished record is removed
        await plain.update_attributes(attrs)
    if consolidated:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated", category=UserWarning)
            await zasync.consolidate_metadata(store, path=path)
