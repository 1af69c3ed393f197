"""The fast scan of look-alike files (``convert/_fastscan.py``): one full scan, then a byte
comparison per file. Every fast result must equal the full scan's field by field, and any
difference other than the time labels and text attributes must send the file to the full
scan. The object header walk is checked on version 1 and version 2 headers."""

from __future__ import annotations

import importlib
import os
from collections.abc import Callable, Iterator
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
from schema_compare import assert_same_schema

from xarray_zarrwrite.convert import _fastscan, _h5bytes, _sources, convert

NLAT, NLON = 6, 8


@pytest.fixture(autouse=True)
def _no_prototypes() -> Iterator[None]:
    _fastscan.forget()
    yield
    _fastscan.forget()


def _day(day: pd.Timestamp | Any, k: int, calendar: str = "standard") -> xr.Dataset:
    if calendar == "standard":
        time = pd.DatetimeIndex([day])
    else:
        time = xr.date_range(day, periods=1, freq="D", calendar=calendar, use_cftime=True)
    rng = np.random.default_rng(k)
    data = (rng.standard_normal((1, NLAT, NLON)) * 5 + 280).astype("f4")
    data[0, -1, -1] = np.nan
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), data, {"units": "K", "long_name": "t2m"})},
        coords={
            "time": time,
            "lat": ("lat", np.linspace(-50, 50, NLAT), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 315, NLON), {"units": "degrees_east"}),
        },
        attrs={"title": "daily"},
    )


def _write_days(
    tmp_path: Any,
    n: int,
    calendar: str = "standard",
    edit: Callable[[xr.Dataset, int], xr.Dataset] | None = None,
    **to_netcdf: Any,
) -> list[str]:
    days = xr.date_range("2001-02-25", periods=n, freq="D", calendar=calendar)
    paths = []
    for k, day in enumerate(days):
        ds = _day(day, k, calendar)
        if edit is not None:
            ds = edit(ds, k)
        path = str(tmp_path / f"day{k:03d}.nc")
        ds.to_netcdf(path, **to_netcdf)
        paths.append(path)
    return paths


def _scan(paths: list[str], monkeypatch: pytest.MonkeyPatch) -> tuple[list[Any], int]:
    """(fast-path schemas, number of full h5py scans made)."""
    full = 0
    real = _sources.scan_hdf5

    def counting(*a: Any, **k: Any) -> Any:
        nonlocal full
        full += 1
        return real(*a, **k)

    specs = [_sources.expand_sources(p)[0] for p in paths]
    with monkeypatch.context() as m:
        m.setattr(_sources, "scan_hdf5", counting)
        out = [_sources.scan_source(s, "time", None, None) for s in specs]
    return out, full


def _full(paths: list[str], monkeypatch: pytest.MonkeyPatch) -> list[Any]:
    specs = [_sources.expand_sources(p)[0] for p in paths]
    with monkeypatch.context() as m:
        m.setenv(_fastscan.FAST_SCAN_ENV, "0")
        return [_sources.scan_source(s, "time", None, None) for s in specs]


@pytest.mark.parametrize("calendar", ["standard", "noleap", "360_day", "julian"])
@pytest.mark.parametrize("unlimited", [False, True])
def test_look_alike_files_are_scanned_once(
    tmp_path, monkeypatch: pytest.MonkeyPatch, calendar: str, unlimited: bool
) -> None:
    # xarray writes units="days since <the file's day>": the time header differs per file
    kw = {"unlimited_dims": ["time"]} if unlimited else {}
    paths = _write_days(tmp_path, 6, calendar, **kw)
    fast, full = _scan(paths, monkeypatch)
    assert full == 1  # the prototype; the other five by byte comparison
    for a, b in zip(fast, _full(paths, monkeypatch), strict=True):
        assert_same_schema(a, b)
    assert [s.index.urls for s in fast] == [(p,) for p in paths]
    assert fast[-1].times[-1] == xr.date_range("2001-02-25", periods=6, calendar=calendar)[-1]


