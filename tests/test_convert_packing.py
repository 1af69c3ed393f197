"""convert() of sources that carry their own packing (CDS/ERA5 int16 with per-file
scale_factor/add_offset): each decoded with its own packing and re-encoded into the
template's; template_packing= and encoding= decide that packing, and sources that do not fit
are refused before anything is written."""

from __future__ import annotations

import numpy as np
import pytest
import xarray as xr
import zarr
from _packed_sources import RANGES, assert_within, decoded, write_sources

from xarray_zarrwrite.convert import convert
from xarray_zarrwrite.errors import ConvertOptionError, InputError, PackingError
from xarray_zarrwrite.testing.snapshot import snapshot

KW = {"progress": False, "max_workers": 0, "chunks": {"time": 2}}


@pytest.fixture
def paths(tmp_path) -> list[str]:
    return write_sources(tmp_path)


def tolerance(encoding: dict) -> float:
    return float(encoding["scale_factor"]) / 2 * (1 + 1e-9) + 1e-12


@pytest.mark.parametrize("zarr_format", [2, 3])
@pytest.mark.parametrize("mode", ["auto", "scan"])
def test_differing_packings_scanned_into_one(tmp_path, paths, zarr_format, mode):
    store = tmp_path / "out.zarr"
    report = convert(paths[::-1], store, template_packing=mode, zarr_format=zarr_format, **KW)
    assert report.status == "complete"
    back = xr.open_zarr(store)
    enc = back.t2m.encoding
    assert enc["dtype"] == np.dtype("int16")
    expected = decoded(paths).t2m
    lo, hi = float(expected.min()), float(expected.max())  # as each file decodes
    assert lo == pytest.approx(min(r[0] for r in RANGES), abs=0.01)
    assert hi == pytest.approx(max(r[1] for r in RANGES), abs=0.01)
    assert enc["add_offset"] - 32767 * enc["scale_factor"] == pytest.approx(lo, abs=1e-9)
    assert enc["add_offset"] + 32767 * enc["scale_factor"] == pytest.approx(hi, abs=1e-9)
    assert_within(back.t2m.load(), expected, tolerance(enc))
    # the third file's fine quantum is not the template's: values really were re-encoded
    raw = zarr.open_array(store / "t2m", mode="r")[...]
    fill = raw == enc["_FillValue"]
    assert fill.sum() == 3  # one NaN per file, never a number
    assert raw.dtype == np.int16 and raw[~fill].min() == -32767 and raw[~fill].max() == 32767


def test_first_refuses_a_later_source_before_writing(tmp_path, paths):
    store = tmp_path / "out.zarr"
    store.mkdir()
    (store / "keep.txt").write_text("foreign")
    before = snapshot(store)
    with pytest.raises(
        PackingError, match=r"cds_1\.nc.*200\.001 \.\. 319\.999, outside the 249\.999 \.\. 300"
    ):
        convert(paths, store, template_packing="first", resume=False, **KW)
    assert snapshot(store) == before


def test_first_keeps_a_shared_packing_without_scanning(tmp_path):
    paths = write_sources(tmp_path, ((250.0, 300.0),) * 3)
    store = tmp_path / "out.zarr"
    convert(paths, store, **KW)
    back = xr.open_zarr(store)
    with xr.open_dataset(paths[0]) as first:
        assert back.t2m.encoding["scale_factor"] == first.t2m.encoding["scale_factor"]
        assert back.t2m.encoding["add_offset"] == first.t2m.encoding["add_offset"]
    # the same codes: decoded values equal bit for bit
    expected = decoded(paths).t2m
    assert back.t2m.values.tobytes() == expected.values.tobytes()


def test_float_stores_the_decoded_values_exactly(tmp_path, paths):
    store = tmp_path / "out.zarr"
    convert(paths, store, template_packing="float", **KW)
    back = xr.open_zarr(store).t2m
    expected = decoded(paths).t2m
    assert back.dtype == expected.dtype and "scale_factor" not in back.encoding
    assert back.values.tobytes() == expected.values.tobytes()


