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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .._check import existing_chunks
from .._compat import sync
from .._extend import extend as extend_template
from .._icechunk import merge_task_changes, task_store, transactional
from .._open import load_template
from .._store import ensure_writable, resolve_store
from .._template import to_template
from ..errors import (
    ConvertOptionError,
    DuplicateSourceError,
    SourceError,
    SourceNotFoundError,
    SourceTypeError,
    TemplateNotFoundError,
    WriteFailedError,
)
from ._executors import Runner, _make_runner
from ._index_store import attach as attach_index
from ._index_store import load_saved
from ._index_store import save as save_index
from ._layout import (
    apply_preprocess,
    covered_by_variable,
    plan_layout,
    with_layout_variables,
)
from ._memory import _Capacity, fit_slots, parse_memory_limit, task_budget
from ._packing import check_reused_template, plan_new_template, validate_encoding
from ._partial import PARTIAL_ATTR, PartialState, read_record, write_record
from ._placement import Reference, _infer_axis, check_calendars, place_sources
from ._plan import MAX_TASK_BYTES, PEAK_FACTOR, Plan, Task, _runs, plan_tasks
from ._report import ConvertReport, SourceOutcome, TaskFailure, WorkerStats, _report
from ._rerun import check_rerun, warn_partial_last_chunk
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


