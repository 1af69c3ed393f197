"""A task's region, assembled in place: one buffer per variable, each source's slice read
straight into its part of it (by byte range for indexed sources, through xarray otherwise).

No ``concat``, no per-source Dataset of the task's size: the decoded bytes are written once,
into the array that :func:`~xarray_zarrwrite.api.write_region` then encodes.

With files per member, a piece also says which members of the source (``msrc``) go to which
members of the region (``mdst``); a source holding its member as a scalar coordinate fills one
member (the variable's leading dimension, as ``expand_dims`` puts it).
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ._index import RangeReader, VarIndex, decoded_dtype, read_decoded
from ._plan import Piece
from ._sources import SourceSpec, _load, _open_cached, select_variables

if TYPE_CHECKING:
    from ._task import TaskPayload


class _Buffers:
    """The task's output arrays, allocated when the first piece says their dims and dtype."""

    def __init__(
        self, region: dict[str, tuple[int, int]], time_dim: str, member: str | None = None
    ) -> None:
        self.region = region
        self.time_dim = time_dim
        self.member = member
        self.t0 = region.get(time_dim, (0, 0))[0]
        self.m0 = region[member][0] if member is not None else 0
        self.arrays: dict[str, np.ndarray] = {}
        self.dims: dict[str, tuple[str, ...]] = {}
        self.meta: dict[str, tuple[dict[str, Any], dict[str, Any]]] = {}

    def get(
        self, name: str, dims: Sequence[str], shape: Sequence[int], dtype: np.dtype[Any]
    ) -> np.ndarray:
        if name not in self.arrays:
            full = tuple(self._extent(d, n) for d, n in zip(dims, shape, strict=True))
            self.arrays[name] = np.empty(full, dtype=dtype)
            self.dims[name] = tuple(dims)
        return self.arrays[name]

    def _extent(self, dim: str, n: int) -> int:
        a, b = self.region.get(dim, (0, n))
        return b - a

    def sel(self, dims: Sequence[str], shape: Sequence[int], piece: Piece) -> tuple[slice, ...]:
        """The source box of a piece: ``src`` along time, ``msrc`` along the member
        dimension, the region elsewhere."""
        out = []
        for d, n in zip(dims, shape, strict=True):
            if d == self.time_dim and piece.src is not None:
                out.append(slice(*piece.src))
            elif d == self.member and piece.mdst is not None:
                out.append(slice(*(piece.msrc or (0, 1))))
            else:
                out.append(slice(*self.region.get(d, (0, n))))
        return tuple(out)

    def dst(self, dims: Sequence[str], piece: Piece, squeeze: bool = False) -> tuple[Any, ...]:
        """Where a piece goes in a buffer of ``dims`` (``squeeze``: its member as an index,
        for a source without the member dimension)."""
        out: list[Any] = []
        for d in dims:
            if d == self.time_dim and piece.dst is not None:
                out.append(slice(piece.dst[0] - self.t0, piece.dst[1] - self.t0))
            elif d == self.member and piece.mdst is not None:
                a, b = piece.mdst[0] - self.m0, piece.mdst[1] - self.m0
                out.append(a if squeeze else slice(a, b))
            else:
                out.append(slice(None))
        return tuple(out)

    def dataset(self) -> xr.Dataset:
        out = {}
        for name, arr in self.arrays.items():
            attrs, encoding = self.meta.get(name, ({}, {}))
            out[name] = xr.Variable(self.dims[name], arr, attrs=attrs, encoding=encoding)
        return xr.Dataset(out)


def assemble(payload: TaskPayload) -> xr.Dataset:
    """The task's region as a Dataset of NumPy buffers (no coordinates: the client placed
    every source, and the region is given to the write explicitly)."""
    task = payload.task
    bufs = _Buffers(dict(task.region), payload.time_dim, task.member_dim)
    for piece, spec in zip(task.pieces, payload.sources, strict=True):
        index = spec.index
        indexed = {n: index.variables[n] for n in task.variables if index and n in index.variables}
        if indexed:
            assert index is not None
            with RangeReader(index) as reader:
                for name, vi in indexed.items():
                    expand = name in task.along_member and bufs.member not in vi.dims
                    _read_indexed(bufs, reader, name, vi, piece, expand)
        rest = [n for n in task.variables if n not in indexed]
        if rest:
            _read_xarray(payload, bufs, spec, rest, piece)
    return bufs.dataset()


def _read_indexed(
    bufs: _Buffers,
    reader: RangeReader,
    name: str,
    vi: VarIndex,
    piece: Piece,
    expand: bool,
) -> None:
    """One variable of a piece by byte range (``expand``: the source holds its member as a
    scalar coordinate; the buffer has the member dimension first)."""
    dims: tuple[str, ...] = vi.dims
    if expand:
        assert bufs.member is not None
        dims = (bufs.member, *vi.dims)
    shape = (1, *vi.shape) if expand else vi.shape
    out = bufs.get(name, dims, shape, decoded_dtype(vi))
    if bufs.dims[name] != dims:
        raise ValueError(f"{name!r} has dims {dims} here and {bufs.dims[name]} elsewhere")
    box = bufs.sel(vi.dims, vi.shape, piece)
    read_decoded(reader, vi, box, out[bufs.dst(dims, piece, squeeze=expand)])


def _read_xarray(
    payload: TaskPayload,
    bufs: _Buffers,
    spec: SourceSpec,
    names: Sequence[str],
    piece: Piece,
) -> None:
    """The variables ``names`` of one piece through xarray (sources the index cannot
    describe: NetCDF3, GRIB, Zarr, Datasets, ...), each copied into its buffer."""
    ds = _open_cached(payload.run_id, spec)
    present = [n for n in names if n in ds.data_vars]
    ds = select_variables(ds, spec.label, payload.variables, payload.drop_variables)[present]
    ds = expand_member(ds, bufs.member)
    extra = [c for c in ds.coords if c not in names]
    part = _load(ds.drop_vars(extra).isel(piece_selection(ds, bufs.region, payload, piece)))
    for name in names:
        if name not in part.variables:
            continue
        var = part.variables[name]
        dims = tuple(map(str, var.dims))
        out = bufs.get(name, dims, _source_shape(ds, dims), var.dtype)
        if name not in bufs.meta:
            encoding = dict(var.encoding)
            encoding.pop("calendar", None)  # checked on the client against the template's
            bufs.meta[name] = (dict(var.attrs), encoding)
        values = var.transpose(*bufs.dims[name]).values
        out[bufs.dst(bufs.dims[name], piece)] = values


def expand_member(ds: xr.Dataset, member: str | None) -> xr.Dataset:
    """``ds`` with its scalar member coordinate made a dimension of its data variables."""
    if member is not None and member not in ds.dims and member in ds.coords:
        return ds.expand_dims(member)
    return ds


def piece_selection(
    ds: xr.Dataset, region: Mapping[str, tuple[int, int]], payload: TaskPayload, piece: Piece
) -> dict[Hashable, slice]:
    """What ``isel`` takes of a source (expanded by :func:`expand_member`) for a piece."""
    member = payload.task.member_dim
    sel: dict[Hashable, slice] = {}
    for d, (a, b) in region.items():
        if d == payload.time_dim:
            if piece.src is not None:
                sel[d] = slice(*piece.src)
        elif d == member and piece.mdst is not None:
            sel[d] = slice(*(piece.msrc or (0, 1)))
        else:
            sel[d] = slice(a, b)
    return {d: s for d, s in sel.items() if d in ds.dims}


def _source_shape(ds: xr.Dataset, dims: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(ds.sizes[d]) for d in dims)
