"""Region planning: where a piece of data goes in a template, validated before any write.

:func:`plan_region` is pure: it looks at the data and the template's :class:`TemplateInfo`
and either returns a :class:`RegionPlan` or raises a typed error. Nothing here touches a
store, so bad input can never write a byte.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ._grid import ChunkGrid
from ._store import check_node_name
from ._validate import check_dims, check_dtype, contiguous_run, is_cftime, label_positions
from ._validate import same_calendar as _same_calendar
from .codecs.partial import requantises_on_partial_write
from .errors import (
    DimensionMismatchError,
    RegionAlignmentError,
    RegionError,
    RegionLabelError,
    TimeEncodingError,
    VariableNotInTemplateError,
)

if TYPE_CHECKING:
    from ._open import ArrayInfo, TemplateInfo

__all__ = [
    "RegionPlan",
    "VariableWrite",
    "template_grid",
    "label_positions",
    "plan_region",
]


@dataclass(frozen=True)
class VariableWrite:
    """One variable of a region write: where it goes and what it holds."""

    name: str
    variable: xr.Variable  # in the template's dimension order, not yet encoded
    selection: tuple[slice, ...]  # in the template array
    grid: ChunkGrid  # the template array's grid (write units: shards when sharded)

    @property
    def chunks(self) -> tuple[int, ...]:
        """Shape of the template array's write unit (the shard when sharded, else the chunk)."""
        return self.grid.unit

    @property
    def nchunks(self) -> int:
        """Write units (stored objects) this variable touches."""
        return self.grid.count(self.selection)

    @property
    def nbytes(self) -> int:
        return int(self.variable.nbytes)


@dataclass(frozen=True)
class RegionPlan:
    """A validated region write."""

    region: Mapping[str, slice]
    writes: tuple[VariableWrite, ...]
    skipped: tuple[str, ...]  # coordinates already in the template

    @property
    def nchunks(self) -> int:
        return sum(w.nchunks for w in self.writes)

    @property
    def nbytes(self) -> int:
        return sum(w.nbytes for w in self.writes)


def plan_region(
    ds: xr.Dataset,
    info: TemplateInfo,
    region: Mapping[str, Any] | str = "auto",
    *,
    safe_chunks: bool = True,
) -> RegionPlan:
    """Validate ``ds`` against the template and return where every variable goes.

    Raises
    ------
    RegionError
        Or one of its subclasses: labels off-grid, duplicated, unsorted or outside the
        template (:class:`RegionLabelError`), misaligned boundaries
        (:class:`RegionAlignmentError`), variables missing from the template
        (:class:`VariableNotInTemplateError`), wrong dims or shapes
        (:class:`DimensionMismatchError`), unsafe casts (:class:`DtypeCastError`), time
        encodings that differ (:class:`TimeEncodingError`).
    """
    for name in list(ds.variables) + list(ds.dims):
        check_node_name(name, "variable or dimension")
    if not ds.data_vars:
        raise RegionError("the dataset has no data variables to write")
    for name in ds.data_vars:
        if name not in info.arrays:
            raise VariableNotInTemplateError(
                f"data variable {name!r} is not in the template (template variables: "
                f"{sorted(n for n, a in info.arrays.items() if not a.is_coord)}); add it to the "
                "template or drop it from the data"
            )
    for dim, n in ds.sizes.items():
        if dim not in info.sizes:
            raise DimensionMismatchError(
                f"dimension {dim!r} of the data is not a dimension of the template "
                f"(template dimensions: {dict(info.sizes)})"
            )
        if n == 0:
            raise RegionError(f"the data has zero length along {dim!r}; nothing to write")
    _check_time_encoding(ds, info)
    slices = _resolve_region(ds, info, region)
    partial = {d for d, s in slices.items() if (s.start, s.stop) != (0, info.sizes[d])}

    writes: list[VariableWrite] = []
    skipped: list[str] = []
    for name, var in ds.variables.items():
        name = str(name)
        target = info.arrays.get(name)
        if name in ds.indexes:
            skipped.append(name)  # the template's labels; checked against the data above
            continue
        # A non-index coordinate along dimensions this region covers in full is written
        # unless the template already holds exactly these values (the coordinates of a
        # dimension the template extended, e.g. valid_time(time, step), start empty).
        full = target is not None and target.is_coord and not set(map(str, var.dims)) & partial
        if full and target is not None and info.holds_coordinate(name, var):
            skipped.append(name)
            continue
        if target is None:
            if name in ds.coords:
                skipped.append(name)  # a coordinate the template does not have: not ours
                continue
            raise VariableNotInTemplateError(f"variable {name!r} is not in the template")
        grid = template_grid(info, name)
        write = _plan_variable(name, var, target, grid, slices, safe_chunks)
        if not safe_chunks and requantises_on_partial_write(info.zarr_arrays[name]):
            _check_whole_units_for_lossy(name, target.dims, write.selection, grid)
        writes.append(write)
    if not writes:
        raise RegionError("none of the data's variables is a data variable of the template")
    return RegionPlan(region=slices, writes=tuple(writes), skipped=tuple(skipped))