@transactional("convert")
def convert(
    sources: Any,
    store: StoreLike,
    *,
    time_dim: str = "time",
    global_start: Any = None,
    global_end: Any = None,
    freq: str | pd.DateOffset | None = None,
    chunks: Mapping[str, int | None] | str | None = None,
    shards: Mapping[str, int | None] | str | None = None,
    access_pattern: str = "balanced",
    compression: Any = "default",
    packing: Mapping[str, Any] | None = None,
    encoding: Mapping[str, Mapping[str, Any]] | None = None,
    template_packing: str = "auto",
    variables: Sequence[str] | None = None,
    drop_variables: Sequence[str] | None = None,
    preprocess: Callable[[xr.Dataset], xr.Dataset] | None = None,
    client: Any = None,
    executor: str | None = None,
    max_workers: int | None = None,
    memory_limit: int | str | None = None,
    resume: bool = True,
    extend: bool = False,
    retries: int = 3,
    progress: bool = True,
    summary: bool | None = None,
    engine: str | None = None,
    open_kwargs: Mapping[str, Any] | None = None,
    storage_options: Mapping[str, Any] | None = None,
    source_storage_options: Mapping[str, Any] | None = None,
    zarr_format: int | None = None,
    start_method: str | None = None,
    raise_on_failure: bool = True,
    branch: str | None = None,
    message: str | None = None,
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
        The target: path, fsspec URL or zarr Store; or an Icechunk ``Repository``
        (the whole run is one commit to ``branch``, made only when no task failed) or
        ``Session`` (written to; the caller commits). See :doc:`/icechunk`.
    time_dim
        The dimension the sources are split along.
    global_start, global_end, freq
        Extent and step of the archive's time axis (default: the sources' union, the step
        inferred from their labels). Ignored when an existing template is reused.
    chunks, shards, access_pattern, compression, packing, zarr_format
        The template's layout, as for :func:`~xarray_zarrwrite.to_template` (``packing``
        without a ``valid_range`` reads the first source's data on the client for its range).
    encoding
        ``{variable: {key: value}}`` with xarray semantics: it *replaces* the variable's
        encoding inherited from the first source (``dtype``, ``scale_factor``,
        ``add_offset``, ``_FillValue``, ``missing_value``, ``units``/``calendar`` of times,
        ``compressors``, ``serializer``, ``filters``, and ``chunks``, which must agree with
        ``chunks=`` along each dimension). Checked before anything is read or written.
        An existing template that is reused must already have what it asks for (else
        ``ConvertOptionError``).
    template_packing
        The packing of float variables whose sources are packed (integers with their own
        ``scale_factor``/``add_offset``, as CDS/ERA5 files are), unless ``encoding`` or
        ``packing`` names them. Every source is decoded with its own packing and re-encoded
        into the template's. ``"first"``: the first source's packing; a later source whose
        values do not fit is refused, naming the file and its value range, before anything
        is written. ``"scan"``: scale and offset from a scan of every source's values (in
        parallel; reads the sources once more), in the widest integer dtype of the sources.
        ``"float"``: the decoded floats, unpacked. ``"auto"`` (default): ``"first"`` when all
        sources share one packing (no scan needed), ``"scan"`` when they are packed
        differently (no source is refused and the archive keeps the sources' size),
        ``"float"`` when some are packed and some are floats (no source loses precision).
        See :doc:`/packing`.
    variables, drop_variables
        Data variables to convert (default all), and ones to leave out.
    preprocess
        A function applied to each source, opened lazily as an ``xr.Dataset``, before it is
        placed (rename variables, promote a scalar coordinate, fix attributes); it returns
        the Dataset to convert. It runs on the client as the sources are opened and must be
        picklable for ``executor="processes"`` and dask (a module-level function, not a
        lambda, to be safe). Sources so changed are read through xarray, not by byte range.
    client
        A ``distributed.Client`` or a scheduler address (``"tcp://host:8786"``) to run on.
    executor
        Where tasks run without a client: ``"threads"`` (the default: threads of this
        process; reading and compressing release the GIL, nothing to start, no main guard
        needed), ``"processes"`` (a local pool of worker processes; the script must keep its
        work under ``if __name__ == "__main__":``, else
        :class:`~xarray_zarrwrite.errors.MainGuardError`) or ``"serial"`` (one task after
        another in this thread).
    max_workers
        Threads or processes (default: the CPUs this process may use for threads,
        ``min(2, cpus)`` for processes; ``0`` runs serially). Ignored with a client.
    memory_limit
        Memory per worker (``"4GB"``, bytes): tasks are sized and concurrency capped so that
        estimated peaks stay below it. Default: a dask worker's own limit, or the machine's
        memory divided among the local workers.
    resume
        Reuse an existing template and skip tasks whose chunks all exist (after a crash, only
        what is missing is written). False replaces whatever the store holds.
    extend
        With an existing template (``resume``): grow its time axis first (see
        :func:`~xarray_zarrwrite.extend`) so that sources past its end fit; a write unit
        partial at the old end is completed by merging the stored part with the new.
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
        How the process pool starts workers: ``"forkserver"`` (default where available) or
        ``"spawn"``; never ``"fork"``. Given without ``executor``, it asks for processes.
    raise_on_failure
        Raise :class:`~xarray_zarrwrite.errors.WriteFailedError` (with the report as its
        ``report`` attribute) when a task failed. With False, check ``report.status``.
    branch, message
        With an Icechunk ``Repository``: the branch to commit to (default ``"main"``) and
        the commit message.

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
    user_encoding = validate_encoding(encoding, template_packing)
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
        "shards": shards,
        "access_pattern": access_pattern,
        "compression": compression,
        "packing": packing,
        "encoding": user_encoding,
        "template_packing": template_packing,
        "zarr_format": zarr_format,
    }
    specs, preprocessed = apply_preprocess(specs, preprocess)  # closed at the end
    # local workers start (and warm up on the first source) while the client scans
    try:
        runner = _make_runner(client, max_workers, start_method, specs[0], executor)
    except BaseException:
        for ds in preprocessed:
            ds.close()
        raise
    run_id = uuid.uuid4().hex
    try:
        specs = load_saved(target, specs) if resume else specs  # the index of an earlier run
        schemas = _scan_all(runner, specs, (time_dim, variables, drop_variables, run_id), progress)
        _log_phase("scanned %d source(s)", t_start, len(specs))
        check_calendars(schemas)  # before labels of different calendars are compared
        order = sorted(range(len(specs)), key=lambda i: schemas[i].times.min())
        specs, schemas = [specs[i] for i in order], [schemas[i] for i in order]
        specs = attach_index(specs, schemas)  # tasks read indexed sources by byte range
        info, positions = _prepare_template(
            target,
            specs,
            schemas,
            time_dim,
            variables,
            drop_variables,
            resume,
            template_kw,
            runner,
            grow=extend,
        )
        _log_phase("template ready", t_start)
        save_index(target, specs)  # next to the archive: a resume does not index again
        run = _plan_run(runner, target, info, positions, schemas, time_dim, limit, resume)
        payloads = [
            _payload(
                run_id,
                t,
                specs,
                task_store(target_arg, runner),  # an Icechunk fork for other processes
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
        merge_task_changes(target_arg, outcomes)
        ok = [t for t in run.plan.tasks if (o := outcomes.get(t.index)) is not None and o.ok]
        if run.state.done(ok):
            write_record(target, run.state.record)
        _log_phase("tasks finished", t_start)
    finally:
        runner.close(run_id)
        for ds in preprocessed:
            ds.close()
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
    runner: Any = None,
    grow: bool = False,
) -> tuple[TemplateInfo, list[np.ndarray]]:
    """Validate every source against the existing template (reused with ``resume``) or make
    the template from the earliest source; every check runs before anything is written."""
    info = _existing_template(target) if resume else None
    if info is not None and grow:  # extend=True: the axis first reaches the last source
        last = max(s.times.max() for s in schemas)
        if last > info.indexes[time_dim][-1]:
            extend_template(target, time_dim, until=last, freq=template_kw["freq"], exist_ok=True)
            info = load_template(target)
    if info is not None:
        # options given explicitly must be the archive's (else ArchiveMismatchError)
        check_rerun(
            info,
            time_dim,
            template_kw,
            lambda: _example(specs[0], variables, drop_variables, time_dim, template_kw),
        )
        placed = place_sources(schemas, Reference.from_template(info, time_dim), time_dim)
        check_reused_template(runner, specs, info, template_kw["encoding"])
        return info, placed
    opened = open_source(specs[0])
    try:
        example = with_indexes(select_variables(opened, specs[0].label, variables, drop_variables))
        kw = dict(template_kw)
        kw["zarr_format"] = kw["zarr_format"] or 3
        axis, freq = _infer_axis(
            example, schemas, time_dim, kw.pop("global_start"), kw.pop("global_end"), kw["freq"]
        )
        ref = Reference.from_source(schemas[0], axis, time_dim, schemas[1:])
        place_sources(schemas, ref, time_dim)
        # the template needs the example's metadata and one step of data (read here, on the
        # client); packing without a valid_range takes its range from the whole first source
        if kw["packing"] is None:
            example = example.isel({time_dim: slice(0, 1)})
        # files per variable: the variables the first source lacks, from their first sources
        example = with_layout_variables(
            example, specs, schemas, time_dim, kw["packing"] is None, (variables, drop_variables)
        )
        kw["freq"] = freq
        # the template's packing (template_packing=, encoding=); refuses sources that do not fit
        example = plan_new_template(runner, specs, _load(example), kw, kw["zarr_format"])
        to_template(
            example,
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
    if template_kw["global_end"] is not None:
        warn_partial_last_chunk(info, time_dim, [n for n in info.arrays if n not in info.indexes])
    return info, place_sources(schemas, Reference.from_template(info, time_dim), time_dim)


def _example(
    spec: SourceSpec,
    variables: Sequence[str] | None,
    drop_variables: Sequence[str] | None,
    time_dim: str,
    template_kw: Mapping[str, Any],
) -> xr.Dataset:
    """The data a template is made from (one step, or all of the source with packing)."""
    opened = open_source(spec)
    try:
        example = with_indexes(select_variables(opened, spec.label, variables, drop_variables))
        if template_kw["packing"] is None:
            example = example.isel({time_dim: slice(0, 1)})
        return _load(example)
    finally:
        if spec.dataset is None:
            opened.close()


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
    held = {n for s in schemas for n in s.data_vars}  # a layout may split variables
    write_vars = [
        n
        for n, a in info.arrays.items()
        if n not in info.indexes
        and time_dim in a.dims
        and (n in schemas[0].time_coords if a.is_coord else n in held)
    ]
    static_vars = [
        n for n, a in info.arrays.items() if not a.is_coord and time_dim not in a.dims and n in held
    ]
    # what is missing counts every variable, also those no source of this run holds
    report_vars = [
        *write_vars,
        *(n for n, a in info.arrays.items() if not a.is_coord and time_dim in a.dims),
    ]
    report_vars = list(dict.fromkeys(report_vars))
    plan = plan_layout(
        info,
        schemas,
        positions,
        time_dim=time_dim,
        write_vars=write_vars,
        static_vars=static_vars,
        budget=_task_budget(capacity),
        slots=capacity.workers * capacity.slots,
    )
    slots = fit_slots(capacity, plan.task_estimate)  # warns if one task cannot fit
    covered = covered_by_variable(info, schemas, positions, write_vars, time_dim)
    state = PartialState(
        info,
        time_dim,
        covered,
        read_record(target) if resume else {},
        _stored_chunks(target, info, [*report_vars, *static_vars], tidy=resume),
    )
    done = {t.index for t in plan.tasks if state.is_done(t)} if resume else set()
    return _Run(plan, done, state, replace(capacity, slots=slots), report_vars)


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
    runner: Runner,
    specs: Sequence[SourceSpec],
    args: tuple[Any, ...],
    progress: bool = False,
) -> list[SourceSchema]:
    """Scan every source: Dataset objects here, paths and URLs where the runner runs tasks."""
    paths = [i for i, s in enumerate(specs) if s.dataset is None]
    out: list[SourceSchema | None] = [None] * len(specs)
    scanned = runner.scan([specs[i] for i in paths], args, progress)
    for i, schema in zip(paths, scanned, strict=True):
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


def _task_budget(capacity: _Capacity) -> int:
    return task_budget(capacity, PEAK_FACTOR, MAX_TASK_BYTES)


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
