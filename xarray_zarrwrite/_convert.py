"""Converting many sources (files, URLs, datasets) into one Zarr archive, in parallel.

Work is planned by *output chunks*, not by files. The template's time axis is cut into blocks
of whole chunks (the least common multiple of every variable's time chunk); each task owns a
contiguous run of such blocks and reads, from whichever sources overlap them, only the slices it
needs. No two tasks ever touch the same chunk, so sources whose boundaries fall in the middle of
a chunk are safe and every run writes the same bytes.

The pipeline:

1. **Scan** (client): open each source lazily and read only its metadata and time labels.
2. **Validate** (client): every source against the template (or, before one exists, against
   the first source): variables, dimensions, dtypes, attributes, coordinate labels; overlapping
   sources and off-grid labels are refused, naming the files.
3. **Template**: created from the earliest source over the union of all time labels (or
   ``global_start``/``global_end``), or reused when one exists and ``resume=True``.
4. **Plan** (pure, :func:`plan_tasks`): tasks sized by a memory estimate; a task whose chunks
   all exist is skipped (resume).
5. **Run** (workers): each task opens its own sources, loads its slices, concatenates them
   along time and hands them to :func:`~xarray_zarrwrite.api.write_region`. Only the task
   description goes to a worker and only a small outcome comes back: no data passes through the
   client or the scheduler (except for in-memory ``xr.Dataset`` sources, which live there).
"""

from __future__ import annotations

import asyncio
import concurrent.futures as cf
import contextlib
import functools
import glob
import inspect
import logging
import math
import multiprocessing
import os
import random
import re
import socket
import sys
import threading
import time
import uuid
import warnings
from collections import Counter, OrderedDict, deque
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, Final, Literal, Self

import numpy as np
import pandas as pd
import xarray as xr

from ._check import existing_chunks, label_formatter, object_chunks
from ._compat import sync
from ._open import load_template
from ._region import label_positions
from ._store import ensure_writable, resolve_store
from ._template import _as_dataset, _time_axis, to_template
from .api import write_region
from .errors import (
    DimensionMismatchError,
    DtypeCastError,
    RegionError,
    RegionLabelError,
    TemplateError,
    TemplateNotFoundError,
    VariableNotInTemplateError,
    WriteFailedError,
    ZarrWriteError,
)
from .storage._buffered import is_transient_error

if TYPE_CHECKING:
    from collections.abc import Callable

    from ._open import TemplateInfo
    from ._store import StoreLike

__all__ = [
    "ConvertReport",
    "SourceOutcome",
    "Task",
    "TaskFailure",
    "WorkerStats",
    "convert",
    "plan_tasks",
    "run_task",
]

logger = logging.getLogger(__name__)

_MIB: Final = 1 << 20
#: A task's peak memory is estimated as this many times the decoded bytes it writes: the
#: loaded slices, their concatenation or encoded copy, and the compressed chunks in flight.
PEAK_FACTOR: Final = 3.0
#: Memory of a worker process before it runs anything (interpreter, numpy, xarray, zarr).
WORKER_BASELINE: Final = 256 * _MIB
#: Upper bound of the decoded bytes of one task, however much memory there is: smaller tasks
#: balance better and lose less work to a crash.
MAX_TASK_BYTES: Final = 256 * _MIB
#: Aim for at least this many tasks per concurrent slot, for load balance.
TASKS_PER_SLOT: Final = 4
#: First retry delay, doubled on every further attempt (with jitter), at most _MAX_BACKOFF_S.
BACKOFF_S: Final = 0.2
_MAX_BACKOFF_S: Final = 30.0
_OPEN_CACHE_SIZE: Final = 256  # Dataset objects; xarray bounds the open files (128)
#: Attributes that must agree between a source and the template (when either has them).
COMPARED_ATTRS: Final = ("units", "standard_name", "long_name", "calendar", "cell_methods")
_GLOB_MAGIC: Final = re.compile(r"[*?[]")

ExecutorKind = Literal["processes", "dask", "serial"]


# =============================================================================================
# Sources
# =============================================================================================


