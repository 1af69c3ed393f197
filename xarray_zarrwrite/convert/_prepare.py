"""Template preparation and run planning of :func:`~xarray_zarrwrite.convert.convert`.

After the scan: validate every source against an existing template (or make the template from
the earliest source), plan the tasks against the store's state (resume) and build the payload
each worker receives.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from .._check import existing_chunks
from .._compat import sync
from .._extend import extend as extend_template
from .._open import load_template
from .._template import to_template
from ..errors import RegionLabelError, TemplateNotFoundError
from ._layout import covered_by_variable, plan_layout, with_layout_variables, with_members
from ._memory import _Capacity, fit_slots, task_budget
from ._packing import check_reused_template, plan_new_template
from ._partial import PartialState, read_record
from ._placement import Reference, _infer_axis, place_sources
from ._plan import MAX_TASK_BYTES, PEAK_FACTOR, Plan, Task
from ._rerun import check_rerun, warn_partial_last_chunk
from ._sources import SourceSchema, SourceSpec, _load, open_source, select_variables, with_indexes
from ._task import TaskPayload

if TYPE_CHECKING:
    from .._open import TemplateInfo
    from .._store import StoreLike

logger = logging.getLogger("xarray_zarrwrite.convert")


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
        indexes = info.indexes
        # options given explicitly must be the archive's (else ArchiveMismatchError)
        check_rerun(
            info,
            time_dim,
            template_kw,
            lambda: with_members(  # files per member: along the archive's whole member axis
                _example(specs[0], variables, drop_variables, time_dim, template_kw),
                schemas,
                time_dim,
                indexes,
            ),
        )
        try:
            placed = place_sources(schemas, Reference.from_template(info, time_dim), time_dim)
        except RegionLabelError as e:
            end = info.indexes[time_dim][-1]
            if grow or not any(s.times.max() > end for s in schemas):
                raise
            late = [s for s in schemas if s.times.max() > end]
            raise RegionLabelError(
                f"{len(late)} source(s) hold {time_dim!r} labels past the archive's last one "
                f"({end}), e.g. {late[0].label!r} up to {late[0].times.max()}: pass "
                "extend=True to grow the archive to them first, or convert into a new archive"
            ) from e
        check_reused_template(runner, specs, info, template_kw["encoding"], schemas)
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
        example = plan_new_template(runner, specs, _load(example), kw, kw["zarr_format"], schemas)
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
        member_dim=getattr(getattr(positions, "members", None), "dim", None),
    )
    done = {t.index for t in plan.tasks if state.is_done(t)} if resume else set()
    return _Run(plan, done, state, replace(capacity, slots=slots), report_vars)


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
