"""Integer time labels decoded by arithmetic (``convert._timelabels``) against xarray's own
decoder: the same values and dtype, or None (xarray decodes them)."""

from __future__ import annotations

import importlib

import numpy as np
import pytest

from xarray_zarrwrite._compat import decode_cf_datetime

labels = importlib.import_module("xarray_zarrwrite.convert._timelabels")
fastscan = importlib.import_module("xarray_zarrwrite.convert._fastscan")


@pytest.fixture(autouse=True)
def _fresh_kinds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(labels, "_agrees", {})


def xarray_decode(raw: np.ndarray, units: str, calendar: str | None) -> np.ndarray:
    return fastscan._reference_decode(raw, units, calendar)


def both_ways(raw: np.ndarray, units: str, calendar: str | None) -> np.ndarray | None:
    """The first call decodes with xarray (and learns the kind), the second by arithmetic."""
    first = labels.decode_labels(raw, units, calendar, xarray_decode)
    return labels.decode_labels(raw, units, calendar, xarray_decode) if first is not None else None


@pytest.mark.parametrize(
    ("units", "values"),
    [
        ("days since 2000-01-05 00:00:00", [0]),
        ("days since 2000-01-05", [0, 1, 2, 365]),
        ("day since 2000-01-05", [3]),
        ("hours since 1900-01-01 00:00:00.0", [876_576, 876_577, 1_000_000]),  # ERA5 (netCDF)
        ("hours since 1900-01-01 00:00:00.000000", [876_576]),
        ("seconds since 1970-01-01", [946_684_800, 946_688_400]),  # ERA5 (new CDS)
        ("minutes since 2001-02-03T04:05:06", [-10, 0, 10]),
        ("milliseconds since 1970-01-01 00:00", [1, 2**40]),
        ("microseconds since 1999-12-31 23:59:59.5", [500_000]),
        ("nanoseconds since 2262-04-11", [0, 1]),
        ("days since 1677-09-22", [0, 1]),
    ],
)
@pytest.mark.parametrize("dtype", ["<i4", "<i8", "<u4", ">i8"])
@pytest.mark.parametrize("calendar", [None, "standard", "gregorian", "proleptic_gregorian"])
def test_same_as_xarray(units: str, values: list[int], dtype: str, calendar: str | None) -> None:
    info = np.iinfo(np.dtype(dtype))
    if min(values) < info.min or max(values) > info.max:
        pytest.skip("labels do not fit this dtype")
    raw = np.array(values, dtype=dtype)
    expected = decode_cf_datetime(raw, units, calendar)
    got = both_ways(raw, units, calendar)
    if got is None:  # only where this xarray decodes these labels otherwise (then it does)
        assert list(labels._agrees.values()) == [False]
        return
    assert got.dtype == expected.dtype
    assert np.array_equal(got, expected)


@pytest.mark.parametrize(
    ("units", "values", "calendar"),
    [
        ("days since 2000-01-01", [0.5], None),  # floats: xarray's rounding rules
        ("days since 2000-01-01", [0], "noleap"),  # cftime calendars
        ("days since 2000-01-01", [0], "360_day"),
        ("days since 1000-01-01", [0], None),  # before datetime64[ns]: cftime
        ("days since 2000-01-01", [2**62], None),  # overflows datetime64[ns]
        ("nanoseconds since 2262-04-11 23:47:16", [2**40], None),  # past its last day
        ("days since 2000-01-01 00:00:00 UTC", [0], None),  # time zones
        ("days since 2000-01-01T00:00:00+01:00", [0], None),
        ("days since 2000-1-1", [0], None),  # unpadded dates
        ("days since 2000-13-01", [0], None),  # not a date
        ("weeks since 2000-01-01", [1], None),
        ("Days since 2000-01-01", [1], None),
        ("days after 2000-01-01", [1], None),
        ("days  since 2000-01-01", [1], None),  # spellings the per-kind check would not see
        (" days since 2000-01-01", [1], None),
        ("days since 2000-01-01 ", [1], None),
        ("days since 2000-01-01", [], None),
    ],
)
def test_left_to_xarray(units: str, values: list[float], calendar: str | None) -> None:
    dtype = np.float64 if any(isinstance(v, float) for v in values) else np.int64
    raw = np.array(values, dtype=dtype)
    calls = []

    def reference(r: np.ndarray, u: str, c: str | None) -> np.ndarray:
        calls.append(u)
        return np.zeros(r.shape, "datetime64[ns]")

    assert labels.decode_labels(raw, units, calendar, reference) is None
    assert calls == []


def test_a_kind_that_disagrees_is_left_to_xarray() -> None:
    """Were xarray's result ever other than the arithmetic (another resolution, say), the
    first decode returns xarray's, and later labels of that kind are xarray's to decode."""
    raw = np.array([0, 1], dtype=np.int64)
    other = np.array(["2000-01-01", "2000-01-02"], dtype="datetime64[s]")
    got = labels.decode_labels(raw, "days since 2000-01-01", None, lambda *_: other)
    assert got is other
    assert labels.decode_labels(raw, "days since 2000-01-01", None, lambda *_: other) is None
    # another kind (unit) is checked on its own
    hours = labels.decode_labels(raw, "hours since 2000-01-01", None, xarray_decode)
    assert hours is not None


def test_the_scan_decodes_like_the_full_scan() -> None:
    """``decode_times`` (the look-alike scan's decoder) gives xarray's index either way."""
    raw = np.array([0, 24, 48], dtype=np.int32)
    attrs = {"units": "hours since 2001-03-01 00:00:00", "calendar": "proleptic_gregorian"}
    first, cal1 = fastscan.decode_times("time", ("time",), raw, attrs)
    again, cal2 = fastscan.decode_times("time", ("time",), raw, attrs)
    assert first.equals(again) and first.dtype == again.dtype
    assert cal1 == cal2 == "proleptic_gregorian"
    assert str(again[-1]) == "2001-03-03 00:00:00"
