"""Growing archives along time: ``extend`` and ``append``, read back with plain xarray."""

from __future__ import annotations

import datetime as dt
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._extend import EXTENT_ATTR
from xarray_zarrwrite.errors import ExtentError, InputError, RegionLabelError

DAYS = pd.date_range("2000-01-01", periods=40, freq="D")


def source(n: int = 40, seed: int = 0, times=DAYS) -> xr.Dataset:
    rng = np.random.default_rng(seed)
    return xr.Dataset(
        {
            "v": (("time", "x"), rng.standard_normal((n, 3)).astype("f4")),
            "w": (("time",), rng.integers(-100, 100, n).astype("i2")),
        },
        coords={"time": times[:n], "x": [10.0, 20.0, 30.0]},
        attrs={"title": "daily"},
    )


def snapshot(store: MemoryStore) -> dict[str, bytes]:
    return {k: v.to_bytes() for k, v in store._store_dict.items()}


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("consolidated", [True, False])
def test_thirty_daily_appends_of_odd_sizes_equal_the_sources(zarr_format, consolidated):
    full = source()
    store = MemoryStore()
    xzw.to_template(
        full.isel(time=slice(0, 3)),
        store,
        chunks={"time": 5},
        zarr_format=zarr_format,
        consolidated=consolidated,
    )
    parts, i = [], 0
    sizes = [1, 2, 1, 3, 1, 1, 4, 2, 1, 1, 1, 6, 1, 2, 1, 1, 1]  # 30 days, odd offsets
    for n in sizes:
        part = full.isel(time=slice(i, i + n))
        result = part.fastzarr.append(store)
        assert result.region["time"] == slice(i, i + n)
        parts.append(part)
        i += n
    assert i == 30
    want = xr.concat(parts, dim="time")
    back = xr.open_zarr(store, consolidated=consolidated).load()
    if not consolidated:  # the root records the extent: what tells writers it changed
        assert back.attrs.pop(EXTENT_ATTR) == {"time": 30}
    xr.testing.assert_identical(back.drop_encoding(), want)
    assert back.v[-1, -1].values == full.v[29, -1].values  # the last index, bit for bit
    assert back.time.values[-1] == DAYS[29]
    assert xzw.check(store).complete
    assert not [k for k in store._store_dict if "lock" in k]  # every lock released
    if consolidated:  # consolidated metadata kept right
        assert xr.open_zarr(store, consolidated=True).sizes["time"] == 30


def test_a_chunk_partial_at_the_old_end_is_completed():
    full = source(seed=1)
    store = MemoryStore()
    xzw.to_template(full.isel(time=slice(0, 7)), store, chunks={"time": 5})
    xzw.write_region(full.isel(time=slice(0, 7)), store)  # 5 + an edge chunk of 2
    xzw.append(full.isel(time=slice(7, 8)), store)
    xzw.append(full.isel(time=slice(8, 12)), store)
    back = xr.open_zarr(store).load()
    xr.testing.assert_identical(back.drop_encoding(), full.isel(time=slice(0, 12)))


def test_append_with_a_gap_leaves_fill_until_written():
    full = source(seed=2)
    store = MemoryStore()
    xzw.to_template(full.isel(time=slice(0, 5)), store, chunks={"time": 5})
    xzw.append(full.isel(time=slice(0, 5)), store)
    xzw.append(full.isel(time=slice(8, 9)), store)
    back = xr.open_zarr(store).load()
    assert back.sizes["time"] == 9
    assert np.isnan(back.v[5:8].values).all()
    xzw.append(full.isel(time=slice(5, 8)), store)  # fills the gap, not past the end
    xr.testing.assert_identical(
        xr.open_zarr(store).load().drop_encoding(), full.isel(time=slice(0, 9))
    )


@pytest.mark.parametrize(
    "until",
    [
        "2000-01-20",
        pd.Timestamp("2000-01-20"),
        np.datetime64("2000-01-20"),
        dt.datetime(2000, 1, 20),
    ],
)
def test_extend_until_a_label_of_any_kind(until):
    store = MemoryStore()
    xzw.to_template(source(10), store, chunks={"time": 4})
    grown = xzw.extend(store, "time", until=until)
    assert grown.sizes["time"] == 20 and grown.v.shape == (20, 3) and grown.w.shape == (20,)
    back = xr.open_zarr(store)
    np.testing.assert_array_equal(back.time.values, DAYS[:20].values)
    assert xzw.check(store).total == 5 * 2  # v and w: 5 chunks each, nothing written


def test_extend_by_steps_and_hourly_steps():
    hours = pd.date_range("2001-03-01", periods=6, freq="h")
    ds = source(6, times=hours)
    store = MemoryStore()
    xzw.to_template(ds, store, chunks={"time": 24})
    xzw.extend(store, until="2001-03-01T10:00")
    xzw.extend(store, steps=3)
    back = xr.open_zarr(store)
    np.testing.assert_array_equal(
        back.time.values, pd.date_range("2001-03-01", periods=14, freq="h").values
    )
    assert back.time.encoding["units"] == xr.open_zarr(store).time.encoding["units"]


