"""Where each source lands on the template's time axis: validation against the reference, axis inference."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr

from .._template import _time_axis
from .._validate import (
    check_attrs,
    check_dims,
    check_dtype,
    label_positions,
    same_calendar,
)
from ..errors import (
    DimensionMismatchError,
    RegionLabelError,
    TemplateError,
    TimeEncodingError,
    VariableNotInTemplateError,
)
from ._layout import check_overlaps
from ._members import MemberAxis, expand_schema, infer_members, member_positions
from ._plan import Members
from ._sources import SourceSchema, VariableSchema

if TYPE_CHECKING:
    from .._open import TemplateInfo

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Reference:
    """What every source must agree with: the template's, or the first source's, schema."""

    what: str
    axis: pd.Index
    data_vars: Mapping[str, VariableSchema]
    indexes: Mapping[str, pd.Index]
    sizes: Mapping[str, int]  # dimensions other than time
    calendar: str | None = None  # of the time axis (None: not said)
    members: MemberAxis | None = None  # files per member: the member dimension

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
            calendar=_template_calendar(info, time_dim),
        )

    @classmethod
    def from_source(
        cls,
        first: SourceSchema,
        axis: pd.Index,
        time_dim: str,
        others: Sequence[SourceSchema] = (),
    ) -> Reference:
        """The reference of a template about to be made from ``first`` (and, for variables
        ``first`` does not hold, the first of ``others`` that does)."""
        members = infer_members([first, *others], time_dim)
        if members is not None:
            first, others = (
                expand_schema(first, members),
                [expand_schema(s, members) for s in others],
            )
        data_vars = dict(first.data_vars)
        for s in others:
            for name, var in s.data_vars.items():
                data_vars.setdefault(name, var)
        indexes = dict(first.indexes)
        sizes = {d: n for d, n in first.sizes.items() if d != time_dim}
        if members is not None:  # the union of the sources' members
            indexes[members.dim] = members.labels
            sizes[members.dim] = len(members.labels)
        return cls(
            what=f"the first source {first.label!r}",
            axis=axis,
            data_vars=data_vars,
            indexes=indexes,
            sizes=sizes,
            calendar=first.calendar,
            members=members,
        )


def _template_calendar(info: TemplateInfo, time_dim: str) -> str | None:
    a = info.arrays[time_dim]
    found = a.encoding.get("calendar") or a.attrs.get("calendar")
    if found is None:
        found = getattr(info.indexes[time_dim], "calendar", None)
    return None if found is None else str(found)


def check_calendars(schemas: Sequence[SourceSchema]) -> None:
    """Every source's time labels are in one calendar (synonyms such as ``noleap`` and
    ``365_day`` agree); raises :class:`TimeEncodingError` naming the first that is not."""
    named = [s for s in schemas if s.calendar is not None]
    for s in named[1:]:
        first = named[0]
        numpy_dates = s.times.dtype.kind == "M" and first.times.dtype.kind == "M"
        if not same_calendar(s.calendar, first.calendar, numpy_dates):
            raise TimeEncodingError(
                f"source {s.label!r} uses calendar {s.calendar!r} but source {first.label!r} "
                f"uses {first.calendar!r}; all sources must share one calendar (convert with "
                "ds.convert_calendar first)"
            )


def _check_calendar(schema: SourceSchema, ref: Reference) -> None:
    numpy_dates = schema.times.dtype.kind == "M" and ref.axis.dtype.kind == "M"
    if not same_calendar(schema.calendar, ref.calendar, numpy_dates):
        raise TimeEncodingError(
            f"source {schema.label!r} uses calendar {schema.calendar!r} but {ref.what} uses "
            f"{ref.calendar!r}; convert the source (ds.convert_calendar) first"
        )


def validate_source(
    schema: SourceSchema,
    ref: Reference,
    time_dim: str,
    *,
    checked: set[tuple[int, ...]] | None = None,
    where: str | None = None,
    known: np.ndarray | None = None,
) -> np.ndarray:
    """Check ``schema`` against ``ref``; return the positions of its time labels on the axis.

    ``checked`` (kept by the caller across sources) skips the checks of the variables, sizes
    and grid of a source whose metadata objects are those of a source checked before (the
    fast scan gives look-alike files the same objects); ``where`` describes the axis;
    ``known``: the positions, found already.

    Raises
    ------
    RegionError
        Or a subclass, naming the source: variables that differ
        (:class:`VariableNotInTemplateError`), dimensions or sizes
        (:class:`DimensionMismatchError`), dtypes (:class:`DtypeCastError`), coordinate labels
        (:class:`RegionLabelError`), or attributes (:class:`RegionError`).
    """
    key = (id(schema.data_vars), id(schema.sizes), id(schema.indexes), id(schema.scalars))
    if ref.members is not None:
        schema = expand_schema(schema, ref.members)
    _check_calendar(schema, ref)
    if checked is None or key not in checked:
        _check_metadata(schema, ref, time_dim)
        if checked is not None:
            checked.add(key)
    if known is not None:
        return known
    if where is None:
        where = describe_axis(ref)
    return label_positions(
        ref.axis, schema.times, time_dim, prefix=f"source {schema.label!r}: ", where=where
    )


def _positions_at_once(schemas: Sequence[SourceSchema], axis: pd.Index) -> list[np.ndarray] | None:
    """Every source's label positions from one lookup of all labels (per-source lookups
    cost 0.3 ms each in pandas); None when any label is missing, repeated within its source,
    or off the axis: :func:`label_positions` then finds and names it."""
    if not schemas or any(s.times.dtype != axis.dtype for s in schemas):
        return None
    try:
        labels = schemas[0].times.append([s.times for s in schemas[1:]])
        if labels.hasnans:
            return None
        found = np.asarray(axis.get_indexer(labels))
    except (TypeError, ValueError):
        return None
    if (found < 0).any():
        return None
    out = np.split(found, np.cumsum([len(s.times) for s in schemas])[:-1])
    if any(len(p) > 1 and np.unique(p).size != len(p) for p in out):
        return None
    return out


def describe_axis(ref: Reference) -> str:
    """The time axis of ``ref``, for messages."""
    return (
        f"the time axis of {ref.what} ({ref.axis[0]!r} .. {ref.axis[-1]!r}, "
        f"{len(ref.axis)} steps{_freq_note(ref.axis)})"
    )


def _check_metadata(schema: SourceSchema, ref: Reference, time_dim: str) -> None:
    """The variables, dimension sizes and grid of a source against ``ref``."""
    member = None if ref.members is None else ref.members.dim
    src = schema.label
    # a source may hold some of the variables (files per variable); never others
    extra = sorted(set(schema.data_vars) - set(ref.data_vars))
    if extra:
        raise VariableNotInTemplateError(
            f"source {src!r} has the data variable(s) {extra}, which {ref.what} does not "
            f"have (it has {sorted(ref.data_vars)}); leave them out with drop_variables=, "
            "or convert into a new archive (resume=False) to add them"
        )
    prefix = f"source {src!r}: "
    for name, var in schema.data_vars.items():
        target = ref.data_vars[name]
        check_dims(name, var.dims, target.dims, prefix=prefix, what=ref.what)
        check_dtype(name, var.dtype, target.dtype, prefix=prefix, what=ref.what)
        check_attrs(name, var.attrs, target.attrs, prefix=prefix, what=ref.what)
    for dim, n in schema.sizes.items():
        if dim in (time_dim, member):
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
        if theirs is None or dim == member:
            continue
        if not index.equals(theirs):
            diff = np.flatnonzero(np.asarray(index) != np.asarray(theirs))
            at = int(diff[0]) if diff.size else 0
            raise RegionLabelError(
                f"source {src!r}: coordinate {dim!r} differs from {ref.what}'s (position {at}: "
                f"{index[at]!r} vs {theirs[at]!r}); all sources must share the same grid"
            )


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


class Placement(list[np.ndarray]):
    """Per source, the template positions of its time labels; with files per member,
    :attr:`members` says where each source lies along the member dimension too."""

    members: Members | None = None


def place_sources(schemas: Sequence[SourceSchema], ref: Reference, time_dim: str) -> Placement:
    """Validate every source and return its label positions; refuses two sources holding
    the same time step of the same variable (and member) (:class:`LayoutError`, a
    RegionLabelError too)."""
    if ref.members is None and ref.what == "the template":
        found = infer_members(schemas, time_dim, {**ref.indexes})
        if found is not None:
            ref = replace(ref, members=found)
    checked: set[tuple[int, ...]] = set()
    where = describe_axis(ref)
    at_once = _positions_at_once(schemas, ref.axis)
    known: list[np.ndarray | None] = [*at_once] if at_once else [None] * len(schemas)
    positions = Placement(
        validate_source(s, ref, time_dim, checked=checked, where=where, known=k)
        for s, k in zip(schemas, known, strict=True)
    )
    if ref.members is not None:
        axis = ref.members
        positions.members = Members(
            axis.dim,
            len(axis.labels),
            tuple(member_positions(expand_schema(s, axis), axis, ref.what) for s in schemas),
            tuple(axis.scalar and axis.dim not in s.sizes for s in schemas),
            tuple(axis.labels.tolist()),
        )
    check_overlaps(schemas, positions, len(ref.axis), ref.axis, time_dim)
    return positions