@dataclass(frozen=True)
class SourceSpec:
    """One source, as a worker opens it: a local path or fsspec URL, or a Dataset object."""

    label: str
    path: str | None = None
    engine: str | None = None
    open_kwargs: Mapping[str, Any] = field(default_factory=dict)
    storage_options: Mapping[str, Any] = field(default_factory=dict)
    dataset: xr.Dataset | None = field(default=None, repr=False, compare=False)


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
    FileNotFoundError
        A path does not exist or a pattern matches nothing.
    TypeError
        An item is neither a path, a URL nor an xarray object.
    ValueError
        No sources, or the same file given twice.
    """
    if isinstance(sources, str | os.PathLike | xr.Dataset | xr.DataArray):
        sources = [sources]
    kwargs = dict(open_kwargs or {})
    so = dict(storage_options or {})
    specs: list[SourceSpec] = []
    for item in sources:
        if isinstance(item, xr.DataArray | xr.Dataset):
            ds = _as_dataset(item)
            where = ds.encoding.get("source")
            label = f"{where}" if where else f"<Dataset #{len(specs)}>"
            specs.append(SourceSpec(label=label, dataset=ds))
            continue
        if not isinstance(item, str | os.PathLike):
            raise TypeError(
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
            SourceSpec(label=p, path=p, engine=engine, open_kwargs=kwargs, storage_options=so)
            for p in paths
        )
    if not specs:
        raise ValueError("no sources given")
    seen: Counter[str] = Counter(s.path for s in specs if s.path is not None)
    dup = [p for p, n in seen.items() if n > 1]
    if dup:
        raise ValueError(f"source {dup[0]!r} is given more than once")
    return specs


def _expand_local(path: str) -> list[str]:
    path = os.path.expanduser(path)
    if _GLOB_MAGIC.search(path):
        matches = sorted(glob.glob(path))
        if not matches:
            raise FileNotFoundError(f"no file matches the source pattern {path!r}")
        return [os.path.abspath(m) for m in matches]
    if not os.path.exists(path):
        raise FileNotFoundError(f"source {path!r} does not exist")
    return [os.path.abspath(path)]


def _expand_url(url: str, storage_options: Mapping[str, Any]) -> list[str]:
    if not _GLOB_MAGIC.search(url.split("::")[-1]):
        return [url]
    import fsspec

    fs, pattern = fsspec.core.url_to_fs(url, **storage_options)
    paths = fs.glob(pattern)  # files and directories (Zarr stores) alike
    if not paths:
        raise FileNotFoundError(f"no object matches the source pattern {url!r}")
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
    assert spec.path is not None
    kwargs: dict[str, Any] = {"chunks": None, "cache": False}
    if not indexes:
        kwargs.update(_NO_INDEXES)
    kwargs.update(spec.open_kwargs)
    engine, path = spec.engine, spec.path
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
    if run_id is not None:
        opened = _open_cached(run_id, spec)
    else:
        opened = open_source(spec, indexes=False)
    try:
        ds = select_variables(opened, spec.label, variables, drop_variables)
        if time_dim not in ds.dims:
            raise DimensionMismatchError(
                f"source {spec.label!r} has no dimension {time_dim!r} (dimensions: "
                f"{list(map(str, ds.dims))}); set time_dim= to its time dimension"
            )
        times = dim_index(ds, time_dim)
        if times is None:
            raise RegionLabelError(
                f"source {spec.label!r} has no {time_dim!r} coordinate: its time steps cannot "
                "be placed"
            )
        others = {str(d): dim_index(ds, str(d)) for d in ds.dims if d != time_dim}
        return SourceSchema(
            label=spec.label,
            times=times.copy(),
            sizes={str(d): int(n) for d, n in ds.sizes.items()},
            data_vars={
                str(n): VariableSchema(tuple(map(str, v.dims)), v.dtype, dict(v.attrs))
                for n, v in ds.data_vars.items()
            },
            time_coords=tuple(
                str(n) for n, v in ds.coords.items() if n not in ds.dims and time_dim in v.dims
            ),
            indexes={d: i for d, i in others.items() if i is not None},
        )
    finally:
        if spec.dataset is None and run_id is None:
            opened.close()


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


# =============================================================================================
# Validation
# =============================================================================================


@dataclass(frozen=True)
class Reference:
    """What every source must agree with: the template's, or the first source's, schema."""

    what: str
    axis: pd.Index
    data_vars: Mapping[str, VariableSchema]
    indexes: Mapping[str, pd.Index]
    sizes: Mapping[str, int]  # dimensions other than time

    @classmethod
    def from_template(cls, info: TemplateInfo, time_dim: str) -> Reference:
        """The reference of an existing template."""
        if time_dim not in info.indexes:
            raise TemplateError(
                f"the archive has no {time_dim!r} coordinate (dimensions: {dict(info.sizes)}); "
                "set time_dim="
            )
        return cls(
            what="the template",
            axis=info.indexes[time_dim],
            data_vars={
                n: VariableSchema(a.dims, a.dtype, a.attrs)
                for n, a in info.arrays.items()
                if not a.is_coord
            },
            indexes={d: i for d, i in info.indexes.items() if d != time_dim},
            sizes={d: n for d, n in info.sizes.items() if d != time_dim},
        )

    @classmethod
    def from_source(cls, first: SourceSchema, axis: pd.Index, time_dim: str) -> Reference:
        """The reference of a template about to be made from ``first``."""
        return cls(
            what=f"the first source {first.label!r}",
            axis=axis,
            data_vars=first.data_vars,
            indexes=first.indexes,
            sizes={d: n for d, n in first.sizes.items() if d != time_dim},
        )


def _dtype_ok(have: np.dtype[Any], want: np.dtype[Any]) -> bool:
    if have == want:
        return True
    if have.kind in "OSUTV" or want.kind in "OSUTV":
        return False
    return bool(
        np.can_cast(have, want, casting="safe")
        or (have.kind == "f" and want.kind == "f")
        or (have.kind == want.kind and have.kind in "mM")
    )


def _attr_equal(a: Any, b: Any) -> bool:
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return bool(a == b)


def validate_source(schema: SourceSchema, ref: Reference, time_dim: str) -> np.ndarray:
    """Check ``schema`` against ``ref``; return the positions of its time labels on the axis.

    Raises
    ------
    RegionError
        Or a subclass, naming the source: variables that differ
        (:class:`VariableNotInTemplateError`), dimensions or sizes
        (:class:`DimensionMismatchError`), dtypes (:class:`DtypeCastError`), coordinate labels
        (:class:`RegionLabelError`), or attributes (:class:`RegionError`).
    """
    src = schema.label
    have, want = set(schema.data_vars), set(ref.data_vars)
    if have != want:
        extra, missing = sorted(have - want), sorted(want - have)
        raise VariableNotInTemplateError(
            f"source {src!r} does not have the data variables of {ref.what}"
            + (f"; it lacks {missing}" if missing else "")
            + (f"; it has {extra} in addition" if extra else "")
            + "; choose the variables with variables= or drop_variables="
        )
    for name, var in schema.data_vars.items():
        target = ref.data_vars[name]
        if set(var.dims) != set(target.dims) or len(var.dims) != len(target.dims):
            raise DimensionMismatchError(
                f"source {src!r}: variable {name!r} has dimensions {var.dims} but {ref.what} "
                f"has {target.dims}"
            )
        if not _dtype_ok(var.dtype, target.dtype):
            raise DtypeCastError(
                f"source {src!r}: variable {name!r} has dtype {var.dtype}, which cannot be cast "
                f"safely to the {target.dtype} of {ref.what}; convert the source first"
            )
        for key in COMPARED_ATTRS:
            a, b = var.attrs.get(key), target.attrs.get(key)
            if (a is None) != (b is None) or (a is not None and not _attr_equal(a, b)):
                raise RegionError(
                    f"source {src!r}: attribute {key!r} of variable {name!r} is {a!r} but "
                    f"{ref.what} has {b!r}; the sources must describe the same quantity"
                )
    for dim, n in schema.sizes.items():
        if dim == time_dim:
            continue
        if dim not in ref.sizes:
            raise DimensionMismatchError(
                f"source {src!r} has dimension {dim!r}, which {ref.what} does not have"
            )
        if n != ref.sizes[dim]:
            raise DimensionMismatchError(
                f"source {src!r} has {n} elements along {dim!r} but {ref.what} has {ref.sizes[dim]}"
            )
    for dim, index in schema.indexes.items():
        theirs = ref.indexes.get(dim)
        if theirs is None:
            continue
        if not index.equals(theirs):
            diff = np.flatnonzero(np.asarray(index) != np.asarray(theirs))
            at = int(diff[0]) if diff.size else 0
            raise RegionLabelError(
                f"source {src!r}: coordinate {dim!r} differs from {ref.what}'s (position {at}: "
                f"{index[at]!r} vs {theirs[at]!r}); all sources must share the same grid"
            )
    times = schema.times
    where = (
        f"the time axis of {ref.what} ({ref.axis[0]!r} .. {ref.axis[-1]!r}, "
        f"{len(ref.axis)} steps{_freq_note(ref.axis)})"
    )
    pos = label_positions(ref.axis, times, time_dim, prefix=f"source {src!r}: ", where=where)
    return pos


def _infer_freq(index: pd.Index) -> str | None:
    if len(index) < 3:
        return None
    try:
        freq: str | None = xr.infer_freq(index)  # type: ignore[no-untyped-call]  # xarray: unannotated
    except (TypeError, ValueError):
        return None
    return freq


def _freq_note(axis: pd.Index) -> str:
    freq = _infer_freq(axis)
    return f", every {freq}" if freq else ""


def _infer_axis(
    example: xr.Dataset,
    schemas: Sequence[SourceSchema],
    time_dim: str,
    global_start: Any,
    global_end: Any,
    freq: Any,
) -> tuple[pd.Index, Any]:
    """The time axis a new template gets, and the ``freq`` that makes it."""
    union = schemas[0].times.append([s.times for s in schemas[1:]]).unique().sort_values()
    if freq is None:
        freq = _infer_freq(union)  # None when sources are missing in between
        if freq is None:
            freq = _infer_freq(schemas[0].times)
        if freq is None:
            raise TemplateError(
                f"cannot infer the time step of {time_dim!r} from the sources (irregular or "
                "fewer than 3 steps); pass freq="
            )
    start = union[0] if global_start is None else global_start
    end = union[-1] if global_end is None else global_end
    axis = _time_axis(example, time_dim, start, end, freq)
    return axis, freq


def place_sources(
    schemas: Sequence[SourceSchema], ref: Reference, time_dim: str
) -> list[np.ndarray]:
    """Validate every source and return its label positions; refuses overlapping sources."""
    positions = [validate_source(s, ref, time_dim) for s in schemas]
    owner = np.full(len(ref.axis), -1, dtype=np.int64)
    for i, pos in enumerate(positions):
        clash = owner[pos] >= 0
        if clash.any():
            j = int(owner[pos[clash][0]])
            label = ref.axis[int(pos[clash][0])]
            raise RegionLabelError(
                f"sources {schemas[j].label!r} and {schemas[i].label!r} both hold {time_dim} "
                f"{label!r} ({int(clash.sum())} shared step(s)); every time step must come "
                "from exactly one source"
            )
        owner[pos] = i
    return positions


# =============================================================================================
# Planning (pure)
# =============================================================================================


@dataclass(frozen=True)
class Piece:
    """The part of one source a task reads: ``src`` positions in the source along time (None:
    the source has no time dimension in this task) go to ``dst`` positions of the template."""

    source: int
    src: tuple[int, int] | None
    dst: tuple[int, int] | None


@dataclass(frozen=True)
class Task:
    """A unit of work: whole output chunks of some variables, and the sources they come from.

    Attributes
    ----------
    index
        Position in the plan.
    region
        ``{dim: (start, stop)}`` in the template, on chunk boundaries; dims left out are whole.
    variables
        Arrays this task writes (and owns, within ``region``).
    pieces
        Source slices, in time order.
    nbytes
        Decoded bytes the task writes.
    """

    index: int
    region: Mapping[str, tuple[int, int]]
    variables: tuple[str, ...]
    pieces: tuple[Piece, ...]
    nbytes: int

    def chunk_indices(self, info: TemplateInfo) -> dict[str, list[tuple[int, ...]]]:
        """The chunk objects this task writes, per variable."""
        out: dict[str, list[tuple[int, ...]]] = {}
        for name in self.variables:
            a = info.arrays[name]
            chunks = object_chunks(info.zarr_arrays[name])
            ranges = []
            for dim, c, n in zip(a.dims, chunks, a.shape, strict=True):
                lo, hi = self.region.get(dim, (0, n))
                ranges.append(range(lo // c, -(-hi // c)))
            out[name] = [tuple(int(i) for i in idx) for idx in _product(ranges)]
        return out


def _product(ranges: Sequence[range]) -> Iterable[tuple[int, ...]]:
    if not ranges:
        return [()]
    grids = np.meshgrid(*[np.asarray(r) for r in ranges], indexing="ij")
    return zip(*(g.ravel().tolist() for g in grids), strict=True)


@dataclass(frozen=True)
class Plan:
    """Tasks plus what cannot be written.

    Attributes
    ----------
    tasks
        Every task, done or not.
    gaps
        ``(start, stop)`` template positions inside the sources' extent that no source covers.
    deferred
        Positions that sources cover but that cannot be written because they share a chunk
        with uncovered positions.
    split_dim
        Dimension tasks are also split along to fit memory (None: whole).
    task_estimate
        Estimated peak memory of the largest task, in bytes.
    """

    tasks: tuple[Task, ...]
    gaps: tuple[tuple[int, int], ...]
    deferred: tuple[tuple[int, int], ...]
    split_dim: str | None
    task_estimate: int


def _runs(mask: np.ndarray) -> list[tuple[int, int]]:
    """``(start, stop)`` of the runs of True in a 1-d boolean array."""
    if not mask.size:
        return []
    edges = np.flatnonzero(np.diff(np.concatenate([[0], mask.astype(np.int8), [0]])))
    return [(int(a), int(b)) for a, b in zip(edges[::2], edges[1::2], strict=True)]


def plan_tasks(
    info: TemplateInfo,
    positions: Sequence[np.ndarray],
    *,
    time_dim: str,
    write_vars: Sequence[str],
    static_vars: Sequence[str] = (),
    budget: int,
    slots: int = 1,
) -> Plan:
    """Group the template's output chunks into tasks (pure: no I/O).

    Parameters
    ----------
    info
        The template.
    positions
        For each source, the template positions of its time labels.
    time_dim
        The dimension sources are split along.
    write_vars
        Arrays with ``time_dim`` to write (data variables and time-dependent coordinates).
    static_vars
        Data variables without ``time_dim``, written once from the first source.
    budget
        Peak memory one task may use, in bytes.
    slots
        Tasks that run at once (for load balance).
    """
    ntime = info.sizes[time_dim]
    owner = np.full(ntime, -1, dtype=np.int64)
    local = np.full(ntime, -1, dtype=np.int64)
    for i, pos in enumerate(positions):
        owner[pos] = i
        local[pos] = np.arange(len(pos))

    def tchunk(name: str) -> int:
        a = info.arrays[name]
        return object_chunks(info.zarr_arrays[name])[a.dims.index(time_dim)]

    unit = math.lcm(*(tchunk(n) for n in write_vars)) if write_vars else ntime
    step_bytes = {n: _bytes_per(info, n, time_dim) for n in write_vars}
    block_bytes = int(sum(step_bytes.values()) * unit)
    split_dim, spans = _spatial_split(
        info, [*write_vars, *static_vars], time_dim, block_bytes, budget
    )
    npieces = len(spans)
    size_split = info.sizes[split_dim] if split_dim else 1

    def owned(names: Sequence[str], k: int) -> tuple[str, ...]:
        if split_dim is None:
            return tuple(names)
        return tuple(n for n in names if split_dim in info.arrays[n].dims or k == 0)

    def piece_bytes(names: Sequence[str], k: int, nsteps: int) -> int:
        total = 0.0
        for n in owned(names, k):
            per = step_bytes.get(n) or _bytes_per(info, n, time_dim)
            if split_dim in info.arrays[n].dims:
                lo, hi = spans[k]
                per *= (hi - lo) / size_split
            total += per * nsteps
        return int(total)

    nblocks = -(-ntime // unit)
    have_step = np.concatenate([owner >= 0, np.ones(nblocks * unit - ntime, dtype=bool)])
    covered = have_step.reshape(nblocks, unit).all(axis=1)
    ncovered = int(covered.sum())
    largest = max((piece_bytes(write_vars, k, unit) for k in range(npieces)), default=0)
    per_block = max(largest, 1)
    k_mem = max(1, int(budget // (PEAK_FACTOR * per_block)))
    k_cap = max(1, MAX_TASK_BYTES // per_block)
    k_bal = max(1, (ncovered * npieces) // max(1, TASKS_PER_SLOT * slots))
    per_task = min(k_mem, k_cap, k_bal)

    tasks: list[Task] = []
    if write_vars:
        for run_lo, run_hi in _runs(covered):
            for b0 in range(run_lo, run_hi, per_task):
                b1 = min(b0 + per_task, run_hi)
                t0, t1 = b0 * unit, min(b1 * unit, ntime)
                pieces = _pieces(owner[t0:t1], local[t0:t1], t0)
                for k in range(npieces):
                    region = {time_dim: (t0, t1)}
                    if split_dim is not None:
                        region[split_dim] = spans[k]
                    tasks.append(
                        Task(
                            index=len(tasks),
                            region=region,
                            variables=owned(write_vars, k),
                            pieces=pieces,
                            nbytes=piece_bytes(write_vars, k, t1 - t0),
                        )
                    )
    if static_vars and positions:
        first = int(np.argmin([p.min() if len(p) else ntime for p in positions]))
        for k in range(npieces):
            region = {split_dim: spans[k]} if split_dim is not None else {}
            names = owned(static_vars, k)
            if names:
                tasks.append(
                    Task(
                        index=len(tasks),
                        region=region,
                        variables=names,
                        pieces=(Piece(first, None, None),),
                        nbytes=piece_bytes(static_vars, k, 1),
                    )
                )

    have = np.concatenate(positions) if positions else np.empty(0, dtype=np.int64)
    gaps: list[tuple[int, int]] = []
    deferred: list[tuple[int, int]] = []
    if have.size and write_vars:
        lo, hi = int(np.min(have)), int(np.max(have)) + 1
        inside = np.zeros(ntime, dtype=bool)
        inside[lo:hi] = True
        gaps = _runs((owner < 0) & inside)
        blocked = np.repeat(~covered, unit)[:ntime]
        deferred = _runs((owner >= 0) & blocked)
    estimate = int(PEAK_FACTOR * max((t.nbytes for t in tasks), default=0))
    return Plan(tuple(tasks), tuple(gaps), tuple(deferred), split_dim, estimate)


def _bytes_per(info: TemplateInfo, name: str, time_dim: str) -> float:
    """Decoded bytes of ``name`` per step along ``time_dim`` (all of it if it has none)."""
    a = info.arrays[name]
    n = math.prod(a.shape) * a.dtype.itemsize
    return n / a.shape[a.dims.index(time_dim)] if time_dim in a.dims and n else float(n)


def _spatial_split(
    info: TemplateInfo, names: Sequence[str], time_dim: str, block_bytes: int, budget: int
) -> tuple[str | None, list[tuple[int, int]]]:
    """Split along one other dimension when one block of time chunks does not fit ``budget``."""
    if PEAK_FACTOR * block_bytes <= budget or not names:
        return None, [(0, 0)]
    best: tuple[int, str, int] | None = None
    for dim in dict.fromkeys(d for n in names for d in info.arrays[n].dims):
        if dim == time_dim:
            continue
        having = [n for n in names if dim in info.arrays[n].dims]
        chunk = math.lcm(
            *(object_chunks(info.zarr_arrays[n])[info.arrays[n].dims.index(dim)] for n in having)
        )
        nblocks = -(-info.sizes[dim] // chunk)
        if nblocks > 1 and (best is None or nblocks > best[0]):
            best = (nblocks, dim, chunk)
    if best is None:
        return None, [(0, 0)]
    nblocks, dim, chunk = best
    parts = min(nblocks, math.ceil(PEAK_FACTOR * block_bytes / max(budget, 1)))
    per = -(-nblocks // parts)
    size = info.sizes[dim]
    spans = [(b * chunk, min((b + per) * chunk, size)) for b in range(0, nblocks, per)]
    return dim, spans


def _pieces(owner: np.ndarray, local: np.ndarray, offset: int) -> tuple[Piece, ...]:
    breaks = np.flatnonzero((owner[1:] != owner[:-1]) | (local[1:] != local[:-1] + 1)) + 1
    edges = [0, *breaks.tolist(), len(owner)]
    return tuple(
        Piece(
            int(owner[a]),
            (int(local[a]), int(local[b - 1]) + 1),
            (offset + a, offset + b),
        )
        for a, b in zip(edges[:-1], edges[1:], strict=True)
    )


# =============================================================================================
# Running one task (on a worker)
# =============================================================================================


@dataclass(frozen=True)
class TaskPayload:
    """Everything a worker needs for one task; small (no data unless sources are Datasets)."""

    run_id: str
    task: Task
    sources: tuple[SourceSpec, ...]  # one per piece of the task
    store: StoreLike
    storage_options: Mapping[str, Any] | None
    time_dim: str
    variables: Sequence[str] | None
    drop_variables: Sequence[str] | None
    retries: int
    slots: int


@dataclass(frozen=True)
class TaskOutcome:
    """What a task did: a small record sent back to the client."""

    index: int
    ok: bool
    nbytes: int = 0
    nchunks: int = 0
    seconds: float = 0.0
    read_seconds: float = 0.0
    attempts: int = 1
    error: str | None = None
    error_type: str | None = None
    phase: str | None = None
    worker: str = ""
    peak_rss: int = 0
    started: float = 0.0  # wall-clock time (time.time()) the task started


_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()
_opened: OrderedDict[tuple[str, str], xr.Dataset] = OrderedDict()
_opened_lock = threading.Lock()
_open_lock = threading.Lock()


def _slot(n: int) -> threading.BoundedSemaphore:
    """Per-process limit of concurrent tasks (dask workers run several threads)."""
    with _slots_lock:
        sem = _slots.get(n)
        if sem is None:
            sem = _slots[n] = threading.BoundedSemaphore(max(1, n))
        return sem


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


def _dask_worker_address() -> str | None:
    if "distributed" not in sys.modules:
        return None
    try:
        from distributed import get_worker

        return str(get_worker().address)
    except (ImportError, ValueError):
        return None


def worker_name() -> str:
    """The dask worker's address, or ``host:pid``."""
    return _dask_worker_address() or f"{socket.gethostname()}:{os.getpid()}"


