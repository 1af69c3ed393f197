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
import logging
import os
import sys
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from .._check import existing_chunks
from .._compat import sync
from .._open import load_template
from .._store import ensure_writable, resolve_store
from .._template import to_template
from ..errors import (
    ConvertOptionError,
    DuplicateSourceError,
    SourceError,
    SourceNotFoundError,
    SourceTypeError,
    TemplateError,
    TemplateNotFoundError,
    WriteFailedError,
)
from ._executors import (
    WORKER_BASELINE,
    _Capacity,
    _DaskRunner,
    _make_runner,
    _ProcessRunner,
    _SerialRunner,
    parse_memory_limit,
)
from ._partial import PARTIAL_ATTR, PartialState, read_record, write_record
from ._placement import Reference, _infer_axis, check_calendars, place_sources
from ._plan import MAX_TASK_BYTES, PEAK_FACTOR, Plan, Task, _runs, plan_tasks
from ._report import ConvertReport, SourceOutcome, TaskFailure, WorkerStats, _report
from ._sources import (
    SourceSchema,
    SourceSpec,
    _is_url,
    _load,
    expand_sources,
    open_source,
    scan_source,
    select_variables,
    with_indexes,
)
from ._task import TaskPayload, run_task

if TYPE_CHECKING:
    from .._open import TemplateInfo
    from .._store import StoreLike

__all__ = [
    "PARTIAL_ATTR",
    "ConvertOptionError",
    "ConvertReport",
    "DuplicateSourceError",
    "SourceError",
    "SourceNotFoundError",
    "SourceTypeError",
    "SourceOutcome",
    "Task",
    "TaskFailure",
    "WorkerStats",
    "convert",
    "plan_tasks",
    "run_task",
]

logger = logging.getLogger(__name__)


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
        Extra attempts after a transient error, counted once: a store put that keeps failing
        transiently is tried ``retries + 1`` times in all (by the write path, with exponential
        backoff; the task does not try it again), as are a task's source reads and a task
        whose worker process died. Permanent errors are not retried.
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
        ``report`` attribute) when a task failed. With False, check ``report.status``.

    Returns
    -------
    ConvertReport
        ``report.status`` is ``"complete"`` (``report.ok``), ``"incomplete"`` (nothing failed,
        but time steps of the archive have no source: ``report.missing``) or ``"failed"``.
        A write unit the sources cover only in part is written whole, with the template's fill
        value where no source has data, and listed (variable -> chunk key -> missing labels)
        in the archive's root attribute ``"xarray_zarrwrite:partial"``
        (:data:`PARTIAL_ATTR`); a later convert with more sources merges the stored chunk with
        the new data and drops it from the record.

    Raises
    ------
    InputError
        Raised before anything is written, after every source has been checked; the store
        is left as it was. Subclasses: :class:`SourceNotFoundError` (also a
        ``FileNotFoundError``: a path or pattern matches nothing), :class:`DuplicateSourceError`,
        :class:`ConvertOptionError` (``memory_limit``, ``retries``, ``max_workers``,
        ``start_method``), :class:`~xarray_zarrwrite.errors.TimeEncodingError` (sources in
        different calendars; CF synonyms such as ``noleap``/``365_day`` agree),
        :class:`~xarray_zarrwrite.errors.RegionError` and its subclasses (a source does not
        match the template or the other sources, or two sources overlap; names the file),
        :class:`~xarray_zarrwrite.errors.TemplateError` (the template cannot be made, e.g.
        the time step cannot be inferred: pass ``freq``).
    WriteFailedError
        Some tasks failed (``raise_on_failure``): the message names their sources and
        regions; ``err.report`` is the :class:`ConvertReport`; :func:`check` lists what is
        missing.
    """
    t_start = time.perf_counter()
    if isinstance(retries, bool) or not isinstance(retries, int) or retries < 0:
        raise ConvertOptionError(
            f"retries must be a non-negative integer (extra attempts), got {retries!r}"
        )
    limit = parse_memory_limit(memory_limit)
    specs = _expand(sources, engine, open_kwargs, source_storage_options, drop_variables)
    target_arg = _normalize_store(store)
    target = resolve_store(target_arg, storage_options=storage_options)
    ensure_writable(target)
    template_kw = {
        "global_start": global_start,
        "global_end": global_end,
        "freq": freq,
        "chunks": chunks,
        "access_pattern": access_pattern,
        "compression": compression,
        "packing": packing,
        "zarr_format": zarr_format,
    }
    # local workers start (and warm up on the first source) while the client scans
    runner = _make_runner(client, max_workers, start_method, specs[0])
    run_id = uuid.uuid4().hex
    try:
        schemas = _scan_all(runner, specs, (time_dim, variables, drop_variables, run_id))
        _log_phase("scanned %d source(s)", t_start, len(specs))
        check_calendars(schemas)  # before labels of different calendars are compared
        order = sorted(range(len(specs)), key=lambda i: schemas[i].times.min())
        specs, schemas = [specs[i] for i in order], [schemas[i] for i in order]
        info, positions = _prepare_template(
            target, specs, schemas, time_dim, variables, drop_variables, resume, template_kw
        )
        _log_phase("template ready", t_start)
        run = _plan_run(runner, target, info, positions, schemas, time_dim, limit, resume)
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
                run.capacity.slots,
            )
            for t in run.plan.tasks
            if t.index not in run.done
        ]
        _log_phase("planned %d task(s), %d to run", t_start, len(run.plan.tasks), len(payloads))
        if run.state.claim([p.task for p in payloads]):
            write_record(target, run.state.record)
        outcomes = runner.run(payloads, retries, progress)
        ok = [t for t in run.plan.tasks if (o := outcomes.get(t.index)) is not None and o.ok]
        if run.state.done(ok):
            write_record(target, run.state.record)
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
        plan=run.plan,
        done=run.done,
        outcomes=outcomes,
        capacity=run.capacity,
        missing=_runs(run.state.missing_positions(run.write_vars)),
        seconds=time.perf_counter() - t_start,
    )
    if progress if summary is None else summary:
        print(report.summary(), file=sys.stderr)
    if raise_on_failure and report.status == "failed":
        raise _failed(report)
    return report


def _failed(report: ConvertReport) -> WriteFailedError:
    err = WriteFailedError(
        f"convert failed: {len(report.failures)} failure(s); run check() to see what is "
        "missing and convert again (resume=True) to write only that\n"
        + "\n".join(f"  {f}" for f in report.failures[:20])
    )
    err.report = report  # type: ignore[attr-defined]
    return err


def _expand(
    sources: Any,
    engine: str | None,
    open_kwargs: Mapping[str, Any] | None,
    storage_options: Mapping[str, Any] | None,
    drop_variables: Sequence[str] | None,
) -> list[SourceSpec]:
    specs = expand_sources(
        sources, engine=engine, open_kwargs=open_kwargs, storage_options=storage_options
    )
    if drop_variables:
        drop = {"drop_variables": list(drop_variables)}
        specs = [
            replace(s, open_kwargs={**drop, **s.open_kwargs}) if s.path is not None else s
            for s in specs
        ]
    return specs


def _prepare_template(
    target: Any,
    specs: Sequence[SourceSpec],
    schemas: Sequence[SourceSchema],
    time_dim: str,
    variables: Sequence[str] | None,
    drop_variables: Sequence[str] | None,
    resume: bool,
    template_kw: dict[str, Any],
) -> tuple[TemplateInfo, list[np.ndarray]]:
    """Validate every source against the existing template (reused with ``resume``) or make
    the template from the earliest source; every check runs before anything is written."""
    info = _existing_template(target) if resume else None
    if info is not None:
        _check_reuse(info, template_kw["chunks"])
        return info, place_sources(schemas, Reference.from_template(info, time_dim), time_dim)
    opened = open_source(specs[0])
    try:
        example = with_indexes(select_variables(opened, specs[0].label, variables, drop_variables))
        kw = dict(template_kw)
        axis, freq = _infer_axis(
            example, schemas, time_dim, kw.pop("global_start"), kw.pop("global_end"), kw["freq"]
        )
        place_sources(schemas, Reference.from_source(schemas[0], axis, time_dim), time_dim)
        # the template needs the example's metadata and one step of data (read here, on the
        # client); packing without a valid_range takes its range from the whole first source
        if kw["packing"] is None:
            example = example.isel({time_dim: slice(0, 1)})
        kw["freq"] = freq
        to_template(
            _load(example),
            target,
            time_dim=time_dim,
            global_start=axis[0],
            global_end=axis[-1],
            mode="w-" if resume else "w",
            **kw,
        )
    finally:
        if specs[0].dataset is None:
            opened.close()
    info = load_template(target)
    return info, place_sources(schemas, Reference.from_template(info, time_dim), time_dim)


@dataclass(frozen=True)
class _Run:
    """The planned run: tasks, which are done already, the store's state, the capacity."""

    plan: Plan
    done: set[int]
    state: PartialState
    capacity: _Capacity
    write_vars: list[str]


