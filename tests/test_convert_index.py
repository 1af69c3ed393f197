"""convert() through the byte-range index: every layout the index reads (chunked with
shuffle/zlib/fletcher32, contiguous, partial edge chunks, CF-packed with per-file scale and
offset, NaN and _FillValue, unallocated chunks) compared bit for bit with ``xr.open_mfdataset``
and with the xarray path; NetCDF3 sources in the mix fall back per source; the index kept in
the archive is reused on resume and invisible to plain zarr/xarray readers."""

from __future__ import annotations

import warnings

import h5py
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr

from xarray_zarrwrite._check import check
from xarray_zarrwrite.convert import _index, _index_store, _sources, convert
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
    real = _index.index_hdf5

    def counting(path: str, *a: object, **k: object) -> object:
        calls.append(path)
        return real(path, *a, **k)  # type: ignore[arg-type]

    monkeypatch.setattr(_sources, "index_hdf5", counting)
    # two more sources (resumed with the archive's own options): only those are indexed
    report = convert(files[:4], store, progress=False, executor="threads", max_workers=2)
    assert report.ok, report.summary()
    assert sorted(calls) == sorted(files[2:4])
    with xr.open_mfdataset(files[:4], combine="by_coords") as mf:
        _assert_same(store, mf.load())
    assert check(store).complete


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
