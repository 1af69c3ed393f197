"""packing= in templates: CF scale/offset integers and the bitpack codec, end to end."""

from __future__ import annotations

import json

import numpy as np
import pytest
import xarray as xr

import xarray_zarrwrite  # noqa: F401
from xarray_zarrwrite.errors import PackingError
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.snapshot import snapshot

YEAR = era5_like("2000-01-01", 60)


def quantum(vmin, vmax, bits):
    return (vmax - vmin) / (2**bits - 2)


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("bits", [8, 12, 16, 24])
def test_cf_packing_range_from_data(tmp_path, bits, zarr_format):
    path = tmp_path / "p.zarr"
    YEAR.fastzarr.to_template(
        path, chunks={"time": 10}, packing={"bits": bits}, zarr_format=zarr_format
    )
    tmpl = xr.open_zarr(path)
    assert np.isnan(tmpl.t2m.isel(time=-1, lat=-1, lon=-1).values)  # unwritten: NaN, not offset
    YEAR.isel(time=slice(0, 30)).fastzarr.write_region(path)
    back = xr.open_zarr(path).isel(time=slice(0, 30)).load()
    for name in ("t2m", "tcwv"):
        src = YEAR[name].isel(time=slice(0, 30))
        vmin, vmax = float(YEAR[name].min()), float(YEAR[name].max())
        assert back[name].encoding["dtype"].kind == "i"
        err = float(abs(back[name] - src).max())
        assert err <= quantum(vmin, vmax, bits) / 2 * (1 + 1e-6) + 1e-4  # + float32 rounding
    # the range maximum stays a value (never the fill)
    imax = np.unravel_index(int(np.argmax(YEAR.t2m.values)), YEAR.t2m.shape)
    if imax[0] < 30:
        assert np.isfinite(back.t2m.values[imax])


def test_cf_packing_explicit_range_attrs_and_fill(tmp_path):
    path = tmp_path / "p.zarr"
    ds = YEAR.copy()
    ds["tcwv"].attrs.update(valid_min=200.0, valid_max=320.0)
    ds.isel(time=slice(0, 5)).fastzarr.to_template(
        path,
        global_end=ds.time[-1].values,
        chunks={"time": 10},
        packing={"t2m": {"bits": 16, "valid_range": (180, 340)}, "tcwv": {"bits": 16}},
    )
    meta = json.loads((path / "t2m" / "zarr.json").read_text())
    assert meta["data_type"] == "int16"
    assert meta["fill_value"] == -32768
    assert meta["attributes"]["valid_min"] == 180.0
    assert meta["attributes"]["valid_max"] == 340.0
    attrs = json.loads((path / "tcwv" / "zarr.json").read_text())["attributes"]
    assert (attrs["valid_min"], attrs["valid_max"]) == (200.0, 320.0)
    # exactly the range maximum and minimum are real values
    edge = ds.isel(time=slice(0, 10)).copy(deep=True)
    edge.t2m.values[0, 0, 0], edge.t2m.values[0, 0, 1] = 340.0, 180.0
    edge.fastzarr.write_region(path)
    back = xr.open_zarr(path).t2m.isel(time=0, lat=0).values
    np.testing.assert_allclose(back[:2], [340.0, 180.0], atol=(160 / 65534) / 2 + 1e-4)
    # NaN in the data round-trips as NaN
    hole = ds.isel(time=slice(10, 20)).copy(deep=True)
    hole.t2m.values[3, 2, 1] = np.nan
    hole.fastzarr.write_region(path)
    assert np.isnan(xr.open_zarr(path).t2m.values[13, 2, 1])


def test_out_of_range_raises_or_clips_never_wraps(tmp_path):
    path = tmp_path / "p.zarr"
    YEAR.isel(time=slice(0, 5)).fastzarr.to_template(
        path,
        global_end=YEAR.time[-1].values,
        chunks={"time": 10},
        packing={"t2m": {"bits": 16, "valid_range": (240, 300)}},
    )
    hot = YEAR.isel(time=slice(0, 10)).copy(deep=True)
    hot.t2m.values[0, 0, 0] = 300.78
    hot.t2m.values[0, 0, 1] = 100.0
    before = snapshot(path)
    with pytest.raises(PackingError, match=r"2 value\(s\) of 't2m' fall outside"):
        hot.fastzarr.write_region(path)
    assert snapshot(path) == before
    with pytest.raises(PackingError):
        hot.chunk(time=10).fastzarr.write_region(path)  # dask: checked on the workers
    hot.fastzarr.write_region(path, on_out_of_range="clip")
    back = xr.open_zarr(path).t2m.isel(time=0, lat=0).values
    q = quantum(240, 300, 16) / 2 + 1e-4
    np.testing.assert_allclose(back[:2], [300.0, 240.0], atol=q)  # clipped, not wrapped


def test_bitpack_packing_selects_codec(tmp_path):
    path = tmp_path / "b.zarr"
    YEAR.fastzarr.to_template(
        path,
        chunks={"time": 10},
        packing={"codec": "bitpack", "max_error": 0.01},
        compression="zstd:3",
    )
    codecs = json.loads((path / "t2m" / "zarr.json").read_text())["codecs"]
    assert codecs[0]["name"] == "xarray_zarrwrite.bitpack"
    assert codecs[1]["name"] == "zstd"
    YEAR.fastzarr.write_region(path)
    back = xr.open_zarr(path).load()
    assert float(abs(back.t2m - YEAR.t2m).max()) <= 0.01


@pytest.mark.parametrize(
    "packing",
    [
        {"bits": 1},
        {"bits": 40},
        {"bits": True},
        {"bits": 16, "max_error": 0.1},
        {"codec": "bitpack"},
        {"codec": "zfp", "bits": 8},
        {"codec": "bitpack", "bits": 8, "max_error": 0.1},
        {"codec": "bitpack", "max_error": float("nan")},
        {"t2m": {"bits": 16, "valid_range": (300, 200)}},
        {"t2m": {"bits": 16, "valid_range": "wide"}},
        {"t2m": {"bitz": 16}},
        {"nope": {"bits": 16}},
        "16 bits",
    ],
)
def test_bad_packing_writes_nothing(tmp_path, packing):
    path = tmp_path / "p.zarr"
    with pytest.raises(PackingError):
        YEAR.fastzarr.to_template(path, packing=packing)
    assert snapshot(path) == {}


def test_packing_non_float_variable_refused(tmp_path):
    ds = YEAR.assign(mask=(("lat", "lon"), np.ones((12, 24), "i2")))
    with pytest.raises(PackingError, match="only floats"):
        ds.fastzarr.to_template(tmp_path / "p", packing={"mask": {"bits": 8}})