_STATUS: Final = "/proc/self/status"
_peak_reset = False


def reset_peak_rss() -> None:
    """Restart this process's peak-RSS high-water mark from its current RSS (Linux).

    Processes inherit the high-water mark of the process they were forked from, so a fresh
    worker would otherwise report its parent's peak."""
    global _peak_reset
    _peak_reset = True
    with contextlib.suppress(OSError):
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")


def peak_rss() -> int:
    """Peak resident memory of this process, in bytes (since :func:`reset_peak_rss`)."""
    with contextlib.suppress(OSError, ValueError):
        with open(_STATUS) as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except ImportError:  # Windows
        import psutil

        info = psutil.Process().memory_info()
        return int(getattr(info, "peak_wset", info.rss))


def _read_task(payload: TaskPayload) -> xr.Dataset:
    task, time_dim = payload.task, payload.time_dim
    parts = []
    for piece, spec in zip(task.pieces, payload.sources, strict=True):
        ds = _open_cached(payload.run_id, spec)
        names = [n for n in task.variables if n in ds.data_vars]
        ds = select_variables(ds, spec.label, payload.variables, payload.drop_variables)[names]
        extra = [c for c in ds.coords if c not in ds.dims and c not in task.variables]
        sel = {d: slice(a, b) for d, (a, b) in task.region.items() if d != time_dim}
        if piece.src is not None:
            sel[time_dim] = slice(*piece.src)
        part = ds.drop_vars(extra).isel(sel)
        parts.append(_load(part))
    parts = [with_indexes(p) for p in parts]
    if len(parts) == 1:
        return parts[0]
    return xr.concat(
        parts, dim=time_dim, data_vars="all", coords="minimal", compat="override", join="exact"
    )


