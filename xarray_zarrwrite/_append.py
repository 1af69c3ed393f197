"""``append``: grow the template as far as the data reaches, then write the data's region.

Appends need not be chunk-sized. A piece of the data that covers only part of a write unit
(a day into a 5-day chunk), and any piece of the unit at the archive's end (which an extend
may turn from a whole edge unit into a partial one), is written by read-modify-write (stored
part + new part, stored as one whole unit) under a lock object for that unit, so two appenders
of one unit never lose each other's data. Whole units are written as by :func:`write_region`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import xarray as xr

from ._check import read_record
from ._compat import sync
from ._extend import extend, label_text, refresh_root, root_lock, write_root
from ._open import load_template
from ._region import RegionPlan, plan_region
from ._store import ensure_writable, leaves_no_empty_root, resolve_store
from ._storelock import acquire_locks, lock_key, release_locks, store_locks, unit_of_lock
from ._template import _as_dataset
from ._write import RegionWriteResult
from .errors import RegionAlignmentError, RegionLabelError

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from ._store import StoreLike
    from .codecs.cf import OnOutOfRange

__all__ = ["append"]


@leaves_no_empty_root(1)
def append(
    ds: xr.Dataset | xr.DataArray,
    store: StoreLike,
    *,
    dim: str = "time",
    freq: Any = None,
    group: str | None = None,
    storage_options: Mapping[str, Any] | None = None,
    on_out_of_range: OnOutOfRange = "raise",
) -> RegionWriteResult:
    """Write ``ds`` into the template, extending it along ``dim`` first as needed.

    The template grows (see :func:`~xarray_zarrwrite.extend`) until its last ``dim`` label is
    the data's last; then the data is written into its region. Appends of any size work: a
    write unit the data covers in part is completed by read-modify-write under a lock, so that
    concurrent appenders never lose data. Labels between the old end and the data's first
    label stay unwritten (fill value) until written.

    Parameters
    ----------
    ds
        The new data: a Dataset, or a named DataArray, with a ``dim`` coordinate on the
        template's step.
    store
        The template: path, fsspec URL, ``fsspec.FSMap`` or zarr Store.
    dim
        The dimension to grow (default ``"time"``).
    freq
        The axis' step, when it cannot be inferred from the template's labels.
    group
        The template's group inside ``store`` (default: the root).
    storage_options
        fsspec options for URLs.
    on_out_of_range
        As for :func:`~xarray_zarrwrite.write_region`.

    Returns
    -------
    RegionWriteResult

    Raises
    ------
    RegionError
        Or a subclass, for data that does not fit the template (nothing written).
    ExtentError
        The data's labels are not on the axis' step.
    """
    from .api import write_region  # api imports the accessor, which imports us

    ds = _as_dataset(ds)
    target = resolve_store(store, storage_options=storage_options, group=group)
    ensure_writable(target)
    if dim not in ds.indexes:
        raise RegionLabelError(
            f"the data has no {dim!r} coordinate to append along "
            f"(coordinates: {sorted(map(str, ds.indexes))})"
        )
    info = load_template(target)
    if dim not in info.indexes:
        raise RegionLabelError(f"the template has no {dim!r} coordinate to append along")
    last = ds.indexes[dim][-1]
    if last > info.indexes[dim][-1]:
        extend(target, dim, until=last, freq=freq, exist_ok=True)
    for _ in range(3):  # another process may extend between our plan and our write
        planned = plan_region(ds, load_template(target), "auto", safe_chunks=False)
        keys = _unit_locks(planned)
        if not keys:
            result = write_region(ds, target, on_out_of_range=on_out_of_range)
        else:
            try:
                result = _locked_write(ds, target, keys, dim, on_out_of_range)
            except _Replan:
                continue
        refresh_root(store, group, storage_options)  # a group: the root's metadata too
        assert isinstance(result, RegionWriteResult)  # numpy, or dask computed: the result
        return result
    raise RegionAlignmentError("the template kept changing while appending; try again")


class _Replan(Exception):
    """The template changed while waiting for the locks: plan again."""


def _locked_write(
    ds: xr.Dataset, target: Store, keys: list[str], dim: str, on_out_of_range: OnOutOfRange
) -> Any:
    from .api import write_region

    held = sync(acquire_locks(target, keys))
    try:
        # the locks were taken for this plan: if the template grew meanwhile, plan again
        now = _unit_locks(plan_region(ds, load_template(target), "auto", safe_chunks=False))
        if sorted(now) != sorted(keys):
            raise _Replan
        result = write_region(ds, target, safe_chunks=False, on_out_of_range=on_out_of_range)
        _complete_record(ds, target, keys, dim)
        return result
    finally:
        sync(release_locks(target, held))


def _complete_record(ds: xr.Dataset, target: Store, keys: list[str], dim: str) -> None:
    """Drop the labels just written from the partial-unit record of the units written."""
    record = read_record(target)
    written = [label_text(x) for x in ds.indexes[dim]]
    done: dict[str, dict[str, list[str]]] = {}
    for key in keys:
        name, unit = unit_of_lock(key)
        if unit in record.get(name, {}):
            done.setdefault(name, {})[unit] = written
    if done:

        async def update() -> None:
            async with store_locks(target, [root_lock("", dim)]):
                await write_root(target, "", done=done)

        sync(update())


def _unit_locks(planned: RegionPlan) -> list[str]:
    """Lock keys of the write units that need read-modify-write: those the data covers in
    part, and the unit at the array's end (an extend can make it partial)."""
    keys: list[str] = []
    for w in planned.writes:
        for piece in w.grid.pieces(w.selection):
            if not piece.whole or w.grid.is_edge(piece.coords):
                keys.append(lock_key(w.name, w.grid.key(piece.coords)))
    return keys