def test_cftime_axis_in_a_noleap_calendar():
    cftime = pytest.importorskip("cftime")
    times = xr.date_range("2001-02-25", periods=3, freq="D", calendar="noleap", use_cftime=True)
    ds = source(3, times=times)
    store = MemoryStore()
    xzw.to_template(ds, store, chunks={"time": 2})
    xzw.append(ds, store)
    xzw.extend(store, until=cftime.DatetimeNoLeap(2001, 3, 2))  # no 29 Feb in noleap
    later = xr.date_range("2001-03-03", periods=2, freq="D", calendar="noleap", use_cftime=True)
    xzw.append(source(2, seed=4, times=later), store)
    xzw.extend(store, until="2001-03-06")
    back = xr.open_zarr(store).load()  # noleap: decoded to cftime
    want = xr.date_range("2001-02-25", "2001-03-06", freq="D", calendar="noleap", use_cftime=True)
    assert list(back.indexes["time"]) == list(want)
    np.testing.assert_array_equal(back.v[:3].values, ds.v.values)
    np.testing.assert_array_equal(back.v[6:8].values, source(2, seed=4, times=later).v.values)
    assert np.isnan(back.v[3:6].values).all() and np.isnan(back.v[8:].values).all()


def test_numeric_axis():
    ds = xr.Dataset({"v": (("step", "x"), np.ones((3, 2), "f4"))}, coords={"step": [0, 6, 12]})
    store = MemoryStore()
    xzw.to_template(ds, store, time_dim=None, chunks={"step": 2})
    xzw.extend(store, "step", until=30)
    assert list(xr.open_zarr(store).step.values) == [0, 6, 12, 18, 24, 30]
    with pytest.raises(ExtentError, match="not on the axis' step"):
        xzw.extend(store, "step", until=40)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"until": "2000-01-05"}, "never shrinks"),
        ({"until": "2000-01-12T06:00"}, "not on the axis' step"),
        ({"until": 12}, "not a label of the axis' kind"),
        ({"steps": -1}, "non-negative integer"),
        ({"until": "2000-01-12", "steps": 2}, "exactly one"),
        ({}, "exactly one"),
    ],
)
def test_bad_extends_are_refused_and_change_nothing(kwargs, match):
    store = MemoryStore()
    xzw.to_template(source(10), store, chunks={"time": 4})
    before = snapshot(store)
    with pytest.raises(ExtentError, match=match) as e:
        xzw.extend(store, "time", **kwargs)
    assert isinstance(e.value, InputError)
    assert snapshot(store) == before


def test_exist_ok_and_same_end_are_no_ops():
    store = MemoryStore()
    xzw.to_template(source(10), store, chunks={"time": 4})
    before = snapshot(store)
    xzw.extend(store, until="2000-01-10")
    xzw.extend(store, until="2000-01-05", exist_ok=True)
    xzw.extend(store, steps=0)
    assert snapshot(store) == before


def test_writers_with_a_cached_template_see_the_new_extent():
    full = source(seed=5)
    store = MemoryStore()
    xzw.to_template(full.isel(time=slice(0, 10)), store, chunks={"time": 5})
    xzw.write_region(full.isel(time=slice(0, 5)), store)  # caches the template
    with pytest.raises(RegionLabelError):
        xzw.write_region(full.isel(time=slice(10, 15)), store)
    xzw.extend(store, until=DAYS[14])
    xzw.write_region(full.isel(time=slice(10, 15)), store)  # no stale refusal
    xzw.write_region(full.isel(time=slice(5, 10)), store)
    back = xr.open_zarr(store).load()
    xr.testing.assert_identical(back.drop_encoding(), full.isel(time=slice(0, 15)))


def test_extend_keeps_shards_and_the_extent_is_sharded_the_same():
    store = MemoryStore()
    full = source(seed=6)
    xzw.to_template(full.isel(time=slice(0, 8)), store, chunks={"time": 2}, shards={"time": 4})
    xzw.extend(store, until=DAYS[19])
    raw = zarr.open_array(store, path="v")
    assert (raw.shape, raw.chunks, raw.shards) == ((20, 3), (2, 3), (4, 3))
    xzw.append(full.isel(time=slice(0, 20)), store)
    xzw.append(full.isel(time=slice(20, 23)), store)  # part of a shard
    xr.testing.assert_identical(
        xr.open_zarr(store).load().drop_encoding(), full.isel(time=slice(0, 23))
    )