def _load(ds: xr.Dataset) -> xr.Dataset:
    if any(v.chunks is not None for v in ds.variables.values()):
        import dask

        with dask.config.set(scheduler="synchronous"):  # never a cluster inside a task
            return ds.load()
    return ds.load()


def _errors_of(exc: BaseException) -> Iterable[BaseException]:
    seen: set[int] = set()
    todo: list[BaseException | None] = [exc]
    while todo:
        e = todo.pop()
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend([e.__cause__, e.__context__])


def is_transient(exc: BaseException, phase: str, remote: bool) -> bool:
    """Whether a task that failed with ``exc`` while ``phase`` ("read"/"write") may succeed
    when tried again: store and network hiccups yes, bad data or corrupt files no."""
    if isinstance(exc, RegionError | TemplateError) and not isinstance(exc, WriteFailedError):
        return False
    for e in _errors_of(exc):
        if isinstance(e, ZarrWriteError):
            continue
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        if (phase == "write" or remote) and is_transient_error(e):
            return True
    return False


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text


def run_task(payload: TaskPayload) -> TaskOutcome:
    """Run one task on this process: read its pieces, write its chunks, retrying transient
    errors with exponential backoff. Never raises for task errors: the outcome says."""
    task = payload.task
    start = time.perf_counter()
    started = time.time()
    remote = any(s.path is not None and _is_url(s.path) for s in payload.sources)
    region = {d: slice(a, b) for d, (a, b) in task.region.items()}
    if not _peak_reset and _dask_worker_address() is not None:  # a dask worker's first task
        reset_peak_rss()
    with _slot(payload.slots):
        attempt = 0
        while True:
            attempt += 1
            phase = "read"
            t0 = time.perf_counter()
            try:
                ds = _read_task(payload)
                read_s = time.perf_counter() - t0
                phase = "write"
                result = write_region(
                    ds, payload.store, region=region, storage_options=payload.storage_options
                )
                del ds
                return TaskOutcome(
                    index=task.index,
                    ok=True,
                    nbytes=result.nbytes,  # type: ignore[union-attr]
                    nchunks=result.nchunks,  # type: ignore[union-attr]
                    seconds=time.perf_counter() - start,
                    read_seconds=read_s,
                    attempts=attempt,
                    worker=worker_name(),
                    peak_rss=peak_rss(),
                    started=started,
                )
            except Exception as exc:  # noqa: BLE001  (the outcome reports it)
                if attempt <= payload.retries and is_transient(exc, phase, remote):
                    if phase == "read":  # reopen the sources on the next attempt
                        _forget(payload.run_id, payload.sources)
                    delay = min(_MAX_BACKOFF_S, BACKOFF_S * 2 ** (attempt - 1))
                    logger.info("task %d: %s; retrying in %.2f s", task.index, exc, delay)
                    time.sleep(delay * (0.5 + random.random()))
                    continue
                return TaskOutcome(
                    index=task.index,
                    ok=False,
                    seconds=time.perf_counter() - start,
                    attempts=attempt,
                    error=_describe(exc),
                    error_type=type(exc).__name__,
                    phase=phase,
                    worker=worker_name(),
                    peak_rss=peak_rss(),
                    started=started,
                )


def _warm(spec: SourceSpec | None = None, sys_path: Sequence[str] | None = None) -> None:
    """Pay a worker's one-time costs before its first task: imports, backend discovery, and
    the lazy imports of opening a first source (metadata only). Also gives forkserver workers
    the client's ``sys.path``, so stores and sources defined in the client's modules unpickle."""
    if sys_path is not None:
        sys.path[:] = list(sys_path)
    reset_peak_rss()
    for name in ("netCDF4", "h5netcdf"):
        with contextlib.suppress(ImportError):
            __import__(name)
    xr.backends.list_engines()
    if spec is not None and spec.path is not None and not _is_url(spec.path):
        with contextlib.suppress(Exception):
            open_source(spec, indexes=False).close()


def _noop() -> None:
    """Submitted once per worker so that the pool starts all of them at once."""


# =============================================================================================
# Executors
# =============================================================================================


@dataclass(frozen=True)
class _Capacity:
    workers: int
    slots: int  # concurrent tasks per worker process
    memory_limit: int | None  # per worker


class _SerialRunner:
    """Runs tasks one after another in this process (``max_workers=0``; debugging, tests)."""

    kind: ExecutorKind = "serial"

    def __init__(self) -> None:
        self.description = "this process (serial)"

    def capacity(self, memory_limit: int | None) -> _Capacity:
        return _Capacity(1, 1, memory_limit or _total_memory())

    def scan(self, specs: Sequence[SourceSpec], args: tuple[Any, ...]) -> list[SourceSchema]:
        return scan_batch(specs, *args)

    def run(
        self, payloads: list[TaskPayload], retries: int, progress: bool
    ) -> dict[int, TaskOutcome]:
        out = {}
        with _bar(len(payloads), progress) as bar:
            for p in payloads:
                out[p.task.index] = run_task(p)
                _log_outcome(out[p.task.index])
                bar.update(1)
        return out

    def close(self, run_id: str | None = None) -> None:
        if run_id is not None:
            close_run(run_id)


#: Modules the forkserver imports once, so that forked workers start warm: the library, the
#: NetCDF engines, and what xarray imports lazily on its first open (a third of a second per
#: worker otherwise). Missing ones are skipped.
_PRELOAD: Final = (
    __name__,
    "netCDF4",
    "h5netcdf",
    "cftime",
    "dask",
    "dask.base",
    "dask.delayed",
    "dask.array",
    "psutil",
    "jinja2",
    "xarray.backends.netCDF4_",
    "xarray.backends.h5netcdf_",
    "xarray.backends.zarr",
)
#: With this many sources or fewer, the client scans them itself (milliseconds each) rather
#: than wait for workers.
_SCAN_HERE_MAX: Final = 8


