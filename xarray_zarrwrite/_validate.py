"""The rules a piece of data must meet to go into an archive, shared by region writes
(:mod:`._region`) and convert (:mod:`.convert._placement`): dtypes, dimensions, coordinate
labels, calendars and the attributes that say what a variable is.

Each rule is a predicate or a check raising the typed :class:`~.errors.RegionError` subclass,
with a ``prefix`` (e.g. ``"source 'a.nc': "``) and the name of what is compared against
(``"the template"``, ``"the first source 'b.nc'"``) for the message. Pure: no store, no I/O.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import numpy as np
import pandas as pd
import xarray as xr

from .errors import DimensionMismatchError, DtypeCastError, RegionError, RegionLabelError

__all__ = [
    "COMPARED_ATTRS",
    "attr_equal",
    "check_attrs",
    "check_dims",
    "check_dtype",
    "contiguous_run",
    "dtype_castable",
    "is_cftime",
    "label_positions",
    "normalize_calendar",
    "same_calendar",
]

# -- dtypes ----------------------------------------------------------------------------------


def dtype_castable(have: np.dtype[Any], want: np.dtype[Any]) -> bool:
    """Whether data of dtype ``have`` may be written into an array of dtype ``want``: a safe
    cast, float to float (narrowing floats is a documented choice), datetimes to datetimes,
    timedeltas to timedeltas; strings and objects only into the same dtype."""
    if have == want:
        return True
    if have.kind in "OSUTV" or want.kind in "OSUTV":
        return False
    return bool(
        np.can_cast(have, want, casting="safe")
        or (have.kind == "f" and want.kind == "f")
        or (have.kind == want.kind and have.kind in "mM")
    )


def check_dtype(
    name: str,
    have: np.dtype[Any],
    want: np.dtype[Any],
    *,
    prefix: str = "",
    what: str = "the template",
) -> None:
    """Raise :class:`DtypeCastError` unless :func:`dtype_castable`."""
    if not dtype_castable(have, want):
        raise DtypeCastError(
            f"{prefix}variable {name!r} has dtype {have} which cannot be cast safely to the "
            f"{want} of {what}; convert it first (e.g. ds[{name!r}].astype({str(want)!r})) if "
            "that is intended"
        )


# -- dimensions ------------------------------------------------------------------------------


def check_dims(
    name: str,
    have: Sequence[str],
    want: Sequence[str],
    *,
    prefix: str = "",
    what: str = "the template",
) -> None:
    """Raise :class:`DimensionMismatchError` unless ``have`` holds the dims of ``want`` (in
    any order)."""
    have, want = tuple(have), tuple(want)
    if set(have) == set(want) and len(have) == len(want):
        return
    missing, extra = sorted(set(want) - set(have)), sorted(set(have) - set(want))
    raise DimensionMismatchError(
        f"{prefix}variable {name!r} has dimensions {have} but {what} has {want}"
        + (f"; missing {missing}" if missing else "")
        + (f"; extra {extra}" if extra else "")
    )


# -- calendars -------------------------------------------------------------------------------

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


def same_calendar(a: Any, b: Any, numpy_dates: bool = False) -> bool:
    """Whether two CF calendar names mean the same calendar (see :func:`normalize_calendar`);
    a calendar not given (None) agrees with any."""
    if a is None or b is None:
        return True
    return normalize_calendar(a, numpy_dates) == normalize_calendar(b, numpy_dates)


def is_cftime(var: xr.Variable) -> bool:
    """Whether ``var`` holds cftime dates (an object array of cftime.datetime)."""
    if var.dtype != object or not var.size:
        return False
    sample = var.values.flat[0]
    return type(sample).__module__.startswith("cftime")


# -- attributes ------------------------------------------------------------------------------

#: Attributes that must agree between two pieces of the same variable (when either has them).
COMPARED_ATTRS: Final = ("units", "standard_name", "long_name", "calendar", "cell_methods")


def attr_equal(a: Any, b: Any) -> bool:
    """Attribute values equal (arrays element-wise)."""
    try:
        return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    except (TypeError, ValueError):
        return bool(a == b)


def check_attrs(
    name: str,
    have: Any,
    want: Any,
    *,
    prefix: str = "",
    what: str = "the template",
) -> None:
    """Raise :class:`RegionError` when an attribute of :data:`COMPARED_ATTRS` differs (or is
    given on one side only): the two would not describe the same quantity."""
    for key in COMPARED_ATTRS:
        a, b = have.get(key), want.get(key)
        if key == "calendar" and same_calendar(a, b) and a is not None and b is not None:
            continue
        if (a is None) != (b is None) or (a is not None and not attr_equal(a, b)):
            raise RegionError(
                f"{prefix}attribute {key!r} of variable {name!r} is {a!r} but {what} has "
                f"{b!r}; they must describe the same quantity"
            )


# -- coordinate labels -----------------------------------------------------------------------


def label_positions(
    axis: pd.Index,
    labels: pd.Index,
    dim: str,
    *,
    prefix: str = "",
    where: str = "the template's axis",
) -> np.ndarray:
    """Positions of ``labels`` on ``axis``; every label must be valid, unique and on the axis.

    Raises
    ------
    RegionLabelError
        Naming the first missing (NaN/NaT), duplicated or off-axis label, with the nearest
        labels of the axis; ``prefix`` (e.g. the source file) starts the message.
    """
    if labels.hasnans:
        raise RegionLabelError(f"{prefix}coordinate {dim!r} holds missing labels (NaN/NaT)")
    if not labels.is_unique:
        dup = labels[labels.duplicated()][0]
        raise RegionLabelError(
            f"{prefix}label {dup!r} appears more than once in coordinate {dim!r}"
        )
    try:
        pos: np.ndarray = axis.get_indexer(labels)
    except (TypeError, ValueError) as e:
        raise RegionLabelError(
            f"{prefix}labels of {dim!r} ({labels.dtype}) cannot be compared with those of "
            f"{where} ({axis.dtype}): {e}"
        ) from e
    missing = np.flatnonzero(pos < 0)
    if missing.size:
        bad = labels[int(missing[0])]
        raise RegionLabelError(
            f"{prefix}label {bad!r} of coordinate {dim!r} is not on {where}"
            f"{_nearest(axis, bad)}; every label must be one of its labels "
            f"({axis[0]!r} .. {axis[-1]!r}, {len(axis)} labels; {missing.size} of the "
            f"{len(labels)} given are not){_grow_hint(axis, bad, dim)}"
        )
    return pos


def _grow_hint(axis: pd.Index, label: Any, dim: str) -> str:
    """Advice for a label past the axis' end: grow the archive instead."""
    try:
        past_end = bool(axis.is_monotonic_increasing and label > axis[-1])
    except TypeError:
        return ""
    if not past_end:
        return ""
    return (
        f"; to grow the archive along {dim!r}, use xarray_zarrwrite.extend(store, "
        f"dim={dim!r}, until=...) or ds.fastzarr.append(store, dim={dim!r})"
    )


def contiguous_run(axis: pd.Index, labels: pd.Index) -> slice | None:
    """The common case in O(n): the labels equal a run of the template's (unique) axis."""
    try:
        start = axis.get_loc(labels[0])
        if not isinstance(start, int | np.integer):
            return None
        run = np.asarray(axis[start : start + len(labels)])
        if len(run) == len(labels) and bool((run == np.asarray(labels)).all()):
            return slice(int(start), int(start) + len(labels))
    except (KeyError, TypeError, ValueError):
        pass
    return None


def _nearest(axis: pd.Index, label: Any) -> str:
    try:
        i = int(axis.searchsorted(label))
    except (TypeError, ValueError):
        return ""
    near = [repr(axis[j]) for j in (i - 1, i) if 0 <= j < len(axis)]
    return f" (nearest template labels: {', '.join(near)})" if near else ""
