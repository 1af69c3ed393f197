"""convert() through the byte-range index: every layout the index reads (chunked with
shuffle/zlib/fletcher32, contiguous, partial edge chunks, CF-packed with per-file scale and
offset, NaN and _FillValue, unallocated chunks) compared bit for bit with ``xr.open_mfdataset``
and with the xarray path; NetCDF3 sources in the mix fall back per source; the index kept in
the archive is reused on resume and invisible to plain zarr/xarray readers."""

from __future__ import annotations

import importlib
import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from schema_compare import assert_same_schema as _assert_same_schema

from xarray_zarrwrite._check import check
from xarray_zarrwrite.convert import _fastscan, _h5scan, _index, _index_store, _sources, convert
from xarray_zarrwrite.testing.fixtures import s3_endpoint, s3_storage_options, s3_url

__all__ = ["s3_endpoint", "s3_storage_options", "s3_url"]  # pytest fixtures

NLAT, NLON = 7, 9


def _data(start: str, n: int, seed: int) -> xr.Dataset:
    time = pd.date_range(start, periods=n, freq="D")
    rng = np.random.default_rng(seed)
    t = (rng.standard_normal((n, NLAT, NLON)) * 5 + 280).astype("float32")
    t[0, 0, 0] = np.nan
    t[-1, -1, -1] = np.nan
    return xr.Dataset(
        {
            "t": (("time", "lat", "lon"), t, {"units": "K"}),
            "p": (("time", "lat", "lon"), (t.astype("float64") - 200) * 3, {"units": "hPa"}),
        },
        coords={
            "time": time,
            "lat": ("lat", np.linspace(-60, 60, NLAT), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 320, NLON), {"units": "degrees_east"}),
        },
    )


def _encodings(k: int) -> dict[str, dict[str, object]]:
    """A different storage layout per file (and per-file packing of ``p``)."""
    packed = {
        "dtype": "int16",
        "scale_factor": 0.05 + 0.01 * k,
        "add_offset": 250.0 + k,
        "_FillValue": -32767,
    }
    layouts: list[dict[str, object]] = [
        {"zlib": True, "shuffle": True, "chunksizes": (4, 3, 4)},  # partial edge chunks
        {"contiguous": True},
        {"zlib": True, "shuffle": False, "fletcher32": True, "chunksizes": (5, NLAT, NLON)},
        {"chunksizes": (2, 4, 9)},  # chunked, no filter
    ]
    return {"t": layouts[k % 4], "p": {**packed, **layouts[(k + 1) % 4]}}


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("idx")
    paths = []
    starts = pd.date_range("2001-01-01", periods=5, freq="11D")
    for k, start in enumerate(starts):
        ds = _data(str(start.date()), 11, k)
        path = str(d / f"f{k}.nc")
        if k == 4:  # NetCDF3: not indexable, read through xarray
            ds.to_netcdf(
                path, format="NETCDF3_64BIT", encoding={"p": _clean_nc3(_encodings(k)["p"])}
            )
        else:
            ds.to_netcdf(path, engine="netcdf4", encoding=_encodings(k))
        paths.append(path)
    return paths


def _clean_nc3(enc: dict[str, object]) -> dict[str, object]:
    """NetCDF3 knows no chunks or filters: only the packing."""
    keep = ("dtype", "scale_factor", "add_offset", "_FillValue")
    return {k: v for k, v in enc.items() if k in keep}


def _convert(files: list[str], store: str, chunk: int, **kw: object) -> None:
    report = convert(
        files,
        store,
        chunks={"time": chunk, "lat": -1, "lon": -1},
        resume=kw.pop("resume", False),
        template_packing="float",  # the decoded values, bit for bit
        progress=False,
        executor="threads",
        max_workers=2,
        **kw,  # type: ignore[arg-type]
    )
    assert report.status != "failed", report.summary()


def _assert_same(store: str, expected: xr.Dataset) -> None:
    back = xr.open_zarr(store, chunks=None)
    for name in ("t", "p"):
        got, want = back[name], expected[name]
        assert got.dtype == want.dtype
        assert got.shape == want.shape
        assert got.values.tobytes() == want.values.tobytes(), name
        assert got.values[-1, -1, -1].tobytes() == want.values[-1, -1, -1].tobytes()
    np.testing.assert_array_equal(back.time.values, expected.time.values)