_WORKER = """
import pathlib, sys, time
import numpy as np, pandas as pd, xarray as xr
import xarray_zarrwrite as xzw
a, b, flag, ext_lo, ext_hi = sys.argv[1:6]
appends = [tuple(map(int, p.split(":"))) for p in sys.argv[6:]]
times = pd.date_range("2000-01-01", periods=60, freq="D")
values = np.random.default_rng(7).standard_normal((60, 3)).astype("f4")
def part(lo, hi):
    return xr.Dataset(
        {"v": (("time", "x"), values[lo:hi])},
        coords={"time": times[lo:hi], "x": [10.0, 20.0, 30.0]},
    )
pathlib.Path(flag + ".ready." + ext_lo).touch()
while not pathlib.Path(flag + ".go").exists():
    time.sleep(0.001)
lo, hi = int(ext_lo), int(ext_hi)
xzw.extend(a, until=times[hi - 1], exist_ok=True)  # both at once: converge to the larger
xzw.write_region(part(lo, hi), a)
for lo, hi in appends:  # into the same partial chunks as the other process
    xzw.append(part(lo, hi), b)
"""


def _part(lo: int, hi: int) -> xr.Dataset:
    values = np.random.default_rng(7).standard_normal((60, 3)).astype("f4")
    return xr.Dataset(
        {"v": (("time", "x"), values[lo:hi])},
        coords={"time": DAYS[lo:hi], "x": [10.0, 20.0, 30.0]},
    )


def test_two_processes_extending_and_appending_at_once_lose_nothing(tmp_path):
    """Real OS processes, released at the same instant: two extends of one archive converge to
    the larger extent, and appends into the same partial chunks of another keep every day."""
    a, b, flag = tmp_path / "a.zarr", tmp_path / "b.zarr", tmp_path / "flag"
    xzw.to_template(_part(0, 5), str(a), chunks={"time": 5})
    xzw.write_region(_part(0, 5), str(a))
    xzw.to_template(_part(0, 3), str(b), chunks={"time": 5})
    xzw.append(_part(0, 3), str(b))
    jobs = [("5", "20", "3:4", "6:7", "9:11"), ("20", "35", "4:6", "7:9", "11:12")]
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WORKER, str(a), str(b), str(flag), *job],
            stderr=subprocess.PIPE,
        )
        for job in jobs
    ]
    try:
        deadline = time.monotonic() + 120
        while len(list(tmp_path.glob("flag.ready.*"))) < len(jobs):
            assert time.monotonic() < deadline and all(p.poll() is None for p in procs)
            time.sleep(0.01)
        (tmp_path / "flag.go").touch()
        for p in procs:
            _, err = p.communicate(timeout=120)
            assert p.returncode == 0, err.decode()[-3000:]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.communicate()
    back = xr.open_zarr(str(a)).load()
    xr.testing.assert_identical(back.drop_encoding(), _part(0, 35))
    assert xzw.check(str(a)).complete
    back = xr.open_zarr(str(b)).load()
    xr.testing.assert_identical(back.drop_encoding(), _part(0, 12))
    assert not list(b.rglob("*lock*")) and not list(a.rglob("*lock*"))


def test_check_counts_the_old_edge_unit_partial_until_it_is_completed():
    full = source(seed=8)
    store = MemoryStore()
    xzw.to_template(full.isel(time=slice(0, 7)), store, chunks={"time": 5})
    xzw.write_region(full.isel(time=slice(0, 7)), store)
    assert xzw.check(store).complete
    xzw.extend(store, until=DAYS[9])
    report = xzw.check(store, variables=["v"])
    assert not report.complete
    assert report.variables["v"].missing == (("2000-01-06", "2000-01-10"),)  # the unit
    xzw.append(full.isel(time=slice(7, 10)), store)
    assert xzw.check(store).complete
    back = xr.open_zarr(store).load()
    assert "xarray_zarrwrite:partial" not in back.attrs  # the record is gone once complete
    xr.testing.assert_identical(back.drop_encoding(), full.isel(time=slice(0, 10)))


def test_convert_extends_an_existing_archive_with_new_files(tmp_path):
    full = source(seed=9)
    path = str(tmp_path / "c.zarr")
    kw = {"executor": "serial", "progress": False}
    assert xzw.convert([full.isel(time=slice(0, 7))], path, chunks={"time": 5}, **kw).ok
    with pytest.raises(InputError):  # past the end without extend=True
        xzw.convert([full.isel(time=slice(7, 12))], path, **kw)
    parts = [full.isel(time=slice(7, 12)), full.isel(time=slice(12, 20))]
    assert xzw.convert(parts, path, extend=True, **kw).ok
    back = xr.open_zarr(path).load()
    xr.testing.assert_identical(back.drop_encoding(), full.isel(time=slice(0, 20)))
    assert back.v[-1, -1].values == full.v[19, -1].values
    assert xzw.check(path).complete