class _ProcessRunner:
    """A local pool of worker processes; survives workers that die (SIGKILL, OOM killer).

    Workers come from a fresh interpreter, never from a fork of this (threaded) process:
    ``"forkserver"`` where available (a clean server process imports the library once and
    forks workers from it, so later pools start in milliseconds), else ``"spawn"``. The pool
    starts in the background while the client scans the sources.
    """

    kind: ExecutorKind = "processes"

    def __init__(
        self, max_workers: int, start_method: str | None = None, warm: SourceSpec | None = None
    ) -> None:
        methods = multiprocessing.get_all_start_methods()
        if start_method is None:
            start_method = "forkserver" if "forkserver" in methods else "spawn"
        if start_method not in ("spawn", "forkserver") or start_method not in methods:
            raise ValueError(
                f"start_method must be 'spawn' or 'forkserver' (available here: {methods}); "
                f"got {start_method!r}. 'fork' is unsafe with zarr's I/O thread"
            )
        self.max_workers = max_workers
        self.method = start_method
        self.description = f"local process pool, {max_workers} worker(s) ({self.method})"
        self._warm_spec = warm
        self._pool: cf.ProcessPoolExecutor | None = None
        self._starting = threading.Thread(target=self._start, name="xzw-pool-start", daemon=True)
        self._starting.start()

    def _start(self) -> None:
        ctx = multiprocessing.get_context(self.method)
        if self.method == "forkserver":
            ctx.set_forkserver_preload(list(_PRELOAD))
        pool = cf.ProcessPoolExecutor(
            self.max_workers,
            mp_context=ctx,
            initializer=_warm,
            initargs=(self._warm_spec, list(sys.path)),
        )
        for _ in range(self.max_workers):  # start every worker now, not on demand
            pool.submit(_noop)
        self._pool = pool

    def capacity(self, memory_limit: int | None) -> _Capacity:
        limit = memory_limit or _total_memory() // self.max_workers
        return _Capacity(self.max_workers, 1, limit)

    def scan(self, specs: Sequence[SourceSpec], args: tuple[Any, ...]) -> list[SourceSchema]:
        """Scan on the workers, which keep the sources open for the tasks; meanwhile the
        client scans batches from the other end of the queue (all of them if the pool is
        still starting)."""
        here = (*args[:-1], None)  # the client keeps nothing open
        if len(specs) <= _SCAN_HERE_MAX:
            return scan_batch(specs, *here)
        batches = deque(enumerate(_batches(len(specs), self.max_workers)))
        results: dict[int, list[SourceSchema] | None] = {}
        errors: list[BaseException] = []
        lock = threading.Lock()

        def feed() -> None:
            self._starting.join()
            inflight: dict[cf.Future[list[SourceSchema]], int] = {}
            try:
                while True:
                    with lock:
                        while batches and not errors and len(inflight) < self.max_workers:
                            k, b = batches.popleft()
                            assert self._pool is not None
                            fut = self._pool.submit(scan_batch, [specs[i] for i in b], *args)
                            inflight[fut] = k
                    if not inflight:
                        return
                    done, _ = cf.wait(inflight, return_when=cf.FIRST_COMPLETED)
                    for fut in done:
                        k = inflight.pop(fut)
                        try:
                            results[k] = fut.result()
                        except BrokenProcessPool:
                            results[k] = None  # scanned here below
                        except BaseException as exc:  # noqa: BLE001  (raised by scan())
                            errors.append(exc)
            except BrokenProcessPool:
                for k in inflight.values():
                    results[k] = None
            except BaseException as exc:  # noqa: BLE001  (raised by scan())
                errors.append(exc)

        feeder = threading.Thread(target=feed, name="xzw-scan-feed", daemon=True)
        feeder.start()
        try:
            while not errors:
                with lock:
                    if not batches:
                        break
                    k, b = batches.pop()
                results[k] = scan_batch([specs[i] for i in b], *here)
        except BaseException as exc:  # noqa: BLE001  (stops the feeder; raised below)
            errors.append(exc)
        feeder.join()
        if errors:
            raise errors[0]
        out: list[SourceSchema] = []
        for k, b in enumerate(_batches(len(specs), self.max_workers)):
            got = results.get(k)
            out.extend(got if got is not None else scan_batch([specs[i] for i in b], *here))
        return out

    def run(
        self, payloads: list[TaskPayload], retries: int, progress: bool
    ) -> dict[int, TaskOutcome]:
        pending = {p.task.index: p for p in payloads}
        out: dict[int, TaskOutcome] = {}
        crashes: Counter[int] = Counter()
        self._starting.join()
        with _bar(len(payloads), progress) as bar:
            while pending:
                if self._pool is None:
                    self._start()
                assert self._pool is not None
                try:
                    futures = {self._pool.submit(run_task, p): i for i, p in pending.items()}
                except BrokenProcessPool:  # broke before (e.g. while scanning): start afresh
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                    continue
                broken = False
                for fut in cf.as_completed(futures):
                    i = futures[fut]
                    try:
                        out[i] = fut.result()
                        _log_outcome(out[i])
                    except BrokenProcessPool:
                        broken = True
                        continue
                    except Exception as exc:  # noqa: BLE001  (e.g. the payload did not pickle)
                        out[i] = TaskOutcome(
                            index=i,
                            ok=False,
                            error=_describe(exc),
                            error_type=type(exc).__name__,
                            phase="submit",
                        )
                    del pending[i]
                    bar.update(1)
                if broken:
                    self._pool.shutdown(wait=False, cancel_futures=True)
                    self._pool = None
                    for i in list(pending):
                        crashes[i] += 1
                        if crashes[i] > retries:
                            out[i] = TaskOutcome(
                                index=i,
                                ok=False,
                                attempts=crashes[i],
                                error=(
                                    "a worker process died (killed by a signal such as SIGKILL, "
                                    f"or by the out-of-memory killer) {crashes[i]} time(s) "
                                    "before this task finished"
                                ),
                                error_type="WorkerDied",
                                phase="run",
                            )
                            del pending[i]
                            bar.update(1)
                    logger.warning(
                        "a worker process died; restarting the pool for %d task(s)", len(pending)
                    )
        return out

    def close(self, run_id: str | None = None) -> None:
        self._starting.join()
        if self._pool is not None:
            # every outcome is in: let the workers exit on their own
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = None


class _DaskRunner:
    """Tasks as futures on a dask.distributed cluster (a Client or a scheduler address)."""

    kind: ExecutorKind = "dask"

    def __init__(self, client: Any) -> None:
        from distributed import Client

        self._own = not isinstance(client, Client)
        # distributed: Client.__init__ is unannotated
        self.client = Client(client) if self._own else client  # type: ignore[no-untyped-call]
        address = getattr(self.client.scheduler, "address", None) or "?"
        self.description = f"dask.distributed at {address}"

    def _workers(self) -> dict[str, dict[str, Any]]:
        info = self.client.scheduler_info(n_workers=-1)
        return dict(info.get("workers", {}))

    def capacity(self, memory_limit: int | None) -> _Capacity:
        workers = self._workers()
        if not workers:
            self.client.wait_for_workers(1, timeout=60)
            workers = self._workers()
        limits = [int(w.get("memory_limit") or 0) for w in workers.values()]
        known = [lim for lim in limits if lim > 0]
        limit = min(known) if known else None
        if memory_limit is not None:
            limit = min(memory_limit, limit) if limit else memory_limit
        threads = min(int(w.get("nthreads") or 1) for w in workers.values())
        scheduler = self.client.scheduler  # None only once the client is closed
        address = scheduler.address if scheduler is not None else "?"
        self.description = f"dask.distributed at {address}, {len(workers)} worker(s)"
        return _Capacity(len(workers), threads, limit)

    def scan(self, specs: Sequence[SourceSpec], args: tuple[Any, ...]) -> list[SourceSchema]:
        """Scan on the workers: the client may not even see the files."""
        if len(specs) <= 1:
            return scan_batch(specs, *args)
        batches = _batches(len(specs), max(1, len(self._workers())))
        futures = self.client.map(
            scan_batch,
            [[specs[i] for i in b] for b in batches],
            *([a] * len(batches) for a in args),
            key="xzw-scan",
            pure=False,
        )
        try:
            results = self.client.gather(futures)
        except BaseException:
            self.client.cancel(futures)
            raise
        return [schema for batch in results for schema in batch]

    def run(
        self, payloads: list[TaskPayload], retries: int, progress: bool
    ) -> dict[int, TaskOutcome]:
        from distributed import as_completed

        if not payloads:
            return {}
        futures = self.client.map(run_task, payloads, key="xzw-convert", pure=False)
        index = {f.key: p.task.index for f, p in zip(futures, payloads, strict=True)}
        out: dict[int, TaskOutcome] = {}
        try:
            if progress:
                from distributed import progress as dask_progress

                # a widget in notebooks; blocks with a text bar otherwise
                dask_progress(futures)  # type: ignore[no-untyped-call]  # distributed: unannotated
                sys.stdout.write("\n")
            completed = as_completed(  # type: ignore[no-untyped-call]  # distributed: unannotated
                futures, with_results=True, raise_errors=False
            )
            for fut, result in completed:
                i = index[fut.key]
                if isinstance(result, BaseException):
                    out[i] = TaskOutcome(
                        index=i,
                        ok=False,
                        error=_describe(result),
                        error_type=type(result).__name__,
                        phase="run",
                    )
                else:
                    out[i] = result
                _log_outcome(out[i])
        except BaseException:
            self.client.cancel(futures)
            raise
        return out

    def close(self, run_id: str | None = None) -> None:
        if run_id is not None:
            with contextlib.suppress(Exception):
                self.client.run(close_run, run_id)  # workers close the run's sources
        if self._own:
            self.client.close()