def test_index_describes_hdf5_layouts(files: list[str]) -> None:
    for path in files[:4]:
        with xr.open_dataset(path, cache=False) as ds:
            idx = _index.index_hdf5(path, ds, ["t", "p"])
            assert idx is not None and set(idx.variables) == {"t", "p"}
            with _index.RangeReader(idx) as reader:
                for name in ("t", "p"):
                    vi = idx.variables[name]
                    for sel in [
                        (slice(0, 11), slice(0, NLAT), slice(0, NLON)),
                        (slice(3, 11), slice(2, 7), slice(5, 9)),  # ends at the last index
                        (slice(10, 11), slice(6, 7), slice(8, 9)),
                    ]:
                        out = np.empty([s.stop - s.start for s in sel], _index.decoded_dtype(vi))
                        _index.read_decoded(reader, vi, sel, out)
                        want = ds[name].values[sel]
                        assert out.tobytes() == want.tobytes(), (path, name, sel)
    assert not _index.is_hdf5(files[4])


def test_index_raw_matches_h5py_with_unallocated_chunks(tmp_path) -> None:
    path = str(tmp_path / "sparse.h5")
    with h5py.File(path, "w") as f:
        d = f.create_dataset(
            "v",
            shape=(10, 7),
            chunks=(3, 4),
            dtype=">i4",
            fillvalue=-9,
            compression="gzip",
            shuffle=True,
            fletcher32=True,
        )
        d[0:3, 0:4] = np.arange(12).reshape(3, 4)
        d[9, 6] = 5
        want = d[...]
    ds = xr.Dataset({"v": (("a", "b"), want)})
    idx = _index.index_hdf5(path, ds, ["v"])
    assert idx is not None
    vi = idx.variables["v"]
    assert vi.offsets.shape == (4, 2) and (vi.offsets < 0).sum() == 8 - 2
    with _index.RangeReader(idx) as reader:
        got = _index.read_raw(reader, vi, (slice(0, 10), slice(0, 7)))
    assert got.tobytes() == want.tobytes()


def test_unsupported_filters_and_types_fall_back(tmp_path) -> None:
    path = str(tmp_path / "odd.h5")
    with h5py.File(path, "w") as f:
        f.create_dataset("lzf", data=np.arange(20.0).reshape(4, 5), compression="lzf")
        f.create_dataset("so", data=np.arange(20).reshape(4, 5), scaleoffset=0)
        comp = np.zeros(4, dtype=[("a", "i4"), ("b", "f8")])
        f.create_dataset("comp", data=comp)
        f.create_dataset("ok", data=np.arange(20.0).reshape(4, 5), chunks=(2, 5))
    ds = xr.Dataset(
        {
            "lzf": (("x", "y"), np.zeros((4, 5))),
            "so": (("x", "y"), np.zeros((4, 5), "i8")),
            "comp": (("x",), np.zeros(4)),
            "ok": (("x", "y"), np.zeros((4, 5))),
        }
    )
    idx = _index.index_hdf5(path, ds, ["lzf", "so", "comp", "ok"])
    assert idx is not None and set(idx.variables) == {"ok"}


