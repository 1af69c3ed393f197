"""What a worker runs: one task's read, write and retries."""

from __future__ import annotations

import contextlib
import logging
import os
import random
import re
import socket
import sys
import threading
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import xarray as xr

from .._icechunk import fork_changes
from .._store import resolve_store
from ..api import write_region
from ..config import config
from ..errors import (
    RegionError,
    TemplateError,
    WriteFailedError,
    ZarrWriteError,
)
from ..storage._buffered import is_transient_error
from ._assemble import assemble, expand_member, piece_selection
from ._plan import Task
from ._sources import (
    SourceSpec,
    _forget,
    _is_url,
    _load,
    _open_cached,
    open_source,
    select_variables,
    with_indexes,
)

if TYPE_CHECKING:
    from .._store import StoreLike

logger = logging.getLogger(__name__)


#: First retry delay, doubled on every further attempt (with jitter), at most _MAX_BACKOFF_S.
BACKOFF_S: Final = 0.2
_MAX_BACKOFF_S: Final = 30.0


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
    changes: Any = None  # the Icechunk fork this task wrote through (the client merges it)


_slots: dict[int, threading.BoundedSemaphore] = {}
_slots_lock = threading.Lock()


def _slot(n: int) -> threading.BoundedSemaphore:
    """Per-process limit of concurrent tasks (dask workers run several threads)."""
    with _slots_lock:
        sem = _slots.get(n)
        if sem is None:
            sem = _slots[n] = threading.BoundedSemaphore(max(1, n))
        return sem


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
    """The data of the task's region: each source's slice read straight into one buffer per
    variable (by byte range where the source is indexed, through xarray otherwise); for a
    write unit the sources cover only in part, merged into what the store holds there."""
    task = payload.task
    if task.missing or (task.member_dim is None and any(p.src is None for p in task.pieces)):
        return _read_task_xarray(payload)
    return assemble(payload)


def _read_task_xarray(payload: TaskPayload) -> xr.Dataset:
    """The task's source slices loaded through xarray and concatenated along time (or, for
    a write unit the sources cover only in part, laid over what the store holds)."""
    task, time_dim = payload.task, payload.time_dim
    parts = []
    for piece, spec in zip(task.pieces, payload.sources, strict=True):
        ds = _open_cached(payload.run_id, spec)
        names = [n for n in task.variables if n in ds.data_vars]
        ds = select_variables(ds, spec.label, payload.variables, payload.drop_variables)[names]
        ds = expand_member(ds, task.member_dim)
        extra = [c for c in ds.coords if c not in ds.dims and c not in task.variables]
        part = ds.drop_vars(extra).isel(piece_selection(ds, task.region, payload, piece))
        parts.append(_load(part))
    parts = [_without_calendar(with_indexes(p)) for p in parts]
    if task.missing:
        return _merge_stored(payload, parts)
    if len(parts) == 1:
        return parts[0]
    return xr.concat(
        parts, dim=time_dim, data_vars="all", coords="minimal", compat="override", join="exact"
    )


def _without_calendar(ds: xr.Dataset) -> xr.Dataset:
    """``ds`` without the calendar names of its encodings: the client checked them against
    the template (``noleap`` and ``365_day`` alike), whose pinned encoding is what is used."""
    for var in ds.variables.values():
        var.encoding.pop("calendar", None)
    return ds


def _merge_stored(payload: TaskPayload, parts: Sequence[xr.Dataset]) -> xr.Dataset:
    """The task's whole region as the store holds it (fill values where nothing is stored),
    with the sources' slices laid over it: a partial write unit is written whole, and a later
    run with more sources completes it without losing what an earlier one wrote."""
    task, time_dim = payload.task, payload.time_dim
    store = resolve_store(payload.store, storage_options=payload.storage_options)
    archive = xr.open_zarr(store, chunks=None, consolidated=False)
    base: xr.Dataset = archive[list(task.variables)]
    extra = [c for c in base.coords if c not in base.dims and c not in task.variables]
    sel = {d: slice(a, b) for d, (a, b) in task.region.items()}
    base = base.drop_vars(extra).isel(sel).load().drop_encoding()
    t0 = task.region[time_dim][0]
    m0 = task.region[task.member_dim][0] if task.member_dim is not None else 0
    for piece, part in zip(task.pieces, parts, strict=True):
        assert piece.dst is not None
        for name in task.variables:
            if name not in part.variables:
                continue
            var = base.variables[name]
            values = np.array(var.values, copy=True)
            where: list[slice] = []
            for d in var.dims:
                if d == time_dim:
                    where.append(slice(piece.dst[0] - t0, piece.dst[1] - t0))
                elif d == task.member_dim and piece.mdst is not None:
                    where.append(slice(piece.mdst[0] - m0, piece.mdst[1] - m0))
                else:
                    where.append(slice(None))
            values[tuple(where)] = part[name].transpose(*var.dims).values
            var.values = values
    return base


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
    when tried again: store and network hiccups yes, bad data or corrupt files no.

    A :class:`WriteFailedError` is never tried again by the task: the store put it reports
    was already retried, with the same budget, by the write path (attempts counted once)."""
    if isinstance(exc, RegionError | TemplateError | WriteFailedError):
        return False
    for e in _errors_of(exc):
        if isinstance(e, ZarrWriteError):
            continue
        if isinstance(e, ConnectionError | TimeoutError):
            return True
        if (phase == "write" or remote) and is_transient_error(e):
            return True
    return False


_PUT_ATTEMPTS: Final = re.compile(r"failed after (\d+) attempts?\b")


def _attempts(exc: BaseException, task_attempts: int) -> int:
    """How often the failed operation was tried: a store put's own count (the write path
    retried it and says so in its message), else the task's attempts."""
    if isinstance(exc, WriteFailedError):
        found = _PUT_ATTEMPTS.search(str(exc))
        if found:
            return int(found.group(1))
    return task_attempts


def _describe(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    cause = exc.__cause__
    if cause is not None and str(cause) not in text:
        text += f" (caused by {type(cause).__name__}: {cause})"
    return text


_retries_lock = threading.Lock()
_retries_depth = 0
_retries_saved: Any = None


@contextlib.contextmanager
def put_retries(retries: int) -> Iterator[None]:
    """Retry each store put of the write path ``retries`` times (``config["retries"]``) while
    convert tasks run in this process, so that a chunk the store refuses is tried exactly
    ``retries + 1`` times in all. Concurrent tasks (dask worker threads) share one setting:
    the first sets it, the last restores what was there before."""
    global _retries_depth, _retries_saved
    with _retries_lock:
        if _retries_depth == 0:
            _retries_saved = config.get("retries")
            config.set({"retries": int(retries)})
        _retries_depth += 1
    try:
        yield
    finally:
        with _retries_lock:
            _retries_depth -= 1
            if _retries_depth == 0:
                config.set({"retries": _retries_saved})


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
                with put_retries(payload.retries):
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
                    changes=fork_changes(payload.store),
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
                    attempts=_attempts(exc, attempt),
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
