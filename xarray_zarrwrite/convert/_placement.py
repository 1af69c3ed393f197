"""Where each source lands on the template's time axis: validation against the reference, axis inference."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
import pandas as pd
import xarray as xr

from .._region import label_positions
from .._template import _time_axis
from ..errors import (
    DimensionMismatchError,
    DtypeCastError,
    RegionError,
    RegionLabelError,
    TemplateError,
    TimeEncodingError,
    VariableNotInTemplateError,
)
from ._sources import SourceSchema, VariableSchema

if TYPE_CHECKING:
    from .._open import TemplateInfo

logger = logging.getLogger(__name__)


#: Attributes that must agree between a source and the template (when either has them).
COMPARED_ATTRS: Final = ("units", "standard_name", "long_name", "calendar", "cell_methods")


@dataclass(frozen=True)
class Reference:
    """What every source must agree with: the template's, or the first source's, schema."""

    what: str
    axis: pd.Index
    data_vars: Mapping[str, VariableSchema]
    indexes: Mapping[str, pd.Index]
    sizes: Mapping[str, int]  # dimensions other than time
    calendar: str | None = None  # of the time axis (None: not said)

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
    def from_source(cls, first: SourceSchema, axis: pd.Index, time_dim: str) -> Reference:
        """The reference of a template about to be made from ``first``."""
        return cls(
            what=f"the first source {first.label!r}",
            axis=axis,
            data_vars=first.data_vars,
            indexes=first.indexes,
            sizes={d: n for d, n in first.sizes.items() if d != time_dim},
            calendar=first.calendar,
        )


def _template_calendar(info: TemplateInfo, time_dim: str) -> str | None:
    a = info.arrays[time_dim]
    found = a.encoding.get("calendar") or a.attrs.get("calendar")
    if found is None:
        found = getattr(info.indexes[time_dim], "calendar", None)
    return None if found is None else str(found)


#: CF calendar names that mean the same calendar.
_CALENDAR_SYNONYMS: Final = {"gregorian": "standard", "noleap": "365_day", "all_leap": "366_day"}


def normalize_calendar(name: Any, numpy_dates: bool = False) -> str:
    """A CF calendar name in one spelling per calendar (``noleap`` -> ``365_day``, ...).

    With ``numpy_dates`` (labels held as numpy datetimes, which xarray only decodes for dates
    where they agree) ``standard`` and ``proleptic_gregorian`` are the same calendar."""
    text = str(name).strip().lower()
    text = _CALENDAR_SYNONYMS.get(text, text)
    if numpy_dates and text == "proleptic_gregorian":
        return "standard"
    return text


def check_calendars(schemas: Sequence[SourceSchema]) -> None:
    """Every source's time labels are in one calendar (synonyms such as ``noleap`` and
    ``365_day`` agree); raises :class:`TimeEncodingError` naming the first that is not."""
    named = [s for s in schemas if s.calendar is not None]
    for s in named[1:]:
        first = named[0]
        numpy_dates = s.times.dtype.kind == "M" and first.times.dtype.kind == "M"
        if normalize_calendar(s.calendar, numpy_dates) != normalize_calendar(
            first.calendar, numpy_dates
        ):
            raise TimeEncodingError(
                f"source {s.label!r} uses calendar {s.calendar!r} but source {first.label!r} "
                f"uses {first.calendar!r}; all sources must share one calendar (convert with "
                "ds.convert_calendar first)"
            )


def _check_calendar(schema: SourceSchema, ref: Reference) -> None:
    if schema.calendar is None or ref.calendar is None:
        return
    numpy_dates = schema.times.dtype.kind == "M" and ref.axis.dtype.kind == "M"
    if normalize_calendar(schema.calendar, numpy_dates) != normalize_calendar(
        ref.calendar, numpy_dates
    ):
        raise TimeEncodingError(
            f"source {schema.label!r} uses calendar {schema.calendar!r} but {ref.what} uses "
            f"{ref.calendar!r}; convert the source (ds.convert_calendar) first"
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
    _check_calendar(schema, ref)
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
            if key == "calendar" and a is not None and b is not None:
                a, b = normalize_calendar(a), normalize_calendar(b)
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