def _plan_run(
    runner: Any,
    target: Any,
    info: TemplateInfo,
    positions: Sequence[np.ndarray],
    schemas: Sequence[SourceSchema],
    time_dim: str,
    limit: int | None,
    resume: bool,
) -> _Run:
    capacity = runner.capacity(limit)
    write_vars = [
        n
        for n, a in info.arrays.items()
        if n not in info.indexes
        and time_dim in a.dims
        and (not a.is_coord or n in schemas[0].time_coords)
    ]
    static_vars = [n for n, a in info.arrays.items() if not a.is_coord and time_dim not in a.dims]
    plan = plan_tasks(
        info,
        positions,
        time_dim=time_dim,
        write_vars=write_vars,
        static_vars=static_vars,
        budget=_task_budget(capacity),
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
    covered = np.zeros(info.sizes[time_dim], dtype=bool)
    for pos in positions:
        covered[pos] = True
    state = PartialState(
        info,
        time_dim,
        covered,
        read_record(target) if resume else {},
        _stored_chunks(target, info, [*write_vars, *static_vars], tidy=resume),
    )
    done = {t.index for t in plan.tasks if state.is_done(t)} if resume else set()
    return _Run(plan, done, state, replace(capacity, slots=slots), write_vars)


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


def _stored_chunks(
    target: Any, info: TemplateInfo, names: Sequence[str], *, tidy: bool
) -> dict[str, set[tuple[int, ...]]]:
    """The chunks the store holds, per array; with ``tidy``, deletes the temporary files of
    writes a crash interrupted (never data)."""
    found, stray = existing_chunks(target, info, sorted(set(names)))
    if stray and tidy:

        async def _delete() -> None:
            await asyncio.gather(*(target.delete(k) for k in stray))

        try:
            sync(_delete())
        except Exception as exc:  # noqa: BLE001  (tidying up is optional)
            logger.warning("could not delete %d leftover temporary file(s): %s", len(stray), exc)
    return found


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