def _check_time_encoding(ds: xr.Dataset, info: TemplateInfo) -> None:
    for name, var in ds.variables.items():
        target = info.arrays.get(str(name))
        if target is None:
            continue
        theirs, ours = target.encoding.get("calendar"), var.encoding.get("calendar")
        if not _same_calendar(theirs, ours, numpy_dates=target.dtype.kind == "M"):
            raise TimeEncodingError(
                f"variable {name!r} uses calendar {ours!r} but the template pins {theirs!r}; "
                "convert the data (ds.convert_calendar) before writing"
            )
        want_dt = target.dtype.kind == "M"
        cftime_dates = is_cftime(var)
        if want_dt and cftime_dates:
            raise TimeEncodingError(
                f"variable {name!r} holds cftime dates but the template stores numpy datetimes "
                f"(calendar {theirs!r}); convert with ds.convert_calendar('standard')"
            )
        if (var.dtype.kind == "M") != want_dt and not (cftime_dates or target.dtype == object):
            raise TimeEncodingError(
                f"variable {name!r} has dtype {var.dtype} but the template stores "
                f"{target.dtype}; time variables must be written as times"
            )


def _resolve_region(
    ds: xr.Dataset, info: TemplateInfo, region: Mapping[str, Any] | str
) -> dict[str, slice]:
    if isinstance(region, str):
        if region != "auto":
            raise RegionError(f"region must be 'auto' or a mapping of dim to slice, got {region!r}")
        region = {}
    elif not isinstance(region, Mapping):
        raise RegionError(f"region must be 'auto' or a mapping of dim to slice, got {region!r}")
    for dim in region:
        if dim not in ds.dims:
            raise RegionError(
                f"region names {dim!r}, which is not a dimension of the data "
                f"(dimensions: {list(ds.dims)})"
            )
    out: dict[str, slice] = {}
    for d, n in ds.sizes.items():
        dim = str(d)
        given = region.get(dim, "auto")
        if isinstance(given, str) and given == "auto":
            out[dim] = _auto_slice(ds, info, dim)
            continue
        out[dim] = _explicit_slice(dim, given, n, info.sizes[dim])
        if dim in ds.indexes and dim in info.indexes:
            have = ds.indexes[dim]
            want = info.indexes[dim][out[dim]]
            if not have.equals(want):
                diff = int(np.flatnonzero(np.asarray(have) != np.asarray(want))[0])
                raise RegionLabelError(
                    f"region {dim}={out[dim]} holds template label {want[diff]!r} at position "
                    f"{diff} but the data has {have[diff]!r}; use region='auto' or fix the slice"
                )
    return out


def _explicit_slice(dim: str, given: Any, n: int, size: int) -> slice:
    if not isinstance(given, slice) or given.step not in (None, 1):
        raise RegionError(f"region[{dim!r}] must be a slice with step 1, got {given!r}")
    start = 0 if given.start is None else given.start
    stop = start + n if given.stop is None else given.stop
    ints = all(isinstance(v, int | np.integer) and not isinstance(v, bool) for v in (start, stop))
    if not ints or start < 0 or stop > size or start >= stop:
        raise RegionError(
            f"region[{dim!r}]={given!r} is outside the template's {dim!r} axis [0, {size}); "
            "give non-negative integer bounds within it"
        )
    if stop - start != n:
        raise DimensionMismatchError(
            f"region[{dim!r}]={given!r} spans {stop - start} elements but the data has {n} "
            f"along {dim!r}"
        )
    return slice(int(start), int(stop))


