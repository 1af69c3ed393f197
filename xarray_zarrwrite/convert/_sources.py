"""Sources of :func:`convert`: specs, globbing, opening, scanning metadata, and the per-process cache of open sources."""

from __future__ import annotations

import contextlib
import functools
import glob
import inspect
import logging
import os
import re
import threading
import warnings
from collections import Counter, OrderedDict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Final

import numpy as np
import pandas as pd
import xarray as xr

from .._template import _as_dataset
from ..errors import (
    DimensionMismatchError,
    DuplicateSourceError,
    RegionError,
    RegionLabelError,
    SourceError,
    SourceNotFoundError,
    SourceTypeError,
    VariableNotInTemplateError,
)
from . import _fastscan
from ._h5scan import h5_scannable, scan_hdf5
from ._index import SourceIndex, index_hdf5, is_hdf5
from ._references import (
    ENGINE as REFERENCES,
)
from ._references import (
    index_references,
    is_reference_path,
    is_virtual_dataset,
    open_references,
    virtual_references,
)

logger = logging.getLogger(__name__)


#: Set to "0" to read HDF5/NetCDF4 sources through xarray instead of by byte range.
INDEX_ENV: Final = "XARRAY_ZARRWRITE_INDEX"
#: Look-alike prototypes tried per file size before a file is scanned fully.
_PROTOTYPES_PER_SIZE: Final = 3
_OPEN_CACHE_SIZE: Final = 256  # Dataset objects; xarray bounds the open files (128)
_GLOB_MAGIC: Final = re.compile(r"[*?[]")


@dataclass(frozen=True)
class SourceSpec:
    """One source, as a worker opens it: a local path or fsspec URL, or a Dataset object."""

    label: str
    path: str | None = None
    engine: str | None = None
    open_kwargs: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    dataset: xr.Dataset | None = field(default=None, repr=False, compare=False)
    #: the byte-range index (:mod:`._index`): set after the scan, or from the archive's saved
    #: index before it (then the scan does not index the file again)
    index: SourceIndex | None = field(default=None, repr=False, compare=False)


def _is_url(path: str) -> bool:
    return "://" in path or "::" in path


def expand_sources(
    sources: Any,
    *,
    engine: str | None = None,
    open_kwargs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
) -> list[SourceSpec]:
    """Turn paths, glob patterns, fsspec URLs and Dataset objects into :class:`SourceSpec`.

    Raises
    ------
    SourceNotFoundError
        A path does not exist or a pattern matches nothing (also a ``FileNotFoundError``).
    SourceTypeError
        An item is neither a path, a URL nor an xarray object (also a ``TypeError``).
    DuplicateSourceError
        The same file (or Dataset object) is given twice.
    SourceError
        No sources.
    """
    if isinstance(sources, str | os.PathLike | xr.Dataset | xr.DataArray):
        sources = [sources]
    kwargs = dict(open_kwargs or {})
    so = dict(storage_options or {})
    specs: list[SourceSpec] = []
    for item in sources:
        if isinstance(item, xr.Dataset) and is_virtual_dataset(item):
            label = f"<virtual dataset #{len(specs)}>"
            refs = virtual_references(item)
            specs.append(
                SourceSpec(label, label, REFERENCES, {**kwargs, "fo": refs}, storage_options=so)
            )
            continue
        if isinstance(item, xr.DataArray | xr.Dataset):
            ds = _as_dataset(item)
            where = ds.encoding.get("source")
            label = f"{where}" if where else f"<Dataset #{len(specs)}>"
            specs.append(SourceSpec(label=label, dataset=ds))
            continue
        if not isinstance(item, str | os.PathLike):
            raise SourceTypeError(
                "sources must be paths, glob patterns, fsspec URLs or xarray Datasets, got "
                f"{type(item).__name__}"
            )
        path = os.fspath(item)
        path = path.removeprefix("file://")
        if _is_url(path):
            paths = _expand_url(path, so)
        else:
            paths = _expand_local(path)
        specs.extend(
            SourceSpec(
                label=p,
                path=p,
                engine=REFERENCES if engine is None and is_reference_path(p) else engine,
                open_kwargs=kwargs,
                storage_options=so,
            )
            for p in paths
        )
    if not specs:
        raise SourceError("no sources given: pass paths, glob patterns, URLs or Datasets")
    seen: Counter[str] = Counter(
        os.path.realpath(s.path) if not _is_url(s.path) else s.path
        for s in specs
        if s.path is not None
    )
    seen.update(f"<Dataset id {id(s.dataset)}>" for s in specs if s.dataset is not None)
    dup = [p for p, n in seen.items() if n > 1]
    if dup:
        raise DuplicateSourceError(
            f"source {dup[0]!r} is given {seen[dup[0]]} times (directly or through patterns "
            "that overlap); give every source once"
        )
    return specs