def _total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


class _NoBar:
    def update(self, n: int) -> None:
        pass

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *args: object) -> None:
        pass


def _bar(total: int, progress: bool) -> Any:
    if not progress:
        return _NoBar()
    from tqdm.auto import tqdm

    return tqdm(total=total, unit="task", desc="convert", delay=0.5)


def parse_memory_limit(value: Any) -> int | None:
    """``None``/``"auto"``: decide later; a number of bytes; or a string such as ``"2GB"``."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    if isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            value = parse_bytes(value)
        except ValueError as e:
            raise ValueError(f"memory_limit {value!r} is not a size such as '2GB': {e}") from e
    if isinstance(value, bool) or not isinstance(value, int | float) or value <= 0:
        raise ValueError(f"memory_limit must be a positive size such as '2GB', got {value!r}")
    return int(value)


def _make_runner(
    client: Any,
    max_workers: int | None,
    start_method: str | None = None,
    warm: SourceSpec | None = None,
) -> _SerialRunner | _ProcessRunner | _DaskRunner:
    if client is not None:
        return _DaskRunner(client)
    if max_workers is None:
        max_workers = min(2, os.cpu_count() or 1)
    if not isinstance(max_workers, int) or max_workers < 0:
        raise ValueError(f"max_workers must be a non-negative integer, got {max_workers!r}")
    if max_workers == 0:
        return _SerialRunner()
    return _ProcessRunner(max_workers, start_method, warm)


# =============================================================================================
# Report
# =============================================================================================


@dataclass(frozen=True)
class SourceOutcome:
    """What happened to one source.

    Attributes
    ----------
    source
        Path, URL or ``<Dataset #i>``.
    first, last
        Its first and last time label.
    status
        ``"written"``, ``"skipped"`` (its chunks were already written: resume), ``"failed"``
        (a task reading it failed) or ``"incomplete"`` (some of its steps share a chunk with
        steps no source covers, so were not written).
    nbytes
        Decoded bytes of it written in this run.
    """

    source: str
    first: Any
    last: Any
    status: Literal["written", "skipped", "failed", "incomplete"]
    nbytes: int


@dataclass(frozen=True)
class TaskFailure:
    """A failed task (or a gap no source covers), with its sources and region named.

    Attributes
    ----------
    task
        Task index (-1 for gaps).
    sources
        The sources the task read.
    region
        ``{dim: (first label, last label)}`` of the unwritten region (inclusive).
    index_region
        The same as ``{dim: (start, stop)}`` positions.
    error
        What went wrong.
    error_type
        The exception's class name (``"WorkerDied"`` for crashes, ``"MissingSource"`` for gaps).
    phase
        ``"read"``, ``"write"``, ``"run"`` or ``"plan"``.
    attempts
        How often the task was tried.
    worker
        Where it last ran.
    """

    task: int
    sources: tuple[str, ...]
    region: Mapping[str, tuple[Any, Any]]
    index_region: Mapping[str, tuple[int, int]]
    error: str
    error_type: str
    phase: str
    attempts: int = 1
    worker: str = ""

    def __str__(self) -> str:
        where = ", ".join(f"{d} {a} .. {b}" for d, (a, b) in self.region.items())
        src = ", ".join(self.sources) if self.sources else "no source"
        return f"[{where}] from {src}: {self.error}"


@dataclass(frozen=True)
class WorkerStats:
    """Tasks and measured peak RSS (resident memory) of one worker process."""

    worker: str
    tasks: int
    peak_rss: int
    memory_limit: int | None


@dataclass(frozen=True)
class ConvertReport:
    """What :func:`convert` did.

    Attributes
    ----------
    store
        The target, as text.
    executor
        Where tasks ran.
    sources
        One :class:`SourceOutcome` per source, in time order.
    ntasks, written, skipped, failed
        Tasks planned; written in this run; skipped because every chunk of them existed
        (resume); failed.
    nchunks, nbytes
        Chunk objects and decoded bytes written in this run.
    seconds
        Wall time of the whole call.
    failures
        Failed tasks and gaps, sources and regions named.
    deferred
        ``(first, last)`` time labels sources cover but that were not written because their
        chunk also holds steps no source covers (the template extends beyond the sources).
    workers
        Peak RSS per worker process, and the memory limit it was planned for.
    task_memory_estimate
        Estimated peak memory of the largest task.
    concurrency
        Tasks run at once.
    """

    store: str
    executor: str
    time_dim: str
    sources: tuple[SourceOutcome, ...]
    ntasks: int
    written: int
    skipped: int
    failed: int
    nchunks: int
    nbytes: int
    seconds: float
    failures: tuple[TaskFailure, ...]
    deferred: tuple[tuple[Any, Any], ...]
    workers: tuple[WorkerStats, ...]
    memory_limit: int | None
    task_memory_estimate: int
    concurrency: int

    @property
    def ok(self) -> bool:
        """True when nothing failed and no source is missing inside the sources' extent."""
        return not self.failures

    @property
    def throughput(self) -> float:
        """Decoded bytes written per second of wall time."""
        return self.nbytes / self.seconds if self.seconds > 0 else 0.0

    def summary(self) -> str:
        """Files, bytes, time, throughput, memory, failures: a few lines for people."""
        from dask.utils import format_bytes

        state = "OK" if self.ok else f"FAILED ({len(self.failures)} failure(s))"
        counts = Counter(s.status for s in self.sources)
        lines = [
            f"convert: {len(self.sources)} source(s) -> {self.store}: {state}",
            (
                f"  tasks: {self.written} written, {self.skipped} skipped (already written), "
                f"{self.failed} failed, of {self.ntasks}; {self.nchunks} chunk(s)"
            ),
            (
                f"  {format_bytes(self.nbytes)} in {self.seconds:.2f} s "
                f"({format_bytes(int(self.throughput))}/s)"
            ),
            "  sources: " + ", ".join(f"{n} {s}" for s, n in sorted(counts.items())),
            f"  executor: {self.executor}; {self.concurrency} task(s) at once; "
            f"task peak estimate {format_bytes(self.task_memory_estimate)}"
            + (
                f"; memory limit {format_bytes(self.memory_limit)} per worker"
                if self.memory_limit
                else ""
            ),
        ]
        for w in self.workers:
            share = (
                f" ({100 * w.peak_rss / w.memory_limit:.0f}% of the limit)"
                if w.memory_limit
                else ""
            )
            lines.append(
                f"    {w.worker}: {w.tasks} task(s), peak RSS {format_bytes(w.peak_rss)}{share}"
            )
        if self.deferred:
            spans = ", ".join(f"{a} .. {b}" for a, b in self.deferred[:4])
            lines.append(
                f"  not written (their chunks extend beyond the sources; convert again with "
                f"the neighbouring sources): {spans}"
            )
        for f in self.failures[:20]:
            lines.append(f"  FAILED {f}")
        if len(self.failures) > 20:
            lines.append(f"  ... and {len(self.failures) - 20} more failure(s)")
        return "\n".join(lines)


# =============================================================================================
# convert
# =============================================================================================