def test_fixed_units_and_per_file_history(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    def edit(ds: xr.Dataset, k: int) -> xr.Dataset:
        ds.time.encoding = {"units": "hours since 1900-01-01", "dtype": "int32"}
        ds.attrs["history"] = f"made on day {k:03d} by a test"  # CDO/NCO style, same length
        return ds

    paths = _write_days(tmp_path, 5, edit=edit)
    fast, full = _scan(paths, monkeypatch)
    assert full == 1
    for a, b in zip(fast, _full(paths, monkeypatch), strict=True):
        assert_same_schema(a, b)


def _attr(ds: xr.Dataset, k: int) -> xr.Dataset:
    ds.t2m.attrs["long_name"] = "t2m" if k < 2 else "T2m"  # same length, a schema field
    return ds


def _packed(ds: xr.Dataset, k: int) -> xr.Dataset:
    # a per-file packing: read from the compared bytes, not a reason for a full scan
    ds.t2m.encoding = {
        "dtype": "int16",
        "scale_factor": 0.01 * (k + 1),
        "add_offset": 280.0,
        "_FillValue": np.int16(-32767),
    }
    return ds


def _packed_dense(ds: xr.Dataset, k: int) -> xr.Dataset:
    # with more attributes, stored "dense" (a fractal heap): the same per-file reading
    ds.t2m.attrs.update(standard_name="air_temperature", comment="2 m", source="test")
    return _packed(ds, k)


def _grid(ds: xr.Dataset, k: int) -> xr.Dataset:
    return ds.assign_coords(lat=ds.lat + (0.5 if k >= 2 else 0.0))


def _member(ds: xr.Dataset, k: int) -> xr.Dataset:
    return ds.assign_coords(realization=np.int32(k))


def _time_fill(ds: xr.Dataset, k: int) -> xr.Dataset:
    # float times get a _FillValue: with netCDF-C's own attributes, more than 8 attributes,
    # stored "dense" (in a fractal heap, not the object header)
    ds.time.encoding = {"units": f"days since 2001-01-{k + 1:02d}", "dtype": "float64"}
    ds.time.attrs["long_name"] = "time" if k < 2 else "Time"  # a time text, same length
    ds.time.attrs["standard_name"] = "time"
    return ds


@pytest.mark.parametrize(
    ("edit", "full_scans"),
    [(_attr, 2), (_packed, 1), (_packed_dense, 1), (_grid, 2), (_member, 5), (_time_fill, 1)],
    ids=["data-attribute", "packing", "packing-dense", "grid", "scalar-member", "time-text"],
)
def test_other_differences_scan_fully(
    tmp_path, monkeypatch: pytest.MonkeyPatch, edit: Any, full_scans: int
) -> None:
    paths = _write_days(tmp_path, 5, edit=edit)
    assert len({os.path.getsize(p) for p in paths}) == 1  # same size: compared byte by byte
    fast, full = _scan(paths, monkeypatch)
    # files 2-4 differ from files 0-1 (or every file from every other): a file unlike every
    # kept prototype is scanned fully (and kept, while fewer than three are kept for its size)
    assert full == full_scans
    for a, b in zip(fast, _full(paths, monkeypatch), strict=True):
        assert_same_schema(a, b)
    if edit is _attr:
        assert fast[-1].data_vars["t2m"].attrs["long_name"] == "T2m"
    if edit in (_packed, _packed_dense):  # read per file from the bytes (ERA5 from the CDS)
        scales = [s.index.variables["t2m"].encoding["scale_factor"] for s in fast]
        assert scales == pytest.approx([0.01, 0.02, 0.03, 0.04, 0.05])


def test_changed_or_other_sized_files_scan_fully(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    paths = _write_days(tmp_path, 3)
    longer = _day(pd.Timestamp("2001-02-28"), 9).reindex(lat=np.linspace(-50, 50, NLAT + 1))
    longer.to_netcdf(tmp_path / "other.nc")
    fast, full = _scan([*paths, str(tmp_path / "other.nc")], monkeypatch)
    assert full == 2
    assert fast[-1].sizes["lat"] == NLAT + 1


@pytest.mark.parametrize("edit", [None, _packed], ids=["float", "per-file-packing"])
def test_convert_of_look_alike_files_equals_open_mfdataset(tmp_path, edit: Any) -> None:
    paths = _write_days(tmp_path, 9, edit=edit, unlimited_dims=["time"])
    store = str(tmp_path / "out.zarr")
    # per-file packings are kept exactly as floats (the default packs them once, for the
    # archive: within the packing's tolerance, docs/packing.md)
    kw = {"template_packing": "float"} if edit is not None else {}
    report = convert(paths, store, chunks={"time": 4}, progress=False, **kw)
    assert report.ok, report.summary()
    with xr.open_mfdataset(paths, combine="by_coords") as mf:
        want = mf.load()
    back = xr.open_zarr(store, chunks=None)
    assert back.t2m.values.tobytes() == want.t2m.values.tobytes()
    assert back.t2m.values[-1, -1].tobytes() == want.t2m.values[-1, -1].tobytes()
    assert list(back.time.values) == list(want.time.values)


@pytest.mark.parametrize(
    ("libver", "many"), [("earliest", 6), ("latest", 6), ("latest", 14)], ids=["v1", "v2", "dense"]
)
def test_header_walk_finds_text_values(tmp_path, libver: str, many: int) -> None:
    """Version 1 object headers (libver earliest), version 2 (latest) with attributes enough
    to need a continuation chunk, and dense attribute storage (a fractal heap, beyond 8
    attributes): every scalar fixed-length text is found where its value is stored."""
    path = str(tmp_path / "h.h5")
    with h5py.File(path, "w", libver=libver) as f:
        dset = f.create_dataset("time", data=np.arange(3.0))
        texts = {f"a{i}": np.bytes_(f"value number {i}") for i in range(many)}
        for key, value in texts.items():
            dset.attrs[key] = value
        dset.attrs["n"] = np.int32(4)  # not a text: never allowed to differ
        f.attrs["history"] = np.bytes_("made by a test")
    with h5py.File(path, "r") as f:
        spans = _h5bytes.text_spans(f, h5py, f["time"])
        root = _h5bytes.text_spans(f, h5py, f["/"])
        version = h5py.h5o.get_info(f["time"].id).hdr.version
    assert version == (1 if libver == "earliest" else 2)
    assert spans is not None and root is not None
    assert set(spans.texts) == set(texts)
    with open(path, "rb") as fh:
        raw = fh.read()
    for key, ((a, b), checksums) in spans.texts.items():
        assert raw[a:b] == bytes(texts[key])
        assert bool(checksums) == (libver == "latest")
        for lo, hi in checksums:
            assert hi - lo == 4 and not lo <= a < hi
    assert raw[slice(*root.texts["history"][0])] == b"made by a test"


def test_kinds_interleaved_keep_their_prototypes(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Files per variable, listed day by day: one prototype per kind of file, each reused
    (the least recently used prototype goes first, and only beyond the limits)."""
    paths = []
    for k, day in enumerate(pd.date_range("2001-03-01", periods=4, freq="D")):
        for var, n in (("a", NLAT), ("b", NLAT + 2), ("c", NLAT + 4)):
            ds = _day(day, k).rename(t2m=var).reindex(lat=np.linspace(-50, 50, n))
            path = str(tmp_path / f"{var}-{k}.nc")
            ds.to_netcdf(path)
            paths.append(path)
    fast, full = _scan(paths, monkeypatch)
    assert full == 3  # one per kind
    for a, b in zip(fast, _full(paths, monkeypatch), strict=True):
        assert_same_schema(a, b)
    monkeypatch.setattr(_fastscan, "_KEEP", 2)  # fewer slots than kinds: still correct
    _fastscan.forget()
    fast, full = _scan(paths, monkeypatch)
    assert full > 3  # kinds pushed out before their next file are scanned fully again
    for a, b in zip(fast, _full(paths, monkeypatch), strict=True):
        assert_same_schema(a, b)


def _coordinates_text(ds: xr.Dataset, k: int) -> xr.Dataset:
    # "coordinates" on the time variable names which variables are coordinates: a per-file
    # change of it (same length) changes the scan, so it is never taken from the bytes
    ds["aa"] = ("time", np.array([k], dtype="f4"))
    ds["bb"] = ("time", np.array([k], dtype="f4"))
    ds.time.attrs["coordinates"] = "aa" if k < 2 else "bb"
    ds.attrs["coordinates"] = "x"  # and the root's: the same rule
    return ds


def test_texts_that_decode_other_variables_must_not_differ(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = _write_days(tmp_path, 4, edit=_coordinates_text)
    fast, full = _scan(paths, monkeypatch)
    assert full == 2  # day 2 differs in the time's "coordinates": scanned fully
    for a, b in zip(fast, _full(paths, monkeypatch), strict=True):
        assert_same_schema(a, b)


def test_no_prototype_from_a_file_changed_since_its_scan(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from dataclasses import replace

    paths = _write_days(tmp_path, 1)
    (schema,) = _full(paths, monkeypatch)
    assert _fastscan.build(paths[0], schema, "time") is not None
    size, mtime = schema.index.stamp
    stale = replace(schema, index=replace(schema.index, stamp=(size, mtime - 1)))
    assert _fastscan.build(paths[0], stale, "time") is None  # its bytes are not that scan's


def test_era5_like_hourly_files_decode_labels_by_arithmetic(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ERA5 as delivered in NetCDF: hourly steps, ``"hours since 1900-01-01 00:00:00.0"`` in
    int32, int16 packed per file. The look-alike scan decodes the labels by arithmetic (xarray's
    decoder runs once, to check the kind) and gives what the full scan gives; the archive
    equals ``open_mfdataset`` of the files."""
    timelabels = importlib.import_module("xarray_zarrwrite.convert._timelabels")
    monkeypatch.setattr(timelabels, "_agrees", {})
    paths = []
    for k in range(4):
        hours = pd.date_range(f"2001-03-0{k + 1}", periods=24, freq="h")
        rng = np.random.default_rng(k)
        ds = xr.Dataset(
            {
                "t2m": (
                    ("time", "lat", "lon"),
                    (rng.random((24, NLAT, NLON)) * 40 + 250).astype("f4"),
                )
            },
            coords={
                "time": hours,
                "lat": np.linspace(-50, 50, NLAT),
                "lon": np.arange(NLON) * 45.0,
            },
        )
        ds.time.encoding = {"units": "hours since 1900-01-01 00:00:00.0", "dtype": "int32"}
        ds = _packed(ds, k)
        paths.append(str(tmp_path / f"era5_{k}.nc"))
        ds.to_netcdf(paths[-1])
    decodes = []
    real = _fastscan._reference_decode

    def counting(*a: Any) -> Any:
        decodes.append(a[1])
        return real(*a)

    monkeypatch.setattr(_fastscan, "_reference_decode", counting)
    fast, full = _scan(paths, monkeypatch)
    assert full == 1 and len(decodes) == 1  # the prototype scans through xarray itself
    assert list(timelabels._agrees.values()) == [True]
    for a, b in zip(fast, _full(paths, monkeypatch), strict=True):
        assert_same_schema(a, b)
    assert str(fast[-1].times[-1]) == "2001-03-04 23:00:00"
    store = str(tmp_path / "era5.zarr")
    assert convert(paths, store, chunks={"time": 24}, template_packing="float", progress=False).ok
    with xr.open_mfdataset(paths, combine="by_coords") as mf:
        want = mf.load()
    back = xr.open_zarr(store, chunks=None)
    assert back.t2m.values.tobytes() == want.t2m.values.tobytes()
    assert list(back.time.values) == list(want.time.values)


def test_prototypes_only_for_sizes_that_repeat(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Compressed files rarely share a size: a file's prototype is made only when a second
    file of its size comes, from the first one's scan (a file changed in between gives none).
    Look-alike compressed files of one size scan by comparison and equal the full scan."""
    builds = []
    real = _fastscan.build

    def counting(path: str, *a: Any) -> Any:
        builds.append(os.path.basename(path))
        return real(path, *a)

    monkeypatch.setattr(_fastscan, "build", counting)
    zlib = {"t2m": {"zlib": True, "complevel": 1}}
    for sub in ("a", "b"):
        (tmp_path / sub).mkdir()
    sizes = _write_days(tmp_path / "a", 4, encoding=zlib)  # random data: four sizes
    assert len({os.path.getsize(p) for p in sizes}) == 4
    fast, full = _scan(sizes, monkeypatch)
    assert full == 4 and builds == []  # nothing repeats: no prototype is made

    def same_values(ds: xr.Dataset, k: int) -> xr.Dataset:  # same bytes, so the same size
        return ds.copy(data={"t2m": np.full(ds.t2m.shape, 280.0, "f4")})

    paths = _write_days(tmp_path / "b", 5, edit=same_values, encoding=zlib)
    assert len({os.path.getsize(p) for p in paths}) == 1
    assert os.path.getsize(paths[0]) not in {os.path.getsize(p) for p in sizes}
    fast, full = _scan(paths, monkeypatch)
    assert full == 1 and builds == ["day000.nc"]  # made when day001.nc came
    for a, b in zip(fast, _full(paths, monkeypatch), strict=True):
        assert_same_schema(a, b)
    store = str(tmp_path / "z.zarr")
    assert convert(paths, store, chunks={"time": 2}, progress=False).ok
    with xr.open_mfdataset(paths, combine="by_coords") as mf:
        want = mf.load()
    back = xr.open_zarr(store, chunks=None)
    assert back.t2m.values.tobytes() == want.t2m.values.tobytes()
    assert list(back.time.values) == list(want.time.values)