def _expand_local(path: str) -> list[str]:
    path = os.path.expanduser(path)
    if _GLOB_MAGIC.search(path):
        matches = sorted(glob.glob(path))
        if not matches:
            raise SourceNotFoundError(
                f"no file matches the source pattern {path!r}; check the pattern and the "
                "working directory"
            )
        return [os.path.abspath(m) for m in matches]
    if not os.path.exists(path):
        raise SourceNotFoundError(f"source {path!r} does not exist; check the path")
    return [os.path.abspath(path)]


def _expand_url(url: str, storage_options: Mapping[str, Any]) -> list[str]:
    if not _GLOB_MAGIC.search(url.split("::")[-1]):
        return [url]
    import fsspec

    fs, pattern = fsspec.core.url_to_fs(url, **storage_options)
    paths = fs.glob(pattern)  # files and directories (Zarr stores) alike
    if not paths:
        raise SourceNotFoundError(f"no object matches the source pattern {url!r}")
    return sorted(fs.unstrip_protocol(p) for p in paths)


def _looks_like_zarr(path: str) -> bool:
    return path.rstrip("/").endswith((".zarr", ".zarr.zip"))


# Sources are opened without building pandas indexes (a third of the cost of opening a
# NetCDF file); the labels are read as plain coordinates and indexed where needed.
_NO_INDEXES: Final[dict[str, Any]] = (
    {"create_default_indexes": False}
    if "create_default_indexes" in inspect.signature(xr.open_dataset).parameters
    else {}
)


def dim_index(ds: xr.Dataset, dim: str) -> pd.Index | None:
    """The labels along ``dim`` as a pandas Index (None without a ``dim`` coordinate)."""
    if dim in ds.indexes:
        return ds.indexes[dim]
    if dim in ds.variables and ds[dim].ndim == 1:
        return ds[dim].to_index()
    return None