def convert(
    sources: Any,
    store: StoreLike,
    *,
    time_dim: str = "time",
    global_start: Any = None,
    global_end: Any = None,
    freq: str | pd.DateOffset | None = None,
    chunks: Mapping[str, int | None] | str | None = None,
    access_pattern: str = "balanced",
    compression: Any = "default",
    packing: Mapping[str, Any] | None = None,
    variables: Sequence[str] | None = None,
    drop_variables: Sequence[str] | None = None,
    client: Any = None,
    max_workers: int | None = None,
    memory_limit: int | str | None = None,
    resume: bool = True,
    retries: int = 3,
    progress: bool = True,
    summary: bool | None = None,
    engine: str | None = None,
    open_kwargs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
    zarr_format: int = 3,
    start_method: str | None = None,
    raise_on_failure: bool = True,
) -> ConvertReport:
    """Convert many sources (NetCDF, Zarr, ... files or Datasets) into one Zarr archive.

    Work is planned by output chunks: every task owns whole chunks and reads the slices of
    whichever sources overlap them, so source boundaries may fall anywhere and every run writes
    the same bytes. Tasks run on a local pool of spawned processes or on a dask.distributed
    cluster; each opens its own sources, so no data passes through the client.

    Parameters
    ----------
    sources
        A path, glob pattern (``"data/*.nc"``), fsspec URL (``"s3://bucket/*.nc"``) or
        ``xr.Dataset``, or a list of them, in any order. Every source must hold the same
        variables on the same grid; time steps may not overlap.
    store
        The target: path, fsspec URL or zarr Store.
    time_dim
        The dimension the sources are split along.
    global_start, global_end, freq
        Extent and step of the archive's time axis (default: the sources' union, the step
        inferred from their labels). Ignored when an existing template is reused.
    chunks, access_pattern, compression, packing, zarr_format
        The template's layout, as for :func:`~xarray_zarrwrite.to_template` (``packing``
        without a ``valid_range`` reads the first source's data on the client for its range).
    variables, drop_variables
        Data variables to convert (default all), and ones to leave out.
    client
        A ``distributed.Client`` or a scheduler address (``"tcp://host:8786"``) to run on;
        None runs a local process pool.
    max_workers
        Processes of the local pool (default ``min(2, cpu_count)``; ``0`` runs serially in
        this process). Ignored with a client.
    memory_limit
        Memory per worker (``"4GB"``, bytes): tasks are sized and concurrency capped so that
        estimated peaks stay below it. Default: a dask worker's own limit, or the machine's
        memory divided among the local workers.
    resume
        Reuse an existing template and skip tasks whose chunks all exist (after a crash, only
        what is missing is written). False replaces whatever the store holds.
    retries
        Extra attempts of a task after a transient store or network error (with exponential
        backoff) or after its worker process died.
    progress
        A progress bar: tqdm locally (shown after half a second), dask's progress with a
        client.
    summary
        Print :meth:`ConvertReport.summary` (files, bytes, time, throughput, peak memory per
        worker, failures) on stderr at the end; default: as ``progress``.
    engine, open_kwargs
        Passed to ``xr.open_dataset`` for every path/URL source.
    storage_options, source_storage_options
        fsspec options of the target and of URL sources.
    start_method
        How the local pool starts workers: ``"forkserver"`` (default where available) or
        ``"spawn"``; never ``"fork"``.
    raise_on_failure
        Raise :class:`~xarray_zarrwrite.errors.WriteFailedError` (with the report as its
        ``report`` attribute) when anything failed. With False, check ``report.ok``.

    Returns
    -------
    ConvertReport

    Raises
    ------
    RegionError
        Or a subclass: a source does not match the template or the other sources (names the
        file), or two sources overlap. Nothing is written.
    TemplateError
        The template cannot be made (e.g. the time step cannot be inferred: pass ``freq``).
    WriteFailedError
        Some tasks failed (``raise_on_failure``): the message names their sources and
        regions; ``err.report`` is the :class:`ConvertReport`; :func:`check` lists what is
        missing.
    FileNotFoundError
        A source path or pattern matches nothing.
    """
    t_start = time.perf_counter()
    if not isinstance(retries, int) or retries < 0:
        raise ValueError(f"retries must be a non-negative integer, got {retries!r}")
    limit = parse_memory_limit(memory_limit)
    specs = expand_sources(
        sources, engine=engine, open_kwargs=open_kwargs, storage_options=source_storage_options
    )
    if drop_variables and any(s.path is not None for s in specs):
        specs = [
            replace(s, open_kwargs={"drop_variables": list(drop_variables), **s.open_kwargs})
            if s.path is not None
            else s
            for s in specs
        ]
    target_arg = _normalize_store(store)
    target = resolve_store(target_arg, storage_options=storage_options)
    ensure_writable(target)

    # local workers start (and warm up on the first source) while the client scans
    runner = _make_runner(client, max_workers, start_method, specs[0])
    run_id = uuid.uuid4().hex
    try:
        schemas = _scan_all(runner, specs, (time_dim, variables, drop_variables, run_id))
        _log_phase("scanned %d source(s)", t_start, len(specs))
        order = sorted(range(len(specs)), key=lambda i: schemas[i].times.min())
        specs = [specs[i] for i in order]
        schemas = [schemas[i] for i in order]

        info = _existing_template(target) if resume else None
        if info is not None:
            _check_reuse(info, chunks)
            ref = Reference.from_template(info, time_dim)
            positions = place_sources(schemas, ref, time_dim)
        else:
            opened = open_source(specs[0])
            try:
                example = with_indexes(
                    select_variables(opened, specs[0].label, variables, drop_variables)
                )
                axis, freq = _infer_axis(example, schemas, time_dim, global_start, global_end, freq)
                place_sources(schemas, Reference.from_source(schemas[0], axis, time_dim), time_dim)
                # the template needs the example's metadata and one step of data (read here,
                # on the client); packing without a valid_range takes its range from the
                # whole first source
                if packing is None:
                    example = example.isel({time_dim: slice(0, 1)})
                to_template(
                    _load(example),
                    target,
                    time_dim=time_dim,
                    global_start=axis[0],
                    global_end=axis[-1],
                    freq=freq,
                    chunks=chunks,
                    access_pattern=access_pattern,
                    compression=compression,
                    packing=packing,
                    zarr_format=zarr_format,
                    mode="w-" if resume else "w",
                )
            finally:
                if specs[0].dataset is None:
                    opened.close()
            info = load_template(target)
            positions = place_sources(schemas, Reference.from_template(info, time_dim), time_dim)

        _log_phase("template ready", t_start)
        capacity = runner.capacity(limit)
        budget = _task_budget(capacity)
        write_vars = [
            n
            for n, a in info.arrays.items()
            if n not in info.indexes
            and time_dim in a.dims
            and (not a.is_coord or n in schemas[0].time_coords)
        ]
        static_vars = [
            n for n, a in info.arrays.items() if not a.is_coord and time_dim not in a.dims
        ]
        plan = plan_tasks(
            info,
            positions,
            time_dim=time_dim,
            write_vars=write_vars,
            static_vars=static_vars,
            budget=budget,
            slots=capacity.workers * capacity.slots,
        )
        slots = capacity.slots
        if capacity.memory_limit and plan.task_estimate:
            fit = (capacity.memory_limit - WORKER_BASELINE) // max(plan.task_estimate, 1)
            slots = int(max(1, min(slots, fit)))
            if fit < 1:
                logger.warning(
                    "the largest task is estimated at %d bytes, more than the memory limit "
                    "of %d bytes per worker allows; running one task per worker",
                    plan.task_estimate,
                    capacity.memory_limit,
                )
        done = _done_tasks(target, info, plan.tasks) if resume else set()
        payloads = [
            _payload(
                run_id,
                t,
                specs,
                target_arg,
                storage_options,
                time_dim,
                variables,
                drop_variables,
                retries,
                slots,
            )
            for t in plan.tasks
            if t.index not in done
        ]
        _log_phase("planned %d task(s), %d to run", t_start, len(plan.tasks), len(payloads))
        outcomes = runner.run(payloads, retries, progress)
        _log_phase("tasks finished", t_start)
    finally:
        runner.close(run_id)
    _log_phase("workers stopped", t_start)

    report = _report(
        target=target,
        runner=runner,
        time_dim=time_dim,
        info=info,
        specs=specs,
        positions=positions,
        plan=plan,
        done=done,
        outcomes=outcomes,
        capacity=replace(capacity, slots=slots),
        seconds=time.perf_counter() - t_start,
    )
    if progress if summary is None else summary:
        print(report.summary(), file=sys.stderr)
    if raise_on_failure and not report.ok:
        err = WriteFailedError(
            f"convert failed: {len(report.failures)} failure(s); run check() to see what is "
            "missing and convert again (resume=True) to write only that\n"
            + "\n".join(f"  {f}" for f in report.failures[:20])
        )
        err.report = report  # type: ignore[attr-defined]
        raise err
    return report


def _log_outcome(o: TaskOutcome) -> None:
    logger.debug(
        "task %d on %s: started at %.3f, %s in %.3f s (read %.3f s), %d attempt(s)",
        o.index,
        o.worker,
        o.started % 1000,
        "ok" if o.ok else o.error,
        o.seconds,
        o.read_seconds,
        o.attempts,
    )