def test_convert_indexed_equals_open_mfdataset_and_xarray_path(
    files: list[str], tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    with xr.open_mfdataset(files, combine="by_coords") as mf:
        expected = mf.load()
    for chunk in (4, 55):  # many chunks, and one task spanning every source
        fast = str(tmp_path / f"fast{chunk}.zarr")
        _convert(files, fast, chunk)
        _assert_same(fast, expected)
        assert check(fast).complete
    # the same archive through the xarray path only
    monkeypatch.setattr(_sources, "is_hdf5", lambda *a, **k: False)
    slow = str(tmp_path / "slow.zarr")
    _convert(files, slow, 4)
    _assert_same(slow, expected)
    a, b = zarr.open_group(str(tmp_path / "fast4.zarr")), zarr.open_group(slow)
    for name in ("t", "p"):
        assert a[name][...].tobytes() == b[name][...].tobytes()  # type: ignore[union-attr]


def test_saved_index_is_invisible_and_reused(
    files: list[str], tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = str(tmp_path / "a.zarr")
    _convert(files[:2], store, 4, global_end="2001-02-13")  # room for files[2:4]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        zarr.open_group(store, mode="r").members()  # consolidated: the index is not listed
        members = dict(zarr.open_group(store, mode="r", use_consolidated=False).members())
        for consolidated in (None, False):
            back = xr.open_zarr(store, chunks=None, consolidated=consolidated)
            assert set(back.variables) == {"t", "p", "time", "lat", "lon"}
    assert isinstance(members[_index_store.INDEX_GROUP], zarr.Group)
    saved = _index_store.load_saved(store, _sources.expand_sources(files[:2]))
    assert all(s.index is not None for s in saved)

    calls: list[str] = []
    real, real_open = _index.index_hdf5, _index.index_open_hdf5

    def counting(path: str, *a: object, **k: object) -> object:
        calls.append(path)
        return real(path, *a, **k)  # type: ignore[arg-type]

    def counting_open(f: object, path: str, *a: object, **k: object) -> object:
        calls.append(path)
        return real_open(f, path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(_sources, "index_hdf5", counting)  # the xarray path
    monkeypatch.setattr(_h5scan, "index_open_hdf5", counting_open)  # the h5py scan
    monkeypatch.setenv(_fastscan.FAST_SCAN_ENV, "0")  # no look-alike shortcut (the saved index)
    # two more sources (resumed with the archive's own options): only those are indexed
    report = convert(files[:4], store, progress=False, executor="threads", max_workers=2)
    assert report.ok, report.summary()
    assert sorted(calls) == sorted(files[2:4])
    with xr.open_mfdataset(files[:4], combine="by_coords") as mf:
        _assert_same(store, mf.load())
    assert check(store).complete


def test_saved_index_of_an_earlier_version_is_read_and_rewritten(
    files: list[str], tmp_path
) -> None:
    """Archives of earlier versions keep the entries as plain attributes (``_KEY``); they are
    read, and the next save writes the packed form alone, keeping their entries."""
    store = str(tmp_path / "old.zarr")
    _convert(files[:2], store, 4, global_end="2001-02-13")
    group = zarr.open_group(store, path=_index_store.INDEX_GROUP, mode="r+")
    entries = _index_store._read(group.attrs)
    assert set(entries) == set(files[:2]) and _index_store._KEY not in group.attrs
    group.attrs.put({_index_store._KEY: entries})  # the earlier form
    saved = _index_store.load_saved(store, _sources.expand_sources(files[:2]))
    for spec in saved:
        assert spec.index is not None and spec.index.urls == (spec.path,)
        assert spec.index.stamp is not None
    report = convert(files[:4], store, progress=False)  # fills the archive
    assert report.ok, report.summary()
    attrs = zarr.open_group(store, path=_index_store.INDEX_GROUP, mode="r").attrs
    assert _index_store._KEY not in attrs
    assert set(_index_store._read(attrs)) == set(files[:4])


def test_changed_file_is_indexed_again(files: list[str], tmp_path) -> None:
    src = tmp_path / "one.nc"
    _data("2001-01-01", 11, 0).to_netcdf(src, encoding=_encodings(0))
    spec = _sources.expand_sources(str(src))[0]
    with xr.open_dataset(src, cache=False) as ds:
        idx = _index.index_hdf5(str(src), ds, ["t"])
        assert idx is not None
        assert (
            _sources._index_of(spec.__class__(**{**spec.__dict__, "index": idx}), ds, ["t"]) is idx
        )
    _data("2001-01-01", 11, 0).to_netcdf(src, encoding=_encodings(1))  # rewritten: new layout
    with xr.open_dataset(src, cache=False) as ds:
        fresh = _sources._index_of(spec.__class__(**{**spec.__dict__, "index": idx}), ds, ["t"])
        assert fresh is not None and fresh is not idx
        assert fresh.variables["t"].codecs == ()


@pytest.mark.s3
def test_s3_sources_are_indexed_and_read_by_range(
    files: list[str], tmp_path, s3_url: str, s3_storage_options: dict[str, object]
) -> None:
    import fsspec

    fs = fsspec.filesystem("s3", **s3_storage_options)
    urls = []
    for path in files[:4]:  # the HDF5 ones
        url = f"{s3_url}/src/{path.rsplit('/', 1)[-1]}"
        fs.put(path, url)
        urls.append(url)
    spec = _sources.expand_sources(urls[0], storage_options=s3_storage_options)[0]
    schema = _sources.scan_source(spec, "time", None, None)
    assert schema.index is not None and set(schema.index.variables) == {"t", "p"}
    store = str(tmp_path / "s3src.zarr")
    report = convert(
        f"{s3_url}/src/*.nc",
        store,
        chunks={"time": 4, "lat": -1, "lon": -1},
        template_packing="float",
        source_storage_options=s3_storage_options,
        resume=False,
        progress=False,
        executor="threads",
        max_workers=2,
    )
    assert report.ok, report.summary()
    with xr.open_mfdataset(files[:4], combine="by_coords") as mf:
        _assert_same(store, mf.load())


# --- the h5py scan (no xarray open) gives exactly what the xarray path gives ---------------


def _scans(
    path: str, monkeypatch: pytest.MonkeyPatch, h5py_alone: bool = True, **kw: object
) -> tuple[object, object]:
    """(h5py scan, xarray path scan) of ``path``; the first must not open it through xarray
    (``h5py_alone``), or must (a file the h5py scan leaves to xarray)."""
    spec = _sources.expand_sources(path)[0]
    opened: list[str] = []
    real_open = _sources.open_source

    def counting(s: _sources.SourceSpec, **k: object) -> object:
        opened.append(str(s.path))
        return real_open(s, **k)  # type: ignore[arg-type]

    with monkeypatch.context() as m:
        m.setattr(_sources, "open_source", counting)
        fast = _sources.scan_source(spec, "time", kw.get("variables"), None)  # type: ignore[arg-type]
    assert opened == ([] if h5py_alone else [path])
    with monkeypatch.context() as m:
        m.setattr(_sources, "_scan_h5", lambda *a, **k: None)
        slow = _sources.scan_source(spec, "time", kw.get("variables"), None)  # type: ignore[arg-type]
    return fast, slow


def _rich(start: str, n: int, calendar: str, k: int) -> xr.Dataset:
    time = xr.date_range(start, periods=n, freq="D", calendar=calendar, use_cftime=True)
    rng = np.random.default_rng(k)
    t = (rng.standard_normal((n, NLAT, NLON)) * 5 + 280).astype("float64")
    t[-1, -1, -1] = np.nan
    ds = xr.Dataset(
        {
            "t": (
                ("time", "lat", "lon"),
                t,
                {
                    "units": "K",
                    "long_name": "température",  # non-ASCII text
                    "valid_range": np.array([150.0, 350.0], "f4"),
                    "flag_values": np.array([1], "i2"),  # one element: a scalar
                    "comment": "",
                },
            ),
            "n": (("time",), np.arange(n, dtype="i4") + k * n, {"units": "1"}),
        },
        coords={
            "time": time,
            "lat": ("lat", np.linspace(-60, 60, NLAT), {"units": "degrees_north"}),
            "lon": ("lon", np.linspace(0, 320, NLON), {"standard_name": "longitude"}),
            "height": ((), 2.0, {"units": "m"}),  # scalar coordinate (a "coordinates" attr)
            "step": (("time",), np.arange(n, dtype="f8"), {"units": "h"}),  # along time
        },
        attrs={"title": "rich", "history": "made by a test"},
    )
    ds.t.encoding = {
        "dtype": "int16",
        "scale_factor": 0.01 * (k + 1),  # a packing per file
        "add_offset": 280.0 + k,
        "_FillValue": np.int16(-32767),
        "zlib": True,
        "chunksizes": (3, NLAT, 5),
    }
    ds.time.encoding = {"units": f"days since {start}", "calendar": calendar}
    return ds


@pytest.mark.parametrize("calendar", ["noleap", "360_day", "standard", "proleptic_gregorian"])
def test_h5py_scan_equals_the_xarray_path(
    tmp_path, calendar: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    paths = []
    for k, start in enumerate(["2001-01-01", "2001-01-08"]):
        path = str(tmp_path / f"rich{k}.nc")
        # the second with an unlimited time dimension
        _rich(start, 7, calendar, k).to_netcdf(path, unlimited_dims=["time"] if k else None)
        paths.append(path)
    for path in paths:
        fast, slow = _scans(path, monkeypatch)
        _assert_same_schema(fast, slow)  # type: ignore[arg-type]
    store = str(tmp_path / "out.zarr")
    report = convert(paths, store, chunks={"time": 4}, template_packing="float", progress=False)
    assert report.ok, report.summary()
    with xr.open_mfdataset(paths, combine="by_coords") as mf:
        want = mf.load()
    back = xr.open_zarr(store, chunks=None)
    for name in ("t", "n", "step"):
        assert back[name].values.tobytes() == want[name].values.tobytes(), name
        assert back[name].values[-1:].tobytes() == want[name].values[-1:].tobytes()
    assert list(back.time.values) == list(want.time.values)
    assert back.t.attrs["long_name"] == "température"


def test_h5py_scan_reads_netcdf4_strings_as_netcdf4_python(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import netCDF4

    path = str(tmp_path / "strings.nc")
    with netCDF4.Dataset(path, "w") as nc:
        nc.createDimension("time", None)
        nc.createDimension("x", 3)
        nc.createDimension("nv", 2)  # a dimension without a coordinate variable
        t = nc.createVariable("time", "f8", ("time",))
        t.units, t.calendar = "hours since 2000-01-01", "gregorian"
        t[:] = np.arange(5.0)
        x = nc.createVariable("x", "i4", ("x",))
        x[:] = [10, 20, 30]
        v = nc.createVariable("v", "f4", ("time", "x"), fill_value=np.float32(-999.0))
        v.setncattr_string("flag_meanings", ["low", "high"])  # NC_STRING, two values
        v.setncattr_string("source", "one string")  # NC_STRING, one value
        v.setncattr("note", "plain char")  # NC_CHAR
        v.missing_value = np.float32(-999.0)
        v.scalar_int = np.int64(7)
        v.list_float = [1.5, 2.5]
        v[:] = np.arange(15, dtype="f4").reshape(5, 3)
        b = nc.createVariable("bounds", "f8", ("time", "nv"))
        b[:] = np.zeros((5, 2))
    fast, slow = _scans(path, monkeypatch)
    _assert_same_schema(fast, slow)  # type: ignore[arg-type]
    with netCDF4.Dataset(path, "a") as nc:
        nc["v"].setncattr("note", "char\x00padded")  # a NUL inside: HDF5 would cut it there
        nc["v"].setncattr("empty", "")
    fast, slow = _scans(path, monkeypatch)
    _assert_same_schema(fast, slow)  # type: ignore[arg-type]
    assert fast.data_vars["v"].attrs["note"] == "charpadded"  # type: ignore[attr-defined]


def test_mixed_packed_netcdf3_and_netcdf4_scans(tmp_path, monkeypatch: pytest.MonkeyPatch) -> None:
    from tests._packed_sources import packed_source

    paths = []
    for k, fmt in enumerate(["NETCDF4", "NETCDF3_64BIT", "NETCDF4"]):
        path = str(tmp_path / f"p{k}.nc")
        packed_source(k, 250.0 - k, 300.0 + k).to_netcdf(path, format=fmt)
        paths.append(path)
    for path in (paths[0], paths[2]):
        fast, slow = _scans(path, monkeypatch)
        _assert_same_schema(fast, slow)  # type: ignore[arg-type]
    nc3 = _sources.scan_source(_sources.expand_sources(paths[1])[0], "time", None, None)
    assert nc3.index is None  # NetCDF3: read through xarray
    store = str(tmp_path / "out.zarr")
    report = convert(paths, store, template_packing="float", progress=False)
    assert report.ok, report.summary()
    with xr.open_mfdataset(paths, combine="by_coords") as mf:
        want = mf.t2m.values
    assert xr.open_zarr(store, chunks=None).t2m.values.tobytes() == want.tobytes()


def test_packing_auto_reads_encodings_from_the_index(
    tmp_path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """template_packing="auto" decides from the scan's index: no file is opened again."""
    from tests._packed_sources import decoded, write_sources

    paths = write_sources(tmp_path, ((250.0, 300.0), (250.0, 300.0)))  # one shared packing
    opened: list[str] = []
    real_open = _sources.open_source

    def counting(s: _sources.SourceSpec, **k: object) -> object:
        opened.append(str(s.path))
        return real_open(s, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(_sources, "open_source", counting)
    for module in ("_packing", "_prepare"):
        mod = importlib.import_module(f"xarray_zarrwrite.convert.{module}")
        monkeypatch.setattr(mod, "open_source", counting)
    store = str(tmp_path / "out.zarr")
    report = convert(paths, store, progress=False, executor="threads", max_workers=2)
    assert report.ok, report.summary()
    assert opened == [paths[0]]  # the template's example only
    back = xr.open_zarr(store, chunks=None)
    assert back.t2m.encoding["dtype"] == np.dtype("int16")  # "first": the shared packing
    want = decoded(paths).t2m.values
    assert back.t2m.values.tobytes() == want.tobytes()