def with_indexes(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` with a default index for every dimension coordinate that lacks one."""
    for dim in ds.dims:
        if dim in ds.coords and dim not in ds.xindexes and ds[dim].ndim == 1:
            ds = ds.set_xindex([dim])  # what xarray makes of a single name
    return ds


@functools.cache
def _h5netcdf_usable() -> bool:
    try:
        import h5netcdf  # noqa: F401
    except ImportError:
        return False
    for backend in ("h5py", "pyfive"):
        try:
            __import__(backend)
        except ImportError:
            continue
        return True
    return False


def open_source(spec: SourceSpec, *, indexes: bool = True) -> xr.Dataset:
    """Open a source lazily (no dask, no data read): NetCDF, Zarr, anything xarray opens.

    ``indexes=False`` skips building pandas indexes of the dimension coordinates (faster; use
    :func:`dim_index` or :func:`with_indexes` where they are needed)."""
    if spec.dataset is not None:
        return spec.dataset
    with _open_lock:
        ds = _open_source(spec, indexes)
    close = ds._close

    def _locked_close() -> None:  # closing is no more thread-safe than opening
        if close is not None:
            with _open_lock:
                close()

    ds.set_close(_locked_close)
    return ds


def _open_source(spec: SourceSpec, indexes: bool) -> xr.Dataset:
    assert spec.path is not None
    kwargs: dict[str, Any] = {"chunks": None, "cache": False}
    if not indexes:
        kwargs.update(_NO_INDEXES)
    kwargs.update(spec.open_kwargs)
    engine, path = spec.engine, spec.path
    if engine == REFERENCES:  # kerchunk references or a VirtualiZarr dataset
        fo = kwargs.pop("fo", path)
        return open_references(fo, spec.storage_options, kwargs)
    with warnings.catch_warnings():
        # sources without consolidated metadata are fine
        warnings.filterwarnings("ignore", message=".*consolidated metadata", category=Warning)
        if _is_url(path):
            if engine == "zarr" or (engine is None and _looks_like_zarr(path)):
                if spec.storage_options:  # zarr >= 3.4 refuses even an empty, unused mapping
                    kwargs["storage_options"] = dict(spec.storage_options)
                return xr.open_dataset(path, engine="zarr", **kwargs)
            import fsspec

            if engine in (None, "h5netcdf") and _h5netcdf_usable():
                handle = fsspec.open(path, "rb", **spec.storage_options).open()
                try:
                    ds = xr.open_dataset(handle, engine="h5netcdf", **kwargs)
                except BaseException:
                    handle.close()
                    raise
                close = ds._close

                def _close() -> None:
                    try:
                        if close is not None:
                            close()
                    finally:
                        handle.close()

                ds.set_close(_close)
                return ds
            # other engines (netCDF4) need a local file: a cached copy, fetched once
            protocol = path.split("::")[0].split("://")[0]
            options = {protocol: dict(spec.storage_options)} if spec.storage_options else {}
            # open + close, keeping the cached copy's path (fsspec < 2025's open_local leaks the
            # handle it opens to fill the cache)
            with fsspec.open(f"simplecache::{path}", "rb", **options) as cached:
                local = cached.name
            return xr.open_dataset(local, engine=engine, **kwargs)
        if engine is None and os.path.isdir(path):
            engine = "zarr"
        if engine in _LOCKED_ENGINES and "lock" not in kwargs:
            # xarray's reads take this lock too (instead of its own HDF5/netCDF-C lock): an
            # open on one thread never runs beside a read on another (both enter HDF5)
            kwargs["lock"] = _open_lock
        return xr.open_dataset(path, engine=engine, **kwargs)


def select_variables(
    ds: xr.Dataset,
    label: str,
    variables: Sequence[str] | None,
    drop_variables: Sequence[str] | None,
) -> xr.Dataset:
    """The data variables to convert (coordinates kept)."""
    drop = set(drop_variables or ())
    if variables is None:
        names = [str(n) for n in ds.data_vars if n not in drop]
    else:
        missing = [n for n in variables if n not in ds.data_vars]
        if missing:
            raise VariableNotInTemplateError(
                f"source {label!r} has no data variable {missing[0]!r} (named in variables=); "
                f"its data variables: {sorted(map(str, ds.data_vars))}"
            )
        names = [n for n in variables if n not in drop]
    if not names:
        raise RegionError(f"source {label!r} has no data variables to convert")
    return ds[names]


@dataclass(frozen=True)
class VariableSchema:
    """What validation compares of one variable."""

    dims: tuple[str, ...]
    dtype: np.dtype[Any]
    attrs: Mapping[str, Any]


@dataclass(frozen=True)
class SourceSchema:
    """A source's metadata, read on the client (no data)."""

    label: str
    times: pd.Index
    sizes: Mapping[str, int]
    data_vars: Mapping[str, VariableSchema]
    time_coords: tuple[str, ...]  # non-index coordinates along the time dimension
    indexes: Mapping[str, pd.Index]  # of the other dimensions
    calendar: str | None = None  # of the time labels (None: not dates, or not said)
    index: SourceIndex | None = field(default=None, repr=False, compare=False)
    #: values of the scalar (0-d) coordinates: a member label such as CMIP's ``realization``
    scalars: Mapping[str, Any] = field(default_factory=dict)


def scan_source(
    spec: SourceSpec,
    time_dim: str,
    variables: Sequence[str] | None,
    drop_variables: Sequence[str] | None,
    run_id: str | None = None,
) -> SourceSchema:
    """Open ``spec`` lazily and read its metadata and time labels (no data).

    With ``run_id`` the opened source stays open in this process's cache for the tasks of
    that run; otherwise it is closed.

    Raises
    ------
    RegionError
        The source has no ``time_dim`` or no labels along it; names the source.
    """
    fast = _scan_h5(spec, time_dim, variables, drop_variables)
    if fast is not None:
        return fast
    if run_id is not None:
        opened = _open_cached(run_id, spec)
    else:
        opened = open_source(spec, indexes=False)
    try:
        ds = select_variables(opened, spec.label, variables, drop_variables)
        _check_time_dim(ds, spec.label, time_dim)
        time_coords = _time_coords(ds, time_dim)
        index = _index_of(spec, opened, [*map(str, ds.data_vars), *time_coords])
        if (
            index is not None
            and run_id is not None
            and len(index.variables) == len(ds.data_vars) + len(time_coords)
        ):
            _forget(run_id, [spec])  # the tasks read it by byte range: close it now
        return _schema(spec.label, ds, time_dim, index)
    finally:
        if spec.dataset is None and run_id is None:
            opened.close()


def _check_time_dim(ds: xr.Dataset, label: str, time_dim: str) -> None:
    if time_dim not in ds.dims:
        raise DimensionMismatchError(
            f"source {label!r} has no dimension {time_dim!r} (dimensions: "
            f"{list(map(str, ds.dims))}); set time_dim= to its time dimension"
        )


def _time_coords(ds: xr.Dataset, time_dim: str) -> tuple[str, ...]:
    """The non-index coordinates along the time dimension."""
    return tuple(str(n) for n, v in ds.coords.items() if n not in ds.dims and time_dim in v.dims)


def _schema(label: str, ds: xr.Dataset, time_dim: str, index: SourceIndex | None) -> SourceSchema:
    """The schema of the selected variables ``ds`` of a source."""
    times = dim_index(ds, time_dim)
    if times is None:
        raise RegionLabelError(
            f"source {label!r} has no {time_dim!r} coordinate: its time steps cannot be placed"
        )
    others = {str(d): dim_index(ds, str(d)) for d in ds.dims if d != time_dim}
    return SourceSchema(
        label=label,
        times=times.copy(),
        sizes={str(d): int(n) for d, n in ds.sizes.items()},
        data_vars={
            str(n): VariableSchema(tuple(map(str, v.dims)), v.dtype, dict(v.attrs))
            for n, v in ds.data_vars.items()
        },
        time_coords=_time_coords(ds, time_dim),
        indexes={d: i for d, i in others.items() if i is not None},
        calendar=time_calendar(ds[time_dim], times),
        index=index,
        scalars={str(n): v.values[()] for n, v in ds.coords.items() if v.ndim == 0},
    )


def _scan_h5(
    spec: SourceSpec,
    time_dim: str,
    variables: Sequence[str] | None,
    drop_variables: Sequence[str] | None,
) -> SourceSchema | None:
    """The schema of a NetCDF4 source read with h5py alone (:mod:`._h5scan`), when every
    variable to convert is indexed; None: scan it through xarray."""
    if not h5_scannable(spec.path, spec.engine, spec.open_kwargs):
        return None
    if os.environ.get(INDEX_ENV, "1") == "0" or spec.path is None:
        return None
    path = spec.path
    drop = spec.open_kwargs.get("drop_variables") or ()
    drops = [drop] if isinstance(drop, str) else list(drop)
    kind = _fastscan.kind_of(time_dim, variables, drop_variables, drops)
    size = _fastscan.local_size(path)
    tried = _fastscan.candidates(kind, size) if size is not None else []
    if size is not None and not tried:  # the second file of its size: the first's prototype
        earlier = _fastscan.take_deferred(kind, size)
        if earlier is not None:
            made = _fastscan.make(*earlier, time_dim, kind, _open_lock)
            tried = [made] if made is not None else []
    for proto in tried:  # a file like one scanned before: compare bytes, read its times
        schema = _fastscan.scan_like(path, spec.label, proto)
        if schema is not None:
            return schema
    if not is_hdf5(path, spec.storage_options):  # NetCDF3, GRIB, ...: the xarray path
        return None
    saved = spec.index if spec.index is not None and spec.index.stamp == _stamp(path) else None

    def names_of(ds: xr.Dataset) -> list[str]:
        wanted = set(variables) if variables is not None else None
        skip = set(drop_variables or ())
        names = [str(n) for n in ds.data_vars if (wanted is None or n in wanted) and n not in skip]
        return [*names, *_time_coords(ds, time_dim)]

    with _open_lock:  # h5py and netCDF4 share one (not thread-safe) HDF5 library
        got = scan_hdf5(path, spec.storage_options, drops, names_of, saved)
    if got is None:
        return None
    opened, index = got
    ds = select_variables(opened, spec.label, variables, drop_variables)
    _check_time_dim(ds, spec.label, time_dim)
    needed = [*map(str, ds.data_vars), *_time_coords(ds, time_dim)]
    if index is None or any(n not in index.variables for n in needed):
        return None  # read in part through xarray: the xarray path scans and indexes it
    schema = _schema(spec.label, ds, time_dim, index)
    if size is not None and not tried:  # the first file of its size (for now)
        _fastscan.defer(kind, size, path, schema)
    elif size is not None and len(tried) < _PROTOTYPES_PER_SIZE:  # another kind of that size
        _fastscan.make(path, schema, time_dim, kind, _open_lock)
    return schema


def _index_of(spec: SourceSpec, opened: xr.Dataset, names: Sequence[str]) -> SourceIndex | None:
    """The byte-range index of a file source: the saved one if the file is unchanged, else
    made now (HDF5/NetCDF4 only; None: the xarray path reads the source)."""
    if spec.path is not None and spec.engine == REFERENCES:
        fo = spec.open_kwargs.get("fo", spec.path)
        return index_references(fo, opened, names, spec.storage_options)
    if spec.path is None or spec.engine not in (None, "netcdf4", "h5netcdf"):
        return None
    if os.environ.get(INDEX_ENV, "1") == "0":
        return None
    if "group" in spec.open_kwargs:
        return None
    if spec.index is not None and spec.index.stamp == _stamp(spec.path) is not None:
        return spec.index
    if not is_hdf5(spec.path, spec.storage_options):
        return None
    with _open_lock:  # h5py and netCDF4 may share one (not thread-safe) HDF5 library
        return index_hdf5(spec.path, opened, names, spec.storage_options)


def _stamp(path: str) -> tuple[int, int] | None:
    if _is_url(path):
        return None
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_size, st.st_mtime_ns)


def time_calendar(var: xr.DataArray | xr.Variable, times: pd.Index | None = None) -> str | None:
    """The calendar of a time variable: its encoding's, its cftime index's, or None."""
    found = var.encoding.get("calendar") or var.attrs.get("calendar")
    if found is None and times is not None:
        found = getattr(times, "calendar", None)
    return None if found is None else str(found)


def scan_batch(
    specs: Sequence[SourceSpec],
    time_dim: str,
    variables: Sequence[str] | None,
    drop_variables: Sequence[str] | None,
    run_id: str | None,
) -> list[SourceSchema]:
    """:func:`scan_source` for several sources (one call on a worker)."""
    return [scan_source(s, time_dim, variables, drop_variables, run_id) for s in specs]


def _batches(n: int, workers: int) -> list[range]:
    """Split ``range(n)`` into contiguous batches: a few per worker, at most 4 sources each."""
    count = min(n, max(4 * workers, -(-n // 4)))
    edges = np.linspace(0, n, count + 1).round().astype(int)
    return [range(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


_opened: OrderedDict[tuple[str, str], xr.Dataset] = OrderedDict()
_opened_lock = threading.Lock()
#: Opening (and closing) files is not thread-safe in netCDF-C/HDF5: every open of a source in
#: this process, from any thread (scan, tasks, packing probes), holds this lock.
_open_lock = threading.RLock()
#: Engines (None: xarray's guess for a file) whose reads take ``_open_lock``.
_LOCKED_ENGINES: Final = (None, "netcdf4", "h5netcdf", "scipy")


def _open_cached(run_id: str, spec: SourceSpec) -> xr.Dataset:
    if spec.dataset is not None:
        return spec.dataset
    key = (run_id, str(spec.path))
    with _opened_lock:
        hit = _opened.get(key)
        if hit is not None:
            _opened.move_to_end(key)
            return hit
    with _open_lock:  # opening files is not thread-safe in netCDF-C/HDF5
        ds = open_source(spec, indexes=False)
    evicted = []
    with _opened_lock:
        if key in _opened:  # another thread won the race
            evicted.append(ds)
            ds = _opened[key]
        else:
            _opened[key] = ds
        for k in list(_opened):
            if k[0] != run_id or len(_opened) > _OPEN_CACHE_SIZE:
                evicted.append(_opened.pop(k))
    with _open_lock:
        for old in evicted:
            old.close()
    return ds


def _forget(run_id: str, specs: Iterable[SourceSpec]) -> None:
    """Close and drop the cached open sources ``specs`` of run ``run_id``."""
    with _opened_lock:
        evicted = [_opened.pop((run_id, str(s.path)), None) for s in specs if s.path]
    with _open_lock:
        for ds in evicted:
            if ds is not None:
                with contextlib.suppress(Exception):
                    ds.close()


def close_run(run_id: str) -> None:
    """Close the sources this process keeps open for the run ``run_id``."""
    with _opened_lock:
        keys = [k for k in _opened if k[0] == run_id]
        evicted = [_opened.pop(k) for k in keys]
    with _open_lock:
        for ds in evicted:
            ds.close()


def _load(ds: xr.Dataset) -> xr.Dataset:
    if any(v.chunks is not None for v in ds.variables.values()):
        import dask

        with dask.config.set(scheduler="synchronous"):  # never a cluster inside a task
            return ds.load()
    return ds.load()
