"""Integer CF time labels decoded by NumPy arithmetic, proven equal to xarray's decoder.

The look-alike scan (:mod:`._fastscan`) decodes each file's time labels itself. xarray's
``decode_cf_datetime`` costs 0.2-0.5 ms per call (unit parsing, reference-date checks, pandas
conversions), most of a daily file's scan, and per-file units (xarray writes ``"days since
<the file's first day>"``) mean no two files share one decode.

The common case is simple arithmetic: integer labels, a standard calendar, ``"<unit> since
YYYY-MM-DD[ HH:MM[:SS[.f]]]"`` without a time zone: ``reference + labels * unit`` in
``datetime64[ns]``. Anything else returns None (the caller uses xarray). Whether xarray gives
exactly that (the same values and dtype: its output resolution depends on its version) is
checked once per process for each kind of labels (dtype, unit, calendar), by decoding the
first such file both ways; a kind where the two differ is never decoded here again.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable
from typing import Final

import numpy as np

#: CF unit words (xarray also accepts the singular) and their length in nanoseconds.
_NS: Final = {
    "nanosecond": 1,
    "microsecond": 1_000,
    "millisecond": 1_000_000,
    "second": 1_000_000_000,
    "minute": 60_000_000_000,
    "hour": 3_600_000_000_000,
    "day": 86_400_000_000_000,
}
#: Exactly one space around "since" and none at the ends: the per-kind check below does not
#: see each file's spelling, so only spellings with one reading are taken.
_UNITS: Final = re.compile(
    r"(?P<unit>[a-z]+?)s? since "
    r"(?P<date>\d{4}-\d{2}-\d{2})(?:[ T](?P<time>\d{2}:\d{2}(?::\d{2}(?:\.\d{1,6})?)?))?"
)
#: Calendars whose labels are datetime64 (within its range) in xarray.
_STANDARD: Final = frozenset({None, "standard", "gregorian", "proleptic_gregorian"})
#: Representable datetime64[ns] values (the smallest int64 is NaT).
_LO: Final = -(2**63) + 1
_HI: Final = 2**63 - 1

_agrees: dict[tuple[str, str, str | None], bool] = {}
_lock = threading.Lock()


def decode_labels(
    raw: np.ndarray,
    units: str,
    calendar: str | None,
    reference: Callable[[np.ndarray, str, str | None], np.ndarray],
) -> np.ndarray | None:
    """``raw`` decoded as ``reference`` (xarray's decoder) decodes it, by arithmetic; None
    where that is not known to be the same (then call ``reference``)."""
    if raw.dtype.kind not in "iu" or calendar not in _STANDARD:
        return None
    m = _UNITS.fullmatch(units)
    if m is None or m["unit"] not in _NS:
        return None
    key = (raw.dtype.str, m["unit"], calendar)
    with _lock:
        agrees = _agrees.get(key)
    if agrees is False:  # xarray decodes this kind otherwise: its decoder, not ours
        return None
    got = _arithmetic(raw, _NS[m["unit"]], m["date"], m["time"])
    if got is None:
        return None
    if agrees is None:  # the first labels of this kind: decoded both ways, once
        expected = reference(raw, units, calendar)
        agrees = bool(expected.dtype == got.dtype and np.array_equal(expected, got))
        with _lock:
            _agrees[key] = agrees
        return expected
    return got


def _arithmetic(raw: np.ndarray, ns: int, date: str, time: str | None) -> np.ndarray | None:
    if raw.size == 0:
        return None
    try:
        # microseconds first: NumPy wraps around silently outside datetime64[ns]'s years
        ref = int(np.datetime64(f"{date}T{time or '00:00'}", "us").astype(np.int64)) * 1000
    except ValueError:  # not a date (month 13): xarray says why
        return None
    if not _LO <= ref <= _HI:
        return None
    lo, hi = int(raw.min()) * ns, int(raw.max()) * ns
    # exact in Python integers first: the int64 arithmetic below cannot overflow
    if not (lo >= _LO and hi <= _HI and ref + lo >= _LO and ref + hi <= _HI):
        return None  # outside datetime64[ns]: xarray goes to cftime
    out = raw.astype(np.int64) * np.int64(ns) + ref
    return out.view("datetime64[ns]")
