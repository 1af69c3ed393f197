"""A task's region, assembled in place: one buffer per variable, each source's slice read
straight into its part of it (by byte range for indexed sources, through xarray otherwise).

No ``concat``, no per-source Dataset of the task's size: the decoded bytes are written once,
into the array that :func:`~xarray_zarrwrite.api.write_region` then encodes.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ._index import RangeReader, VarIndex, decoded_dtype, read_decoded
from ._sources import SourceSpec, _load, _open_cached, select_variables

if TYPE_CHECKING:
    from ._task import TaskPayload


class _Buffers:
    """The task's output arrays, allocated when the first piece says their dims and dtype."""

    def __init__(self, region: dict[str, tuple[int, int]], time_dim: str) -> None:
        self.region = region
        self.time_dim = time_dim
        self.t0 = region[time_dim][0]
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

    def sel(
        self, dims: Sequence[str], shape: Sequence[int], src: tuple[int, int]
    ) -> tuple[slice, ...]:
        """The source box of a piece: ``src`` along time, the region elsewhere."""
        return tuple(
            slice(*src) if d == self.time_dim else slice(*self.region.get(d, (0, n)))
            for d, n in zip(dims, shape, strict=True)
        )

    def dst(self, dims: Sequence[str], dst: tuple[int, int]) -> tuple[slice, ...]:
        return tuple(
            slice(dst[0] - self.t0, dst[1] - self.t0) if d == self.time_dim else slice(None)
            for d in dims
        )

    def dataset(self) -> xr.Dataset:
        out = {}
        for name, arr in self.arrays.items():
            attrs, encoding = self.meta.get(name, ({}, {}))
            out[name] = xr.Variable(self.dims[name], arr, attrs=attrs, encoding=encoding)
        return xr.Dataset(out)


def assemble(payload: TaskPayload) -> xr.Dataset:
    """The task's region as a Dataset of NumPy buffers (no coordinates: the client placed
    every source, and the region is given to the write explicitly)."""
    task, time_dim = payload.task, payload.time_dim
    bufs = _Buffers(dict(task.region), time_dim)
    for piece, spec in zip(task.pieces, payload.sources, strict=True):
        assert piece.src is not None and piece.dst is not None
        index = spec.index
        indexed = {n: index.variables[n] for n in task.variables if index and n in index.variables}
        if indexed:
            assert index is not None
            with RangeReader(index) as reader:
                for name, vi in indexed.items():
                    _read_indexed(bufs, reader, name, vi, piece.src, piece.dst)
        rest = [n for n in task.variables if n not in indexed]
        if rest:
            _read_xarray(payload, bufs, spec, rest, piece.src, piece.dst)
    return bufs.dataset()


def _read_indexed(
    bufs: _Buffers,
    reader: RangeReader,
    name: str,
    vi: VarIndex,
    src: tuple[int, int],
    dst: tuple[int, int],
) -> None:
    out = bufs.get(name, vi.dims, vi.shape, decoded_dtype(vi))
    if bufs.dims[name] != vi.dims:
        raise ValueError(f"{name!r} has dims {vi.dims} here and {bufs.dims[name]} elsewhere")
    read_decoded(reader, vi, bufs.sel(vi.dims, vi.shape, src), out[bufs.dst(vi.dims, dst)])


def _read_xarray(
    payload: TaskPayload,
    bufs: _Buffers,
    spec: SourceSpec,
    names: Sequence[str],
    src: tuple[int, int],
    dst: tuple[int, int],
) -> None:
    """The variables ``names`` of one piece through xarray (sources the index cannot
    describe: NetCDF3, GRIB, Zarr, Datasets, ...), each copied into its buffer."""
    time_dim = payload.time_dim
    ds = _open_cached(payload.run_id, spec)
    present = [n for n in names if n in ds.data_vars]
    ds = select_variables(ds, spec.label, payload.variables, payload.drop_variables)[present]
    extra = [c for c in ds.coords if c not in names]
    sel = {d: slice(a, b) for d, (a, b) in bufs.region.items() if d != time_dim}
    sel[time_dim] = slice(*src)
    part = _load(ds.drop_vars(extra).isel({d: s for d, s in sel.items() if d in ds.dims}))
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
        out[bufs.dst(bufs.dims[name], dst)] = values


def _source_shape(ds: xr.Dataset, dims: Sequence[Any]) -> tuple[int, ...]:
    return tuple(int(ds.sizes[d]) for d in dims)
