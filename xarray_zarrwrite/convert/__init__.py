"""Converting many sources (files, URLs, datasets) into one Zarr archive, in parallel.

Work is planned by *output chunks*, not by files. The template's time axis is cut into blocks
of whole chunks (the least common multiple of every variable's time chunk); each task owns a
contiguous run of such blocks and reads, from whichever sources overlap them, only the slices it
needs. No two tasks ever touch the same chunk, so sources whose boundaries fall in the middle of
a chunk are safe and every run writes the same bytes.

The pipeline:

1. **Scan** (client threads, or the workers): read each source's metadata, time labels and
   chunk byte ranges (NetCDF4: one h5py open, :mod:`._h5scan`; others: xarray, lazily).
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

import logging
import os
import sys
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

import pandas as pd
import xarray as xr

from .._icechunk import merge_task_changes, task_store, transactional
from .._store import ensure_writable, leaves_no_empty_root, resolve_store
from ..errors import (
    ConvertOptionError,
    DuplicateSourceError,
    SourceError,
    SourceNotFoundError,
    SourceTypeError,
    WriteFailedError,
)
from ._executors import Runner, _make_runner
from ._index_store import attach as attach_index
from ._index_store import load_saved
from ._index_store import save as save_index
from ._layout import apply_preprocess
from ._memory import parse_memory_limit
from ._packing import validate_encoding
from ._partial import PARTIAL_ATTR, write_record
from ._placement import check_calendars
from ._plan import Task, _runs, plan_tasks
from ._prepare import _payload, _plan_run, _prepare_template
from ._report import ConvertReport, SourceOutcome, TaskFailure, WorkerStats, _report
from ._sources import SourceSchema, SourceSpec, _is_url, expand_sources, scan_source
from ._task import run_task

if TYPE_CHECKING:
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


@leaves_no_empty_root(1)
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
        ``xr.Dataset``, or a list of them, in any order. The sources may split the archive
        along time, by variable and by ensemble member (a member dimension, or a scalar
        coordinate made one), in any mix (see :doc:`/convert`, "File layouts"); all share one
        grid, and no two hold the same step (of the same member) of a variable.
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
