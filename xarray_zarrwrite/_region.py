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
import pandas as pd
import xarray as xr

from ._grid import ChunkGrid
from ._store import check_node_name
from .codecs.partial import requantises_on_partial_write
from .errors import (
    DimensionMismatchError,
    DtypeCastError,
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
        if full and target is not None and _template_holds(var, target, info):
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


def _template_holds(var: xr.Variable, target: ArrayInfo, info: TemplateInfo) -> bool:
    """Whether the template's stored coordinate equals ``var`` already (decoded, NaN/NaT
    equal): then a region covering it in full need not write it again."""
    arr = info.zarr_arrays.get(target.name)
    if arr is None or var.size > 1_000_000:  # large coordinates: just write them
        return False
    try:
        stored = xr.decode_cf(
            xr.Dataset({target.name: xr.Variable(target.dims, arr[...], _cf_attrs(target))})
        )[target.name].variable
    except Exception:  # noqa: BLE001 - undecodable: write ours rather than guess
        return False
    return bool(stored.shape == var.shape and stored.equals(var))  # type: ignore[no-untyped-call]


def _cf_attrs(target: ArrayInfo) -> dict[str, Any]:
    return {k: v for k, v in target.encoding.items() if k != "dtype"}


def _check_time_encoding(ds: xr.Dataset, info: TemplateInfo) -> None:
    for name, var in ds.variables.items():
        target = info.arrays.get(str(name))
        if target is None:
            continue
        theirs, ours = target.encoding.get("calendar"), var.encoding.get("calendar")
        if theirs is not None and ours is not None and _calendar(theirs) != _calendar(ours):
            raise TimeEncodingError(
                f"variable {name!r} uses calendar {ours!r} but the template pins {theirs!r}; "
                "convert the data (ds.convert_calendar) before writing"
            )
        want_dt = target.dtype.kind == "M"
        is_cftime = var.dtype == object and _is_cftime(var)
        if want_dt and is_cftime:
            raise TimeEncodingError(
                f"variable {name!r} holds cftime dates but the template stores numpy datetimes "
                f"(calendar {theirs!r}); convert with ds.convert_calendar('standard')"
            )
        if (var.dtype.kind == "M") != want_dt and not (is_cftime or target.dtype == object):
            raise TimeEncodingError(
                f"variable {name!r} has dtype {var.dtype} but the template stores "
                f"{target.dtype}; time variables must be written as times"
            )


def _calendar(name: str) -> str:
    name = str(name).lower()
    return "proleptic_gregorian" if name in {"standard", "gregorian"} else name


def _is_cftime(var: xr.Variable) -> bool:
    sample = var.values.flat[0] if var.size else None
    return type(sample).__module__.startswith("cftime")


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
        fast = _contiguous_run(axis, labels)
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


def label_positions(
    axis: pd.Index,
    labels: pd.Index,
    dim: str,
    *,
    prefix: str = "",
    where: str = "the template's axis",
) -> np.ndarray:
    """Positions of ``labels`` on ``axis``; every label must be valid, unique and on the axis.

    Raises
    ------
    RegionLabelError
        Naming the first missing (NaN/NaT), duplicated or off-axis label, with the nearest
        labels of the axis; ``prefix`` (e.g. the source file) starts the message.
    """
    if labels.hasnans:
        raise RegionLabelError(f"{prefix}coordinate {dim!r} holds missing labels (NaN/NaT)")
    if not labels.is_unique:
        dup = labels[labels.duplicated()][0]
        raise RegionLabelError(
            f"{prefix}label {dup!r} appears more than once in coordinate {dim!r}"
        )
    try:
        pos: np.ndarray = axis.get_indexer(labels)
    except (TypeError, ValueError) as e:
        raise RegionLabelError(
            f"{prefix}labels of {dim!r} ({labels.dtype}) cannot be compared with those of "
            f"{where} ({axis.dtype}): {e}"
        ) from e
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        bad = labels[int(missing[0])]
        raise RegionLabelError(
            f"{prefix}label {bad!r} of coordinate {dim!r} is not on {where}"
            f"{_nearest(axis, bad)}; every label must be one of its labels "
            f"({axis[0]!r} .. {axis[-1]!r}, {len(axis)} labels; {missing.size} of the "
            f"{len(labels)} given are not)"
        )
    return pos


def _contiguous_run(axis: pd.Index, labels: pd.Index) -> slice | None:
    """The common case in O(n): the labels equal a run of the template's (unique) axis."""
    try:
        start = axis.get_loc(labels[0])
        if not isinstance(start, int | np.integer):
            return None
        run = np.asarray(axis[start : start + len(labels)])
        if len(run) == len(labels) and bool((run == np.asarray(labels)).all()):
            return slice(int(start), int(start) + len(labels))
    except (KeyError, TypeError, ValueError):
        pass
    return None


def _nearest(axis: pd.Index, label: Any) -> str:
    try:
        i = int(axis.searchsorted(label))
    except (TypeError, ValueError):
        return ""
    near = [repr(axis[j]) for j in (i - 1, i) if 0 <= j < len(axis)]
    return f" (nearest template labels: {', '.join(near)})" if near else ""


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
    if set(dims) != set(target.dims) or len(dims) != len(target.dims):
        missing = sorted(set(target.dims) - set(dims))
        extra = sorted(set(dims) - set(target.dims))
        raise DimensionMismatchError(
            f"variable {name!r} has dimensions {dims} but the template has {target.dims}"
            + (f"; missing {missing}" if missing else "")
            + (f"; extra {extra}" if extra else "")
        )
    if dims != target.dims:
        var = var.transpose(*target.dims)
    _check_dtype(name, var.dtype, target)
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


def _check_dtype(name: str, dtype: np.dtype[Any], target: ArrayInfo) -> None:
    want = target.dtype
    ok = (
        np.can_cast(dtype, want, casting="safe")
        or (dtype.kind == "f" and want.kind == "f")  # narrowing floats is a documented choice
        or (dtype.kind == "M" and want.kind == "M")
        or (dtype.kind == "m" and want.kind == "m")
        or (want == object and dtype == object)
    )
    if dtype.kind in "OSUTV" and dtype != want:
        ok = False
    if not ok:
        raise DtypeCastError(
            f"variable {name!r} has dtype {dtype} which cannot be cast safely to the template's "
            f"{want}; convert it first (e.g. ds[{name!r}].astype({str(want)!r})) if that is "
            "intended"
        )


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
