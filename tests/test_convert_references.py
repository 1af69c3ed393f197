"""Reference sources: kerchunk references (JSON and parquet, made by kerchunk's own HDF5
scanner) and VirtualiZarr virtual datasets, converted through the byte-range path and compared
bit for bit with ``xr.open_mfdataset`` of the files they point into."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xarray_zarrwrite.convert import _references, _sources, convert

kerchunk_hdf = pytest.importorskip("kerchunk.hdf", reason="kerchunk (Python >= 3.12 stack)")


def _file(path: str, start: str, k: int) -> str:
    time = pd.date_range(start, periods=9, freq="D")
    rng = np.random.default_rng(k)
    t = (rng.standard_normal((9, 5, 6)) * 4 + 280).astype("float32")
    t[-1, -1, -1] = np.nan
    ds = xr.Dataset(
        {"t": (("time", "lat", "lon"), t, {"units": "K"})},
        coords={"time": time, "lat": np.arange(5.0), "lon": np.arange(6.0)},
    )
    enc = {
        "t": {"zlib": True, "shuffle": True, "chunksizes": (4, 5, 4)},
    }
    if k == 1:  # packed, with its own scale and offset
        # missing_value, not _FillValue: kerchunk 0.2.9's HDF5 scanner cannot encode the
        # 1-element _FillValue attribute netCDF writes under NumPy >= 2.5 (int() of a 1-d
        # array); it drops the variable with a warning. Not ours to fix; the packed path is
        # the same either way (both mark the value missing)
        enc["t"] = {
            "dtype": "int16",
            "scale_factor": 0.01 * (k + 1),
            "add_offset": 270.0,
            "missing_value": np.int16(-32767),  # = the HDF5 fill value netCDF sets
            "chunksizes": (2, 5, 6),
            "zlib": True,
        }
    ds.to_netcdf(path, engine="netcdf4", encoding=enc)
    return path


@pytest.fixture(scope="module")
def nc_files(tmp_path_factory: pytest.TempPathFactory) -> list[str]:
    d = tmp_path_factory.mktemp("refs")
    return [_file(str(d / f"f{k}.nc"), f"2002-03-{1 + 9 * k:02d}", k) for k in range(3)]


def _refs(path: str) -> dict[str, object]:
    with warnings.catch_warnings():
        # older kerchunk releases warn (NumPy deprecations) while scanning: not ours to fix
        warnings.simplefilter("ignore", DeprecationWarning)
        return dict(kerchunk_hdf.SingleHdf5ToZarr(path, inline_threshold=0).translate())


def _convert(sources: object, store: str) -> xr.Dataset:
    report = convert(
        sources,
        store,
        chunks={"time": 3, "lat": -1, "lon": -1},
        template_packing="float",
        resume=False,
        progress=False,
        executor="threads",
        max_workers=2,
    )
    assert report.ok, report.summary()
    return xr.open_zarr(store, chunks=None)


def _expected(nc_files: list[str]) -> xr.Dataset:
    with xr.open_mfdataset(nc_files, combine="by_coords") as mf:
        return mf.load()


def _same(back: xr.Dataset, want: xr.Dataset) -> None:
    assert back.t.dtype == want.t.dtype
    assert back.t.values.tobytes() == want.t.values.tobytes()
    np.testing.assert_array_equal(back.time.values, want.time.values)


def test_kerchunk_json_references(nc_files: list[str], tmp_path) -> None:
    paths = []
    for k, f in enumerate(nc_files):
        p = tmp_path / f"r{k}.json"
        p.write_text(json.dumps(_refs(f)))
        paths.append(str(p))
    specs = _sources.expand_sources(paths)
    assert {s.engine for s in specs} == {_references.ENGINE}
    _same(_convert(str(tmp_path / "r*.json"), str(tmp_path / "a.zarr")), _expected(nc_files))


def test_kerchunk_references_are_read_by_byte_range(nc_files: list[str], tmp_path) -> None:
    p = tmp_path / "one.json"
    p.write_text(json.dumps(_refs(nc_files[1])))
    spec = _sources.expand_sources(str(p))[0]
    schema = _sources.scan_source(spec, "time", None, None)
    assert schema.index is not None and set(schema.index.variables) >= {"t"}
    assert schema.index.urls == (nc_files[1],)


@pytest.mark.filterwarnings("ignore:The 'fastparquet' engine is deprecated")
def test_kerchunk_parquet_references(nc_files: list[str], tmp_path) -> None:
    pytest.importorskip("fastparquet", reason="parquet references need fastparquet")
    from kerchunk.df import refs_to_dataframe

    paths = []
    for k, f in enumerate(nc_files):
        out = str(tmp_path / f"r{k}.parq")
        refs_to_dataframe(_refs(f), out)
        paths.append(out)
    assert all(_references.is_reference_path(p) for p in paths)
    _same(_convert(paths, str(tmp_path / "b.zarr")), _expected(nc_files))


def test_virtualizarr_datasets_and_a_file_in_the_mix(nc_files: list[str], tmp_path) -> None:
    vz = pytest.importorskip("virtualizarr")
    pytest.importorskip("obstore")
    from obstore.store import LocalStore
    from virtualizarr.parsers import HDFParser

    try:
        from obspec_utils.registry import ObjectStoreRegistry
    except ImportError:
        from virtualizarr.registry import ObjectStoreRegistry

    registry = ObjectStoreRegistry({"file://": LocalStore()})
    virtual = [
        vz.open_virtual_dataset(
            f"file://{f}",
            registry=registry,
            parser=HDFParser(),
            loadable_variables=["time", "lat", "lon"],
        )
        for f in nc_files[:2]
    ]
    assert all(_references.is_virtual_dataset(v) for v in virtual)
    _same(_convert([*virtual, nc_files[2]], str(tmp_path / "c.zarr")), _expected(nc_files))