def test_mixed_packed_and_float_sources_default_to_float(tmp_path, paths):
    floats = tmp_path / "float.nc"
    extra = decoded([paths[1]]).assign_coords(time=lambda d: d.time + np.timedelta64(10, "D"))
    extra.t2m.encoding = {}
    extra.to_netcdf(floats)
    sources = [*paths, str(floats)]
    store = tmp_path / "out.zarr"
    convert(sources, store, **KW)
    back = xr.open_zarr(store).t2m
    assert back.dtype == np.float64 and "scale_factor" not in back.encoding
    assert back.values.tobytes() == decoded(sources).t2m.values.tobytes()


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_encoding_replaces_the_inherited_encoding(tmp_path, paths, zarr_format):
    store = tmp_path / "out.zarr"
    enc = {"dtype": "int32", "scale_factor": 1e-4, "add_offset": 250.0, "_FillValue": -(2**31)}
    convert(
        paths,
        store,
        encoding={
            "t2m": {**enc, "chunks": (3, 3, 2)},
            "time": {"units": "hours since 1999-12-31", "dtype": "int64"},
        },
        zarr_format=zarr_format,
        **{**KW, "chunks": None},
    )
    back = xr.open_zarr(store)
    got = back.t2m.encoding
    assert got["dtype"] == np.dtype("int32") and got["scale_factor"] == 1e-4
    assert got["add_offset"] == 250.0 and "missing_value" not in got
    assert back.t2m.encoding["chunks"] == (3, 3, 2)
    assert back.time.encoding["units"] == "hours since 1999-12-31"
    assert_within(back.t2m.load(), decoded(paths).t2m, 0.5e-4 * (1 + 1e-6))


def test_encoding_too_small_for_a_source_is_refused(tmp_path, paths):
    store = tmp_path / "out.zarr"
    small = {"dtype": "int16", "scale_factor": 1e-3, "add_offset": 275.0, "_FillValue": -32768}
    with pytest.raises(
        PackingError,
        match=r"cds_1\.nc.*200\.001 \.\. 319\.999, outside the 242\.233 \.\. 307\.767.*encoding=",
    ):
        convert(paths, store, encoding={"t2m": small}, **KW)
    assert snapshot(store) == {}  # not a file written


def test_reused_template_refuses_sources_and_encodings_that_do_not_fit(tmp_path, paths):
    store = tmp_path / "out.zarr"
    end = decoded(paths).time.values[-1]
    convert(paths[:1], store, global_end=end, **KW)
    before = snapshot(store)
    with pytest.raises(PackingError, match=r"cds_1\.nc.*existing template"):
        convert(paths, store, **KW)
    for enc, match in [
        ({"t2m": {"dtype": "int32"}}, "int32"),
        ({"t2m": {"scale_factor": 0.5}}, "scale_factor"),
        ({"tp": {"dtype": "int16"}}, "tp"),
    ]:
        with pytest.raises(InputError, match=match):  # ArchiveMismatchError or ours
            convert(paths, store, encoding=enc, **KW)
    assert snapshot(store) == before
    same = xr.open_zarr(store).t2m.encoding
    keep = {k: same[k] for k in ("dtype", "scale_factor", "add_offset")}
    convert(paths[:1], store, encoding={"t2m": keep}, **KW)  # what it has: accepted
    assert_within(
        xr.open_zarr(store).t2m.isel(time=slice(0, 5)).load(),
        decoded(paths[:1]).t2m,
        tolerance(same),
    )


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"template_packing": "smallest"}, "template_packing must be one of"),
        ({"encoding": {"t2m": {"scale": 1}}}, "unsupported keys"),
        ({"encoding": ["t2m"]}, "must be a mapping"),
        ({"encoding": {"t2m": 16}}, "must be a mapping"),
        ({"encoding": {"nope": {"dtype": "int16"}}}, "the sources do not have"),
        ({"encoding": {"t2m": {"chunks": (4, 3, 4)}}}, "chunks must agree"),
        ({"encoding": {"t2m": {"chunks": (4, 3)}}}, "one size for each"),
    ],
)
def test_bad_options_write_nothing(tmp_path, paths, kw, match):
    store = tmp_path / "out.zarr"
    with pytest.raises(ConvertOptionError, match=match):
        convert(paths, store, **{**KW, **kw})
    assert snapshot(store) == {}


def test_scan_runs_on_the_workers_of_a_dask_client(tmp_path, paths):
    distributed = pytest.importorskip("distributed")
    store = tmp_path / "out.zarr"
    with (
        distributed.LocalCluster(
            n_workers=1, threads_per_worker=2, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        report = convert(paths, store, client=client, progress=False, chunks={"time": 2})
        probed = [k for k in client.run_on_scheduler(_task_prefixes) if "xzw-probe" in k]
    assert report.status == "complete" and probed
    back = xr.open_zarr(store)
    assert back.t2m.encoding["dtype"] == np.dtype("int16")
    assert_within(back.t2m.load(), decoded(paths).t2m, tolerance(back.t2m.encoding))
    with pytest.raises(PackingError, match=r"cds_1\.nc"):
        with (
            distributed.LocalCluster(
                n_workers=1, threads_per_worker=1, processes=False, dashboard_address=":0"
            ) as cluster,
            distributed.Client(cluster) as client,
        ):
            convert(paths, tmp_path / "b.zarr", client=client, template_packing="first", **KW)


def _task_prefixes(dask_scheduler) -> list[str]:
    return list(dask_scheduler.task_prefixes)
