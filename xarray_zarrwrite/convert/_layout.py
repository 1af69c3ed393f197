"""File layouts: which sources hold which variables.

Sources may split the archive along time (one file per year), by variable (one file per
variable, as ERA5 and CMIP deliver them), along a member dimension (one file per ensemble
member, :mod:`._members`), or any mix of these (one file per variable, member and year).
Variables held by exactly the same sources form a *class*; each class is planned on its own,
from its own sources, so a task only ever reads variables its sources hold. Within a class
every time step (of every member) of every variable comes from exactly one source.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import ConvertOptionError, LayoutError, SourceError
from ._members import expand_example, infer_members
from ._plan import Members, Plan, Task, plan_tasks
from ._sources import SourceSchema, SourceSpec, _load, open_source, select_variables, with_indexes

if TYPE_CHECKING:
    from .._open import TemplateInfo


@dataclass(frozen=True)
class VariableClass:
    """Variables held by the same sources (indices into the sorted sources)."""

    variables: tuple[str, ...]
    sources: tuple[int, ...]


def variable_classes(schemas: Sequence[SourceSchema]) -> list[VariableClass]:
    """Group the data variables by the set of sources that hold them (in first-seen order)."""
    holders: dict[str, list[int]] = {}
    for i, s in enumerate(schemas):
        for name in s.data_vars:
            holders.setdefault(name, []).append(i)
    classes: dict[tuple[int, ...], list[str]] = {}
    for name, where in holders.items():
        classes.setdefault(tuple(where), []).append(name)
    return [VariableClass(tuple(names), where) for where, names in classes.items()]


def check_overlaps(
    schemas: Sequence[SourceSchema],
    positions: Sequence[np.ndarray],
    axis_len: int,
    axis_label: Mapping[int, object] | Sequence[object],
    time_dim: str,
) -> None:
    """Refuse two sources holding the same time step (of the same member) of the same
    variable (names both)."""
    members: Members | None = getattr(positions, "members", None)
    nrow = 1 if members is None else members.size
    for cls in variable_classes(schemas):
        if members is None and not _clash(positions, cls.sources):
            continue  # no step held twice: nothing to name (one sort, not a loop)
        owner = np.full((nrow, axis_len), -1, dtype=np.int32)
        for i in cls.sources:
            pos = np.asarray(positions[i], dtype=np.int64)
            rows = np.zeros(1, np.int64) if members is None else members.positions[i]
            cells = np.ix_(rows, pos)
            clash = owner[cells] >= 0
            if clash.any():
                r, t = (int(x[0]) for x in np.nonzero(clash))
                j = int(owner[rows[r], pos[t]])
                label = axis_label[int(pos[t])]
                shared = ", ".join(repr(v) for v in cls.variables)
                which = "" if members is None else f" of {members.dim} {_member(members, rows[r])}"
                raise LayoutError(
                    f"sources {schemas[j].label!r} and {schemas[i].label!r} both hold "
                    f"{time_dim} {label!r}{which} of {shared} ({int(clash.sum())} shared "
                    "step(s)); every time step of a variable must come from exactly one source"
                )
            owner[cells] = i


def _clash(positions: Sequence[np.ndarray], sources: Sequence[int]) -> bool:
    """Whether two of ``sources`` (or one, twice) hold the same step."""
    held = np.concatenate([np.asarray(positions[i], dtype=np.int64) for i in sources])
    return bool(np.unique(held).size != held.size)


def _member(members: Members, position: int) -> str:
    return repr(members.labels[position]) if members.labels else f"#{position}"


def plan_layout(
    info: TemplateInfo,
    schemas: Sequence[SourceSchema],
    positions: Sequence[np.ndarray],
    *,
    time_dim: str,
    write_vars: Sequence[str],
    static_vars: Sequence[str],
    budget: int,
    slots: int,
) -> Plan:
    """:func:`plan_tasks` per variable class, merged into one plan (tasks renumbered).

    ``write_vars`` may hold time-dependent coordinates besides data variables: they go with
    the first class whose sources all hold them."""
    classes = variable_classes(schemas)
    empty = np.empty(0, dtype=np.int64)
    tasks: list[Task] = []
    gaps: set[tuple[int, int]] = set()
    partial: set[tuple[int, int]] = set()
    split_dim, estimate = None, 0
    coords = {n: _coord_class(n, classes, schemas) for n in write_vars}
    for k, cls in enumerate(classes):
        mine = [n for n in write_vars if n in cls.variables or coords[n] == k]
        statics = [n for n in static_vars if n in cls.variables]
        if not mine and not statics:
            continue
        members = set(cls.sources)
        plan = plan_tasks(
            info,
            [p if i in members else empty for i, p in enumerate(positions)],
            time_dim=time_dim,
            write_vars=mine,
            static_vars=statics,
            budget=budget,
            slots=slots,
            members=getattr(positions, "members", None),
        )
        base = len(tasks)
        tasks.extend(replace(t, index=base + n) for n, t in enumerate(plan.tasks))
        gaps.update(plan.gaps)
        partial.update(plan.partial)
        split_dim = split_dim or plan.split_dim
        estimate = max(estimate, plan.task_estimate)
    return Plan(tuple(tasks), tuple(sorted(gaps)), tuple(sorted(partial)), split_dim, estimate)


def _coord_class(
    name: str, classes: Sequence[VariableClass], schemas: Sequence[SourceSchema]
) -> int:
    """The class that writes the time-dependent coordinate ``name`` (-1: a data variable):
    the first whose sources all hold it, else the first."""
    if any(name in c.variables for c in classes):
        return -1
    for k, cls in enumerate(classes):
        if all(name in schemas[i].time_coords for i in cls.sources):
            return k
    return 0


def covered_by_variable(
    info: TemplateInfo,
    schemas: Sequence[SourceSchema],
    positions: Sequence[np.ndarray],
    names: Sequence[str],
    time_dim: str,
) -> dict[str, np.ndarray]:
    """Per array of ``names``: the template positions along time that a source holding it has
    (time-dependent coordinates: those of every source). With files per member, an array
    along the member dimension gets one row per member (members x time): a chunk is covered
    at a step when every member of that chunk has it (see ``PartialState``)."""
    n = info.sizes[time_dim]
    members: Members | None = getattr(positions, "members", None)
    out: dict[str, np.ndarray] = {}
    for name in names:
        holders = [i for i, s in enumerate(schemas) if name in s.data_vars]
        holders = holders or list(range(len(schemas)))
        per_member = members is not None and members.dim in info.arrays[name].dims
        mask = np.zeros((members.size if members and per_member else 1, n), dtype=bool)
        for i in holders:
            rows = members.positions[i] if members is not None and per_member else [0]
            mask[np.ix_(np.asarray(rows, dtype=np.int64), positions[i])] = True
        out[name] = mask if members is not None and per_member else mask[0]
    return out


def with_layout_variables(
    example: xr.Dataset,
    specs: Sequence[SourceSpec],
    schemas: Sequence[SourceSchema],
    time_dim: str,
    one_step: bool,
    selection: tuple[Sequence[str] | None, Sequence[str] | None],
) -> xr.Dataset:
    """``example`` (of the first source) with the data variables it lacks, each taken from
    the first source that holds it: their first step, on the example's first label (or, with
    ``one_step`` False, for packing ranges, their whole first source, loaded)."""
    members = infer_members(schemas, time_dim)
    merged = _with_variables(example, specs, schemas, time_dim, one_step, selection)
    return merged if members is None else expand_example(merged, members)


def with_members(
    example: xr.Dataset,
    schemas: Sequence[SourceSchema],
    time_dim: str,
    template: Mapping[str, pd.Index] | None = None,
) -> xr.Dataset:
    """``example`` along the whole member axis when the sources are files per member (that
    of the existing archive whose ``template`` indexes are given); else ``example`` itself."""
    members = infer_members(schemas, time_dim, template)
    return example if members is None else expand_example(example, members)


def _with_variables(
    example: xr.Dataset,
    specs: Sequence[SourceSpec],
    schemas: Sequence[SourceSchema],
    time_dim: str,
    one_step: bool,
    selection: tuple[Sequence[str] | None, Sequence[str] | None],
) -> xr.Dataset:
    wanted: dict[str, int] = {}
    for i, s in enumerate(schemas):
        for name in s.data_vars:
            if name not in example.data_vars:
                wanted.setdefault(name, i)
    if not wanted:
        return example
    parts = [_load(example)]
    for i in sorted(set(wanted.values())):
        names = [n for n, k in wanted.items() if k == i]
        opened = open_source(specs[i])
        try:
            ds = with_indexes(select_variables(opened, specs[i].label, *selection))[names]
            if one_step:
                ds = ds.isel({time_dim: slice(0, 1)}).assign_coords(
                    {time_dim: example[time_dim].values}
                )
            parts.append(_load(ds))
        finally:
            if specs[i].dataset is None:
                opened.close()
    if one_step:
        return xr.merge(parts, join="override", compat="override", combine_attrs="override")
    return xr.merge(parts, join="outer", compat="override", combine_attrs="override")


def apply_preprocess(
    specs: Sequence[SourceSpec], preprocess: Callable[[xr.Dataset], xr.Dataset] | None
) -> tuple[list[SourceSpec], list[xr.Dataset]]:
    """Each source opened (lazily) and passed through ``preprocess``, as a Dataset source.

    Returns the new specs and the Datasets this opened (the caller closes them).

    Raises
    ------
    ConvertOptionError
        ``preprocess`` is not callable.
    SourceError
        ``preprocess`` failed on a source or returned something else than a Dataset (names
        the source)."""
    if preprocess is None:
        return list(specs), []
    if not callable(preprocess):
        raise ConvertOptionError(
            f"preprocess must be a callable taking and returning an xarray Dataset, got "
            f"{type(preprocess).__name__}"
        )
    out: list[SourceSpec] = []
    opened: list[xr.Dataset] = []
    try:
        for spec in specs:
            ds = open_source(spec)
            if spec.dataset is None:
                opened.append(ds)
            try:
                done = preprocess(ds)
            except Exception as exc:
                raise SourceError(
                    f"preprocess failed on source {spec.label!r}: {type(exc).__name__}: {exc}"
                ) from exc
            if not isinstance(done, xr.Dataset):
                raise SourceError(
                    f"preprocess returned a {type(done).__name__} for source {spec.label!r}; "
                    "it must return an xarray Dataset"
                )
            if done.encoding.get("source") is None and spec.path is not None:
                done.encoding["source"] = spec.path
            out.append(SourceSpec(label=spec.label, dataset=done))
    except BaseException:
        for ds in opened:
            ds.close()
        raise
    return out, opened