def _auto_slice(ds: xr.Dataset, info: TemplateInfo, dim: str) -> slice:
    n, size = ds.sizes[dim], info.sizes[dim]
    if dim not in info.indexes or dim not in ds.indexes:
        if n == size:
            return slice(0, size)
        why = "the template" if dim not in info.indexes else "the data"
        raise RegionError(
            f"cannot find the region along {dim!r}: {why} has no {dim!r} coordinate and the "
            f"data covers {n} of {size} elements; pass region={{{dim!r}: slice(start, stop)}}"
        )
    labels, axis = ds.indexes[dim], info.indexes[dim]
    if not labels.hasnans and labels.is_unique:
        fast = contiguous_run(axis, labels)
        if fast is not None:
            return fast
    pos = label_positions(axis, labels, dim)
    steps = np.diff(pos)
    if (steps != 1).any():
        i = int(np.flatnonzero(steps != 1)[0])
        a, b = labels[i], labels[i + 1]
        if steps[i] <= 0:
            raise RegionLabelError(
                f"labels of {dim!r} are not in the template's order: {b!r} follows {a!r}; "
                f"sort the data with ds.sortby({dim!r})"
            )
        raise RegionLabelError(
            f"labels of {dim!r} have a gap: {b!r} follows {a!r} but the template has "
            f"{int(steps[i]) - 1} label(s) between them (first: {axis[pos[i] + 1]!r}); a region "
            "must be a contiguous run of template labels"
        )
    return slice(int(pos[0]), int(pos[0]) + n)


def template_grid(info: TemplateInfo, name: str) -> ChunkGrid:
    """The grid of template array ``name``: from its zarr array (shards included) if bound."""
    arr = info.zarr_arrays.get(name)
    if arr is not None:
        return ChunkGrid.from_array(arr)
    a = info.arrays[name]
    return ChunkGrid(shape=a.shape, chunks=a.chunks)


def _plan_variable(
    name: str,
    var: xr.Variable,
    target: ArrayInfo,
    grid: ChunkGrid,
    slices: Mapping[str, slice],
    safe_chunks: bool,
) -> VariableWrite:
    dims = tuple(map(str, var.dims))
    check_dims(name, dims, target.dims)
    if dims != target.dims:
        var = var.transpose(*target.dims)
    check_dtype(name, var.dtype, target.dtype)
    selection = tuple(slices[d] for d in target.dims)
    if safe_chunks:
        _check_aligned(name, target.dims, selection, grid)
        if var.chunks is not None:
            for axis, (dim, sel) in enumerate(zip(target.dims, selection, strict=True)):
                offset = sel.start
                for c in var.chunksizes[dim][:-1]:
                    offset += c
                    if not grid.on_boundary(axis, offset):
                        raise _alignment_error(name, dim, axis, offset, grid, dask=True)
    return VariableWrite(name, var, selection, grid)


def _check_whole_units_for_lossy(
    name: str, dims: tuple[str, ...], selection: tuple[slice, ...], grid: ChunkGrid
) -> None:
    bad = grid.misaligned(selection)
    if bad is not None:
        axis, index = bad
        raise RegionAlignmentError(
            f"variable {name!r} is stored with a lossy bit-packing codec (bits= or max_error=) "
            f"that quantises each {grid.unit_name} as a whole: a write covering only part of a "
            f"{grid.unit_name} (index {index} along {dims[axis]!r}, {grid.unit_name} size "
            f"{grid.unit[axis]}) would re-quantise the values already stored and break the "
            "error bound, so it is refused even with safe_chunks=False. Write whole "
            f"{grid.unit_name}s (merge the stored part with the new data yourself and rewrite "
            f"the whole {grid.unit_name})"
        )


def _check_aligned(
    name: str, dims: tuple[str, ...], selection: tuple[slice, ...], grid: ChunkGrid
) -> None:
    bad = grid.misaligned(selection)
    if bad is not None:
        axis, index = bad
        raise _alignment_error(name, dims[axis], axis, index, grid, dask=False)


def _alignment_error(
    name: str, dim: str, axis: int, index: int, grid: ChunkGrid, *, dask: bool
) -> RegionAlignmentError:
    unit, size = grid.unit_name, grid.unit[axis]
    lo, hi = grid.nearest_boundaries(axis, index)
    what = "a dask chunk boundary" if dask else "the region boundary"
    inner = f", inner chunks {grid.chunks[axis]}" if grid.sharded else ""
    fix = (
        f"rechunk the data so dask chunks along {dim!r} are multiples of {size}"
        if dask
        else f"align the region to whole {unit}s, or pass safe_chunks=False if no other "
        f"writer can touch the same {unit}s (unsafe with concurrent writers)"
    )
    return RegionAlignmentError(
        f"variable {name!r}: {what} at index {index} along {dim!r} is not on a {unit} "
        f"boundary of the template ({unit} size {size}{inner}); the nearest aligned choices "
        f"are {lo} and {hi}; {fix}"
    )