def _log_phase(msg: str, t_start: float, *args: Any) -> None:
    if logger.isEnabledFor(logging.DEBUG):
        now = time.perf_counter()
        logger.debug("convert +%.3f s (at %.3f): " + msg, now - t_start, time.time() % 1000, *args)


def _normalize_store(store: StoreLike) -> StoreLike:
    """Absolute local paths, so workers with another working directory find the store."""
    if isinstance(store, str | os.PathLike):
        path = os.fspath(store)
        path = path.removeprefix("file://")
        if not _is_url(path):
            return os.path.abspath(os.path.expanduser(path))
        return path
    return store


def _scan_all(
    runner: _SerialRunner | _ProcessRunner | _DaskRunner,
    specs: Sequence[SourceSpec],
    args: tuple[Any, ...],
) -> list[SourceSchema]:
    """Scan every source: Dataset objects here, paths and URLs where the runner runs tasks."""
    paths = [i for i, s in enumerate(specs) if s.dataset is None]
    out: list[SourceSchema | None] = [None] * len(specs)
    for i, schema in zip(paths, runner.scan([specs[i] for i in paths], args), strict=True):
        out[i] = schema
    for i, spec in enumerate(specs):
        if spec.dataset is not None:
            out[i] = scan_source(spec, *args)
    return [s for s in out if s is not None]


def _existing_template(target: Any) -> TemplateInfo | None:
    try:
        return load_template(target)
    except TemplateNotFoundError:
        return None


def _check_reuse(info: TemplateInfo, chunks: Any) -> None:
    if not isinstance(chunks, Mapping):
        return
    for dim, size in chunks.items():
        for a in info.arrays.values():
            if a.is_coord or dim not in a.dims or size in (None, -1):
                continue
            have = a.chunks[a.dims.index(dim)]
            if have != min(int(size), a.shape[a.dims.index(dim)]):
                raise TemplateError(
                    f"the store already holds a template with chunks of {have} along {dim!r} "
                    f"(asked for {size}); pass resume=False to replace it, or leave chunks= out"
                )


def _task_budget(capacity: _Capacity) -> int:
    if capacity.memory_limit is None:
        return int(PEAK_FACTOR * MAX_TASK_BYTES)
    room = max(capacity.memory_limit - WORKER_BASELINE, capacity.memory_limit // 4)
    return int(room // max(1, capacity.slots))


def _done_tasks(target: Any, info: TemplateInfo, tasks: Sequence[Task]) -> set[int]:
    names = sorted({n for t in tasks for n in t.variables})
    found, stray = existing_chunks(target, info, names)
    if stray:
        # temporary files of writes a crash interrupted: never data; tidy them up
        async def _delete() -> None:
            await asyncio.gather(*(target.delete(k) for k in stray))

        try:
            sync(_delete())
        except Exception as exc:  # noqa: BLE001  (tidying up is optional)
            logger.warning("could not delete %d leftover temporary file(s): %s", len(stray), exc)
    done = set()
    for t in tasks:
        if all(set(idx) <= found[n] for n, idx in t.chunk_indices(info).items()):
            done.add(t.index)
    return done


def _payload(
    run_id: str,
    task: Task,
    specs: Sequence[SourceSpec],
    store: StoreLike,
    storage_options: Mapping[str, Any] | None,
    time_dim: str,
    variables: Sequence[str] | None,
    drop_variables: Sequence[str] | None,
    retries: int,
    slots: int,
) -> TaskPayload:
    pieces, sources = [], []
    for p in task.pieces:
        spec = specs[p.source]
        if spec.dataset is not None and p.src is not None:
            # ship only the slice (still lazy if the Dataset is file- or dask-backed)
            spec = replace(spec, dataset=spec.dataset.isel({time_dim: slice(*p.src)}))
            p = replace(p, src=(0, p.src[1] - p.src[0]))
        pieces.append(p)
        sources.append(spec)
    return TaskPayload(
        run_id=run_id,
        task=replace(task, pieces=tuple(pieces)),
        sources=tuple(sources),
        store=store,
        storage_options=storage_options,
        time_dim=time_dim,
        variables=variables,
        drop_variables=drop_variables,
        retries=retries,
        slots=slots,
    )


def _report(
    *,
    target: Any,
    runner: Any,
    time_dim: str,
    info: TemplateInfo,
    specs: Sequence[SourceSpec],
    positions: Sequence[np.ndarray],
    plan: Plan,
    done: set[int],
    outcomes: Mapping[int, TaskOutcome],
    capacity: _Capacity,
    seconds: float,
) -> ConvertReport:
    fmt_cache: dict[str, Callable[[int], Any]] = {}

    def fmt(dim: str, i: int) -> Any:
        if dim not in fmt_cache:
            fmt_cache[dim] = label_formatter(info.indexes.get(dim))
        return fmt_cache[dim](i)

    failures: list[TaskFailure] = []
    failed_sources: set[int] = set()
    for t in plan.tasks:
        o = outcomes.get(t.index)
        if o is None or o.ok:
            continue
        srcs = sorted({p.source for p in t.pieces})
        failed_sources.update(srcs)
        failures.append(
            TaskFailure(
                task=t.index,
                sources=tuple(specs[s].label for s in srcs),
                region={d: (fmt(d, a), fmt(d, b - 1)) for d, (a, b) in t.region.items()},
                index_region=dict(t.region),
                error=o.error or "unknown error",
                error_type=o.error_type or "Error",
                phase=o.phase or "run",
                attempts=o.attempts,
                worker=o.worker,
            )
        )
    for lo, hi in plan.gaps:
        failures.append(
            TaskFailure(
                task=-1,
                sources=(),
                region={time_dim: (fmt(time_dim, lo), fmt(time_dim, hi - 1))},
                index_region={time_dim: (lo, hi)},
                error=(
                    f"no source covers {time_dim} {fmt(time_dim, lo)} .. {fmt(time_dim, hi - 1)} "
                    f"({hi - lo} step(s)) inside the sources' extent; add the missing source(s)"
                ),
                error_type="MissingSource",
                phase="plan",
            )
        )
    deferred_mask = np.zeros(info.sizes[time_dim], dtype=bool)
    for lo, hi in plan.deferred:
        deferred_mask[lo:hi] = True

    # per source: bytes written this run, status
    step_bytes = dict.fromkeys(range(len(specs)), 0.0)
    touched: dict[int, set[str]] = {i: set() for i in range(len(specs))}
    for t in plan.tasks:
        o = outcomes.get(t.index)
        state = "skipped" if t.index in done else ("written" if o and o.ok else "failed")
        tsteps = sum((p.dst[1] - p.dst[0]) if p.dst else 1 for p in t.pieces) or 1
        for p in t.pieces:
            touched[p.source].add(state)
            if state == "written":
                steps = (p.dst[1] - p.dst[0]) if p.dst else 1
                step_bytes[p.source] += t.nbytes * steps / tsteps
    outs = []
    for i, spec in enumerate(specs):
        states = touched[i]
        if "failed" in states or i in failed_sources:
            status = "failed"
        elif deferred_mask[positions[i]].any():
            status = "incomplete"
        elif states == {"skipped"}:
            status = "skipped"
        else:
            status = "written"
        outs.append(
            SourceOutcome(
                source=spec.label,
                first=fmt(time_dim, int(positions[i].min())),
                last=fmt(time_dim, int(positions[i].max())),
                status=status,  # type: ignore[arg-type]
                nbytes=int(step_bytes[i]),
            )
        )
    per_worker: dict[str, list[TaskOutcome]] = {}
    for o in outcomes.values():
        if o.worker:
            per_worker.setdefault(o.worker, []).append(o)
    workers = tuple(
        WorkerStats(w, len(os_), max(o.peak_rss for o in os_), capacity.memory_limit)
        for w, os_ in sorted(per_worker.items())
    )
    ok_outcomes = [o for o in outcomes.values() if o.ok]
    return ConvertReport(
        store=str(target),
        executor=runner.description,
        time_dim=time_dim,
        sources=tuple(outs),
        ntasks=len(plan.tasks),
        written=len(ok_outcomes),
        skipped=len(done),
        failed=sum(1 for o in outcomes.values() if not o.ok),
        nchunks=sum(o.nchunks for o in ok_outcomes),
        nbytes=sum(o.nbytes for o in ok_outcomes),
        seconds=seconds,
        failures=tuple(failures),
        deferred=tuple((fmt(time_dim, a), fmt(time_dim, b - 1)) for a, b in plan.deferred),
        workers=workers,
        memory_limit=capacity.memory_limit,
        task_memory_estimate=plan.task_estimate,
        concurrency=capacity.workers * capacity.slots,
    )
