"""Property: files packed each their own way, written with ``write_region`` into a packed
template, read back with plain ``xr.open_zarr`` within the template packing's stated
precision (half its quantum); time variables at any resolution read back exactly, in every
CF calendar."""

from __future__ import annotations

import pathlib
import tempfile

import numpy as np
import pandas as pd
import xarray as xr
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import xarray_zarrwrite  # noqa: F401  (registers the accessor)

CALENDARS = ["standard", "gregorian", "proleptic_gregorian", "noleap", "365_day", "360_day"]
STANDARD = CALENDARS[:3]  # decoded as datetime64; the others as cftime
STORED = {"int8": 8, "int16": 16, "uint16": 16}
#: Time steps of the axis and, per write, the resolution of a time-like data variable.
AXIS_FREQS = ["h", "6h", "D"]
RESOLUTIONS = {"daily": 86400, "hourly": 3600, "sub-daily": 1}  # seconds per unit drawn


@st.composite
def file_packing(draw: st.DrawFn) -> dict:
    dtype = draw(st.sampled_from(sorted(STORED)))
    lo = draw(st.floats(-500.0, 500.0))
    hi = lo + draw(st.floats(0.5, 300.0))
    return {
        "dtype": dtype,
        "lo": lo,
        "hi": hi,
        "resolution": draw(st.sampled_from(list(RESOLUTIONS))),
    }


@st.composite
def case(draw: st.DrawFn) -> dict:
    files = draw(st.lists(file_packing(), min_size=1, max_size=3))
    return {
        "calendar": draw(st.sampled_from(CALENDARS)),
        "freq": draw(st.sampled_from(AXIS_FREQS)),
        "steps": draw(st.lists(st.integers(1, 3), min_size=len(files), max_size=len(files))),
        "bits": draw(st.integers(8, 16)),
        "zarr_format": draw(st.sampled_from([2, 3])),
        "files": files,
        "seed": draw(st.integers(0, 2**16)),
    }


def _axis(calendar: str, freq: str, n: int) -> np.ndarray:
    if calendar in STANDARD:
        return pd.date_range("2000-02-27", periods=n, freq=freq).values
    return np.asarray(xr.date_range("2000-02-27", periods=n, freq=freq, calendar=calendar))


def _encoding(spec: dict) -> dict:
    """The file's own packing: its whole code range spans lo..hi; the extreme code is the fill."""
    info = np.iinfo(spec["dtype"])
    codes = int(info.max) - int(info.min) - 1
    scale = (spec["hi"] - spec["lo"]) / codes
    return {
        "dtype": np.dtype(spec["dtype"]),
        "scale_factor": scale,
        "add_offset": spec["lo"] - scale * int(info.min),
        "_FillValue": info.max if info.min == 0 else info.min,
    }


def _file(spec: dict, time: np.ndarray, calendar: str, rng: np.random.Generator) -> xr.Dataset:
    n = time.size
    values = rng.uniform(spec["lo"], spec["hi"], (n, 2))
    values[-1, -1] = spec["hi"]
    values[0, 0] = np.nan if n * 2 > 1 else values[0, 0]
    ds = xr.Dataset({"t2m": (("time", "x"), values)}, coords={"time": time, "x": [0.5, 1.5]})
    ds.t2m.encoding = _encoding(spec)
    ds.time.encoding = {"calendar": calendar, "units": "hours since 2000-01-01"}
    return ds


def _with_times(ds: xr.Dataset, spec: dict, rng: np.random.Generator) -> xr.Dataset:
    """Time-like data variables at the write's resolution (added after opening: xarray
    2025.6 cannot read back a timedelta it wrote to NetCDF)."""
    unit = RESOLUTIONS[spec["resolution"]]
    lead = (rng.integers(0, 48 * 3600 // unit, ds.sizes["time"]) * unit).astype("m8[s]")
    ds["lead"] = ("time", lead.astype("m8[ns]"))
    if ds.time.dtype.kind == "M":  # datetime64 data variables: standard calendars only
        ds["valid_time"] = ("time", (ds.time.values + lead).astype("M8[ns]"))
    return ds


@settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(case())
def test_per_file_packings_read_back_within_the_template_precision(c):
    rng = np.random.default_rng(c["seed"])
    time = _axis(c["calendar"], c["freq"], sum(c["steps"]))
    edges = np.cumsum([0, *c["steps"]])
    with tempfile.TemporaryDirectory(prefix="xzw-prop-") as tmp:
        folder = pathlib.Path(tmp)
        paths = []
        for k, spec in enumerate(c["files"]):
            path = folder / f"f{k}.nc"
            _file(spec, time[edges[k] : edges[k + 1]], c["calendar"], rng).to_netcdf(path)
            paths.append(path)
        opened = [xr.open_dataset(p) for p in paths]
        try:
            sources = [
                _with_times(s.load(), spec, rng) for s, spec in zip(opened, c["files"], strict=True)
            ]
            expected = xr.concat(sources, dim="time")
            lo = min(s["lo"] for s in c["files"])
            hi = max(s["hi"] for s in c["files"])
            store = folder / "t.zarr"
            sources[0].fastzarr.to_template(
                store,
                global_end=time[-1],
                freq=c["freq"],
                chunks={"time": 1},
                packing={"t2m": {"bits": c["bits"], "valid_range": (lo, hi)}},
                zarr_format=c["zarr_format"],
            )
            for ds in sources[::-1]:
                ds.fastzarr.write_region(store)
            back = xr.open_zarr(store).load()
        finally:
            for s in opened:
                s.close()
    quantum = (hi - lo) / (2 ** c["bits"] - 2)
    a, b = back.t2m.values, expected.t2m.values
    np.testing.assert_array_equal(np.isnan(a), np.isnan(b))
    ok = ~np.isnan(b)
    assert np.abs(a[ok] - b[ok]).max() <= quantum / 2 * (1 + 1e-9) + 1e-9 * max(abs(lo), abs(hi))
    assert back.t2m.encoding["scale_factor"] == quantum or np.isclose(
        back.t2m.encoding["scale_factor"], quantum, rtol=1e-12
    )
    np.testing.assert_array_equal(back.time.values, expected.time.values)
    np.testing.assert_array_equal(back.lead.values, expected.lead.values)
    if "valid_time" in expected:
        np.testing.assert_array_equal(back.valid_time.values, expected.valid_time.values)
