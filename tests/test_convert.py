"""convert(): many sources -> one archive, planned by output chunks; every test reads back and
compares bit for bit."""

from __future__ import annotations

import os
import pathlib
import pickle
import random
import signal
import subprocess
import sys
import textwrap
import uuid
import zlib

import numpy as np
import pandas as pd
import pytest
import xarray as xr
from zarr.storage import LocalStore, MemoryStore

from xarray_zarrwrite._check import check
from xarray_zarrwrite._open import load_template
from xarray_zarrwrite._store import resolve_store
from xarray_zarrwrite.api import to_template
from xarray_zarrwrite.convert import (
    ConvertReport,
    convert,
    expand_sources,
    plan_tasks,
)
from xarray_zarrwrite.convert import _partial as conv
from xarray_zarrwrite.convert import _task as conv_task
from xarray_zarrwrite.convert._plan import PEAK_FACTOR
from xarray_zarrwrite.convert._prepare import _payload
from xarray_zarrwrite.errors import (
    DimensionMismatchError,
    DtypeCastError,
    RegionError,
    RegionLabelError,
    TemplateError,
    VariableNotInTemplateError,
    WriteFailedError,
)
from xarray_zarrwrite.testing.datasets import era5_like
from xarray_zarrwrite.testing.faults import FaultyStore
from xarray_zarrwrite.testing.snapshot import snapshot

NLAT, NLON = 6, 8
YEARS = (2000, 2001, 2002, 2003)


# -- helpers ----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def full() -> xr.Dataset:
    """Four years of daily data (1461 steps), two variables, small grid."""
    return era5_like("2000-01-01", 1461, nlat=NLAT, nlon=NLON)


def write_files(ds: xr.Dataset, directory: pathlib.Path, bounds, *, fmt="{:%Y-%m-%d}.nc", **kw):
    """Write ``ds`` split at positions ``bounds`` into NetCDF files; returns the paths."""
    directory.mkdir(parents=True, exist_ok=True)
    paths = []
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        part = ds.isel(time=slice(a, b))
        path = directory / fmt.format(pd.Timestamp(part.time.values[0]))
        part.to_netcdf(path, **kw)
        paths.append(str(path))
    return paths


def year_bounds(ds: xr.Dataset) -> list[int]:
    years = pd.DatetimeIndex(ds.time.values).year
    return [0, *(np.flatnonzero(np.diff(years)) + 1).tolist(), ds.sizes["time"]]


def day(i: int) -> str:
    """The label of archive position ``i`` (daily from 2000-01-01)."""
    return f"{pd.Timestamp('2000-01-01') + pd.Timedelta(days=i):%Y-%m-%d}"


@pytest.fixture(scope="module")
def yearly(full, tmp_path_factory) -> list[str]:
    return write_files(full, tmp_path_factory.mktemp("yearly"), year_bounds(full))


def assert_bit_identical(store, expected: xr.Dataset) -> None:
    """The archive equals ``expected`` exactly: values as bytes, labels, attributes."""
    back = xr.open_zarr(store, chunks=None).load()
    xr.testing.assert_identical(back, expected)
    for name, var in expected.variables.items():
        a, b = np.asarray(back[name].values), np.asarray(var.values)
        if a.dtype.kind == "M":  # NetCDF decoding picks its own datetime unit
            a, b = a.astype("M8[ns]"), b.astype("M8[ns]")
        assert a.dtype == b.dtype, name
        assert a.tobytes() == b.tobytes(), f"{name} differs bit for bit"


def run(sources, store, **kw) -> ConvertReport:
    kw.setdefault("progress", False)
    return convert(sources, store, **kw)


def corrupt_netcdf_chunk(path: str, ds: xr.Dataset, var: str, start: int, stop: int) -> None:
    """Overwrite bytes of the zlib-compressed chunk holding steps start:stop of ``var``."""
    raw = pathlib.Path(path).read_bytes()
    block = np.ascontiguousarray(ds[var].values[start:stop]).tobytes()
    at = raw.find(zlib.compress(block, 4))
    assert at > 0, "compressed chunk not found"
    with open(path, "r+b") as f:
        f.seek(at + 10)
        f.write(b"\xff" * 64)


class KillingStore(LocalStore):
    """A LocalStore whose first write of ``kill_key`` dies half-way: it writes half of the
    bytes to the temporary file LocalStore would use, then SIGKILLs its process (``"self"``)
    or its whole process group (``"group"``: the run, its pool and its forkserver)."""

    def __init__(self, root, *, kill_key: str, marker: str, scope: str = "self", **kw) -> None:
        super().__init__(root, **kw)
        self.kill_key, self.marker, self.scope = kill_key, marker, scope

    def with_read_only(self, read_only: bool = False) -> KillingStore:
        return type(self)(
            self.root,
            kill_key=self.kill_key,
            marker=self.marker,
            scope=self.scope,
            read_only=read_only,
        )

    async def set(self, key, value) -> None:
        if key == self.kill_key and not os.path.exists(self.marker):
            pathlib.Path(self.marker).write_text(str(os.getpid()))
            path = self.root / key
            path.parent.mkdir(parents=True, exist_ok=True)
            data = value.to_bytes()
            path.with_suffix(f".{uuid.uuid4().hex}.partial").write_bytes(data[: len(data) // 2])
            if self.scope == "group":
                os.killpg(os.getpgid(0), signal.SIGKILL)
            os.kill(os.getpid(), signal.SIGKILL)
        await super().set(key, value)


def existing_chunks_match(path, expected: xr.Dataset, names=("t2m", "tcwv")) -> int:
    """Every chunk object present decodes to exactly the expected data; returns how many."""
    status = check(path)
    back = xr.open_zarr(path, chunks=None)
    n = 0
    for name in names:
        v = status.variables[name]
        c = v.chunks[0]
        missing = {idx[0] for idx in v.missing_chunks}
        for b in range(-(-v.shape[0] // c)):
            got = back[name].isel(time=slice(b * c, (b + 1) * c)).values
            if b in missing:
                assert np.isnan(got).all(), "an unwritten chunk must read as fill value"
            else:
                want = expected[name].isel(time=slice(b * c, (b + 1) * c)).values
                assert got.tobytes() == want.tobytes()
                n += 1
    return n


# -- bit-identical results ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("layout", "chunk"),
    [("aligned", 100), ("yearly", 100), ("yearly", 73), ("monthly", 30)],
)
def test_boundaries_aligned_and_misaligned(tmp_path, full, layout, chunk):
    if layout == "aligned":
        bounds = [0, 400, 700, 1000, full.sizes["time"]]  # every boundary on a chunk boundary
    elif layout == "yearly":
        bounds = year_bounds(full)
    else:
        sub = full.isel(time=slice(0, 366))
        months = pd.DatetimeIndex(sub.time.values).month
        bounds = [0, *(np.flatnonzero(np.diff(months)) + 1).tolist(), 366]
        full = sub
    files = write_files(full, tmp_path / "src", bounds)
    store = tmp_path / "out.zarr"
    report = run(files, store, chunks={"time": chunk}, max_workers=2)
    assert report.ok and report.failed == 0
    assert report.written == report.ntasks
    assert {s.status for s in report.sources} == {"written"}
    assert report.nbytes == full.t2m.nbytes + full.tcwv.nbytes
    assert_bit_identical(store, full)
    assert check(store).complete


def test_sources_in_random_order(tmp_path, full, yearly):
    files = list(yearly)
    random.Random(7).shuffle(files)
    store = tmp_path / "out.zarr"
    report = run(files, store, chunks={"time": 100}, max_workers=0)
    assert [s.source for s in report.sources] == sorted(yearly)  # reported in time order
    assert_bit_identical(store, full)


def test_serial_and_pool_write_the_same_bytes(tmp_path, yearly):
    a, b = tmp_path / "a.zarr", tmp_path / "b.zarr"
    run(yearly, a, chunks={"time": 100}, max_workers=0)
    run(yearly[::-1], b, chunks={"time": 100}, max_workers=2, start_method="spawn")
    assert snapshot(a) == snapshot(b)


def test_dataset_and_zarr_sources(tmp_path, full):
    parts = [full.isel(time=slice(a, b)) for a, b in [(0, 300), (300, 800), (800, 1461)]]
    nc = tmp_path / "p1.nc"
    parts[1].to_netcdf(nc)
    zr = tmp_path / "p2.zarr"
    parts[2].to_zarr(zr, zarr_format=3, consolidated=False)
    sources = [parts[0], xr.open_dataset(nc), str(zr)]
    store = tmp_path / "out.zarr"
    report = run(sources, store, chunks={"time": 64}, max_workers=0)
    assert report.ok
    assert [s.source for s in report.sources] == ["<Dataset #0>", str(nc), str(zr)]
    assert_bit_identical(store, full)


def test_h5netcdf_engine(tmp_path, full, yearly):
    pytest.importorskip("h5py")
    store = tmp_path / "out.zarr"
    assert run(yearly, store, chunks={"time": 100}, engine="h5netcdf", max_workers=0).ok
    assert_bit_identical(store, full)


@pytest.mark.parametrize("kind", ["netcdf", "zarr"])
def test_fsspec_url_sources_with_glob(tmp_path, full, kind):
    fsspec = pytest.importorskip("fsspec")
    fs = fsspec.filesystem("memory")
    root = f"/src-{uuid.uuid4().hex[:8]}"
    bounds = year_bounds(full)
    for y, a, b in zip(YEARS, bounds[:-1], bounds[1:], strict=True):
        part = full.isel(time=slice(a, b))
        if kind == "netcdf":
            local = tmp_path / f"y{y}.nc"
            part.to_netcdf(local)
            fs.pipe(f"{root}/y{y}.nc", local.read_bytes())
        else:
            part.to_zarr(f"memory://{root}/y{y}.zarr", zarr_format=3, consolidated=True)
    pattern = f"memory://{root}/y*.nc" if kind == "netcdf" else f"memory://{root}/y*.zarr"
    engine = "netcdf4" if kind == "netcdf" else None
    store = tmp_path / "out.zarr"
    report = run(pattern, store, chunks={"time": 100}, engine=engine, max_workers=0)
    names = [s.source.rsplit("/", 1)[-1] for s in report.sources]
    assert names == [f"y{y}.{'nc' if kind == 'netcdf' else 'zarr'}" for y in YEARS]
    assert_bit_identical(store, full)


def test_remote_target_and_variables(tmp_path, yearly, full, memory_url):
    report = run(yearly, memory_url, chunks={"time": 100}, variables=["t2m"], max_workers=0)
    assert report.ok
    assert_bit_identical(memory_url, full[["t2m"]])
    assert check(memory_url).complete


# -- a real LocalCluster ------------------------------------------------------------------------


# Function scope: a Client is the process-wide default scheduler while it lives; kept open
# across tests, it would turn other tests' local-scheduler computes into distributed ones.
@pytest.fixture
def client():
    distributed = pytest.importorskip("distributed")
    with (
        distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            dashboard_address=":0",
            memory_limit="2GiB",
        ) as cluster,
        distributed.Client(cluster) as c,
    ):
        yield c


def test_local_cluster_30_runs_bit_identical(tmp_path, full, yearly, client):
    reference = tmp_path / "ref.zarr"
    report = run(yearly, reference, chunks={"time": 100}, client=client)
    assert report.ok
    assert report.executor.startswith("dask.distributed")
    assert len(report.workers) == 2  # both workers did tasks
    for w in report.workers:
        assert 20 * 2**20 < w.peak_rss < 2 * 2**30
        assert w.memory_limit == 2 * 2**30
    assert_bit_identical(reference, full)
    want = snapshot(reference)
    for i in range(29):
        store = tmp_path / f"run{i}.zarr"
        files = list(yearly)
        random.Random(i).shuffle(files)
        assert run(files, store, chunks={"time": 100}, client=client).ok
        assert snapshot(store) == want, f"run {i + 2} differs"


def test_local_cluster_by_address_and_small_payloads(tmp_path, full, yearly, client):
    store = tmp_path / "out.zarr"
    report = run(yearly, store, chunks={"time": 100}, client=client.scheduler.address)
    assert report.ok
    assert_bit_identical(store, full)
    # what goes to a worker is a description of the work, not data
    info = load_template(resolve_store(str(store)))
    specs = expand_sources(yearly)
    plan = plan_tasks(
        info,
        [
            np.arange(a, b)
            for a, b in zip(year_bounds(full)[:-1], year_bounds(full)[1:], strict=True)
        ],
        time_dim="time",
        write_vars=["t2m", "tcwv"],
        budget=2**30,
    )
    payload = _payload("r", plan.tasks[0], specs, str(store), None, "time", None, None, 3, 1)
    assert len(pickle.dumps(payload)) < 4000 < plan.tasks[0].nbytes


# -- crashes and resume -------------------------------------------------------------------------


def test_worker_sigkilled_then_resume(tmp_path, full, yearly):
    path = tmp_path / "out.zarr"
    reference = tmp_path / "ref.zarr"
    run(yearly, reference, chunks={"time": 100}, max_workers=0)
    marker = tmp_path / "killed"
    store = KillingStore(path, kill_key="t2m/c/7/0/0", marker=str(marker))
    report = run(
        yearly,
        store,
        chunks={"time": 100},
        max_workers=2,
        executor="processes",  # the store kills the worker process it runs in
        retries=0,
        raise_on_failure=False,
    )
    assert marker.exists()
    assert not report.ok
    assert any(f.error_type == "WorkerDied" for f in report.failures)
    # the chunk being written at the kill is not there: only a temporary file is
    assert not (path / "t2m/c/7/0/0").exists()
    assert list((path / "t2m/c/7/0").glob("0.*.partial"))
    status = check(path)
    assert not status.complete
    assert (7, 0, 0) in status.missing_chunks["t2m"]
    assert status.stray
    # whatever exists is exactly right; whatever is missing reads as fill value
    existing_chunks_match(path, full)
    # resume writes only what is missing, and ends bit-identical to an uninterrupted run
    again = run(yearly, path, chunks={"time": 100}, max_workers=2)
    assert again.ok
    # (a task that finished just as the pool broke is reported failed but skipped on resume)
    assert 1 <= again.written <= report.failed and again.skipped >= report.written
    assert again.written + again.skipped == again.ntasks
    assert check(path).complete and not check(path).stray
    assert snapshot(path) == snapshot(reference)
    assert_bit_identical(path, full)


def test_killed_worker_is_retried_within_the_run(tmp_path, full, yearly):
    path = tmp_path / "out.zarr"
    store = KillingStore(path, kill_key="tcwv/c/3/0/0", marker=str(tmp_path / "killed"))
    report = run(
        yearly, store, chunks={"time": 100}, max_workers=2, executor="processes", retries=1
    )
    assert (tmp_path / "killed").exists()
    assert report.ok
    assert_bit_identical(path, full)


def test_whole_run_killed_then_resume(tmp_path, full, yearly):
    path = tmp_path / "out.zarr"
    marker = tmp_path / "killed"
    script = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(pathlib.Path(__file__).parent)!r})
        from test_convert import KillingStore
        from xarray_zarrwrite.convert import convert
        if __name__ == "__main__":
            store = KillingStore({str(path)!r}, kill_key="t2m/c/9/0/0", marker={str(marker)!r},
                                 scope="group")
            convert({list(yearly)!r}, store, chunks={{"time": 100}}, max_workers=2,
                    progress=False)
        """
    )
    proc = subprocess.run(
        [sys.executable, "-c", script],
        check=False,
        start_new_session=True,
        capture_output=True,
        timeout=120,
    )
    assert proc.returncode == -signal.SIGKILL, proc.stderr.decode()[-2000:]
    assert marker.exists()
    assert not check(path).complete
    existing_chunks_match(path, full)
    report = run(yearly, path, chunks={"time": 100}, max_workers=2)
    assert report.ok and report.written >= 1
    assert check(path).complete
    assert_bit_identical(path, full)


def test_resume_skips_everything_when_complete(tmp_path, yearly, full):
    path = tmp_path / "out.zarr"
    first = run(yearly, path, chunks={"time": 100}, max_workers=0)
    before = snapshot(path)
    again = run(yearly, path, chunks={"time": 100}, max_workers=0)
    assert again.ok and again.written == 0 and again.skipped == first.ntasks
    assert {s.status for s in again.sources} == {"skipped"}
    assert snapshot(path) == before
    with pytest.raises(TemplateError, match="chunks of 100"):
        run(yearly, path, chunks={"time": 50}, max_workers=0)
    # resume=False starts over, with the new layout
    assert run(yearly, path, chunks={"time": 50}, max_workers=0, resume=False).ok
    assert_bit_identical(path, full)


# -- failures are never success -----------------------------------------------------------------


def test_source_failing_permanently(tmp_path, full):
    bounds = year_bounds(full)
    files = write_files(
        full,
        tmp_path / "src",
        bounds,
        encoding={
            v: {"zlib": True, "complevel": 4, "shuffle": False, "chunksizes": (30, 6, 8)}
            for v in ("t2m", "tcwv")
        },
    )
    bad = files[2]  # 2002 (archive steps 731..1095): corrupt its steps 90..119 of t2m, that is
    # archive steps 821..850, all inside output chunk 8 (steps 800..899)
    corrupt_netcdf_chunk(bad, full.isel(time=slice(bounds[2], bounds[3])), "t2m", 90, 120)
    path = tmp_path / "out.zarr"
    with pytest.raises(WriteFailedError, match=r"2002-01-01\.nc") as info:
        run(files, path, chunks={"time": 100}, max_workers=2, retries=2)
    report = info.value.report
    assert not report.ok
    (failure,) = report.failures
    assert failure.sources == (bad,)
    assert failure.phase == "read" and failure.attempts == 1  # not retried: permanent
    assert failure.region["time"] == (day(800), day(899))
    assert day(800) in str(info.value)
    assert {s.source: s.status for s in report.sources}[bad] == "failed"
    status = check(path)
    assert status.missing == {"t2m": [(day(800), day(899))], "tcwv": [(day(800), day(899))]}
    existing_chunks_match(path, full)


def test_transient_store_errors_are_retried(tmp_path, yearly, full, monkeypatch):
    monkeypatch.setattr(conv_task, "BACKOFF_S", 0.001)
    path = tmp_path / "out.zarr"
    to_template(xr.open_dataset(yearly[0]), path, global_end="2003-12-31", chunks={"time": 100})
    faulty = FaultyStore(LocalStore(path), rate=0.3, seed=3, ops=("set",), max_faults=4)
    report = run(yearly, faulty, max_workers=0, retries=4)
    assert report.ok
    assert faulty.faults_injected == 4
    assert_bit_identical(path, full)


def test_permanent_store_error_names_region(tmp_path, yearly, full, monkeypatch):
    monkeypatch.setattr(conv_task, "BACKOFF_S", 0.001)
    path = tmp_path / "out.zarr"
    to_template(xr.open_dataset(yearly[0]), path, global_end="2003-12-31", chunks={"time": 100})
    faulty = FaultyStore(LocalStore(path), rate=0.0, permanent_keys=["tcwv/c/3/*"])
    report = run(yearly, faulty, max_workers=0, raise_on_failure=False)
    assert not report.ok
    (failure,) = report.failures
    assert failure.phase == "write" and failure.error_type == "WriteFailedError"
    lo, hi = failure.index_region["time"]
    assert lo <= 300 and hi >= 400  # the task that holds chunk 3
    assert failure.region == {"time": (day(lo), day(hi - 1))}
    assert failure.sources == (yearly[0], yearly[1])
    assert "PermissionError" in failure.error and "300:400" in failure.error
    assert check(path).missing == {"tcwv": [(day(300), day(399))]}


def test_missing_source_is_incomplete_and_check_shows_it(tmp_path, full, yearly):
    path = tmp_path / "out.zarr"
    files = [yearly[0], yearly[1], yearly[3]]  # 2002 (steps 731..1095) is missing
    report = run(files, path, chunks={"time": 100}, max_workers=0)
    assert report.status == "incomplete" and not report.ok and not report.failures
    assert report.missing == ((day(731), day(1095)),)
    assert report.partial == ((day(700), day(799)), (day(1000), day(1099)))
    assert "INCOMPLETE" in report.summary() and "MISSING" in report.summary()
    # the sources' data is all there, the rest is NaN, the partly covered chunks are recorded
    back = xr.open_zarr(path, chunks=None).load()
    have = np.r_[0:731, 1096:1461]
    for name in ("t2m", "tcwv"):
        np.testing.assert_array_equal(back[name].values[have], full[name].values[have])
        assert np.isnan(back[name].values[731:1096]).all()
    record = back.attrs[conv.PARTIAL_ATTR]
    assert set(record["t2m"]) == {"c/7/0/0", "c/10/0/0"}
    assert record["t2m"]["c/7/0/0"][0].startswith(day(731))
    assert len(record["t2m"]["c/7/0/0"]) == 69 and len(record["t2m"]["c/10/0/0"]) == 96
    # chunks 8..9 not written, 7 and 10 partial: check() counts all four as missing
    status = check(path)
    assert status.missing["t2m"] == [(day(700), day(1099))]
    assert status.variables["t2m"].partial_chunks == ((7, 0, 0), (10, 0, 0))
    # adding the file completes it, partial chunks merged, the record gone
    report = run(yearly, path, chunks={"time": 100}, max_workers=0)
    assert report.status == "complete" and report.ok and not report.missing
    assert_bit_identical(path, full)
    assert conv.PARTIAL_ATTR not in xr.open_zarr(path).attrs


def test_template_beyond_sources_writes_straddling_chunk(tmp_path, full, yearly):
    path = tmp_path / "out.zarr"
    report = run(yearly[:2], path, chunks={"time": 100}, global_end="2003-12-31", max_workers=0)
    assert report.status == "incomplete"  # nothing failed, but a shortfall is not success
    assert report.partial == ((day(700), day(799)),)
    assert report.missing == ((day(731), "2003-12-31"),)
    assert all(s.status == "written" for s in report.sources)
    back = xr.open_zarr(path, chunks=None).load()
    np.testing.assert_array_equal(back.t2m.values[:731], full.t2m.values[:731])
    assert np.isnan(back.t2m.values[731:]).all()
    status = check(path)  # the partial chunk 7 counts as missing, with what follows
    assert status.missing["t2m"] == [(day(700), "2003-12-31")]
    assert status.variables["t2m"].partial_chunks == ((7, 0, 0),)
    assert run(yearly, path, max_workers=0).ok
    assert check(path).complete
    assert_bit_identical(path, full)


# -- validation: clear errors naming the file, nothing written ---------------------------------


def _variant(full, tmp_path, name, change):
    src = tmp_path / "src"
    files = write_files(full, src, year_bounds(full))
    ds = xr.open_dataset(files[2]).load()
    pathlib.Path(files[2]).unlink()
    change(ds).to_netcdf(src / name)
    return [*files[:2], str(src / name), files[3]]


@pytest.mark.parametrize(
    ("change", "error", "match"),
    [
        (lambda d: d.assign_coords(lat=d.lat + 0.5), RegionLabelError, "coordinate 'lat'"),
        (lambda d: d.assign(t2m=d.t2m.astype("int64")), DtypeCastError, "int64"),
        (lambda d: d.assign(t2m=d.t2m.assign_attrs(units="degC")), RegionError, "'units'"),
        (
            lambda d: d.assign_coords(time=d.time + pd.Timedelta("6h")),
            RegionLabelError,
            "not on the time axis",
        ),
        (lambda d: d.isel(lat=slice(0, 3)), DimensionMismatchError, "3 elements along 'lat'"),
    ],
)
def test_sources_checked_against_each_other(tmp_path, full, change, error, match):
    files = _variant(full, tmp_path, "bad-2002.nc", change)
    path = tmp_path / "out.zarr"
    with pytest.raises(error, match=match) as info:
        run(files, path, chunks={"time": 100}, max_workers=0)
    assert "bad-2002.nc" in str(info.value)
    assert snapshot(path) == {}  # nothing written, not even a template


def test_a_variable_only_some_files_hold_is_incomplete_not_refused(tmp_path, full):
    """Files along time whose variables differ are a per-variable layout: the variable
    exists where its files are, and the report (and check) say which steps it lacks."""
    files = _variant(full, tmp_path, "extra-2002.nc", lambda d: d.assign(q=d.t2m * 2))
    path = tmp_path / "out.zarr"
    report = run(files, path, chunks={"time": 100}, max_workers=0, raise_on_failure=False)
    assert report.status == "incomplete"
    status = check(path)
    assert not status.complete
    assert set(status.missing) == {"q"}
    got = xr.open_zarr(path)
    span = xr.open_dataset(files[2])
    np.testing.assert_array_equal(
        got.q.sel(time=span.time).values, (span.t2m * 2).values.astype(got.q.dtype)
    )
    span.close()


def test_sources_checked_against_existing_template(tmp_path, full, yearly):
    path = tmp_path / "out.zarr"
    run(yearly, path, chunks={"time": 100}, max_workers=0)
    before = snapshot(path)
    files = _variant(full, tmp_path, "bad-2002.nc", lambda d: d.rename(tcwv="q"))
    with pytest.raises(VariableNotInTemplateError, match=r"bad-2002\.nc.*the template"):
        run(files, path, max_workers=0)
    assert snapshot(path) == before


def test_overlapping_sources_are_refused(tmp_path, full):
    files = write_files(full, tmp_path / "src", [0, 400, 1461])
    extra = tmp_path / "src" / "overlap.nc"
    full.isel(time=slice(390, 410)).to_netcdf(extra)
    with pytest.raises(RegionLabelError, match="both hold time") as info:
        run([*files, str(extra)], tmp_path / "out.zarr", max_workers=0)
    assert "overlap.nc" in str(info.value)


def test_bad_arguments(tmp_path, yearly):
    with pytest.raises(FileNotFoundError, match="no file matches"):
        run(str(tmp_path / "nothing-*.nc"), tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="is given 2 times"):
        run([yearly[0], yearly[0]], tmp_path / "o.zarr")
    with pytest.raises(ValueError, match="memory_limit"):
        run(yearly, tmp_path / "o.zarr", memory_limit="lots")
    with pytest.raises(DimensionMismatchError, match="no dimension 'valid_time'"):
        run(yearly, tmp_path / "o.zarr", time_dim="valid_time", max_workers=0)
    with pytest.raises(VariableNotInTemplateError, match="'q'"):
        run(yearly, tmp_path / "o.zarr", variables=["q"], max_workers=0)


# -- planning (pure) and memory -----------------------------------------------------------------


def _info(full, chunks):
    store = MemoryStore()
    to_template(full.isel(time=slice(0, 31)), store, global_end=full.time.values[-1], chunks=chunks)
    return load_template(store)


@pytest.mark.parametrize("budget", [2**30, 200_000, 20_000])
def test_plan_tasks_own_every_chunk_exactly_once(full, budget):
    info = _info(full, {"time": 100, "lat": 2, "lon": 8})
    bounds = year_bounds(full)
    positions = [np.arange(a, b) for a, b in zip(bounds[:-1], bounds[1:], strict=True)]
    plan = plan_tasks(
        info, positions, time_dim="time", write_vars=["t2m", "tcwv"], budget=budget, slots=2
    )
    seen: dict[tuple, int] = {}
    for t in plan.tasks:
        assert t.nbytes * PEAK_FACTOR <= max(budget, PEAK_FACTOR * 100 * NLON * 2 * 4 * 2)
        for name, idxs in t.chunk_indices(info).items():
            for idx in idxs:
                assert (name, idx) not in seen, "two tasks share a chunk"
                seen[name, idx] = t.index
        steps = sum(p.dst[1] - p.dst[0] for p in t.pieces)
        assert steps == t.region["time"][1] - t.region["time"][0]
    assert len(seen) == 2 * 15 * 3  # every chunk of both variables
    if budget == 20_000:
        assert plan.split_dim == "lat"  # one block of time chunks does not fit: split maps
    assert not plan.gaps and not plan.partial and not any(t.missing for t in plan.tasks)


def test_plan_tasks_write_partly_covered_units(full):
    info = _info(full, {"time": 100, "lat": -1, "lon": -1})
    positions = [np.arange(0, 731), np.arange(1096, 1461)]  # 731..1095 missing
    plan = plan_tasks(info, positions, time_dim="time", write_vars=["t2m"], budget=2**30)
    assert plan.gaps == ((731, 1096),)
    assert plan.partial == ((700, 800), (1000, 1100))
    partial = {t.region["time"]: t for t in plan.tasks if t.missing}
    assert set(partial) == {(700, 800), (1000, 1100)}
    assert partial[700, 800].missing == ((731, 800),)
    assert partial[1000, 1100].missing == ((1000, 1096),)
    assert [p.dst for p in partial[700, 800].pieces] == [(700, 731)]
    assert [p.dst for p in partial[1000, 1100].pieces] == [(1096, 1100)]
    owned = [c for t in plan.tasks for c in t.chunk_indices(info)["t2m"]]
    assert sorted(owned) == [(i, 0, 0) for i in range(15) if i not in (8, 9)]


def test_memory_limit_sizes_tasks_and_reports_peak_rss(tmp_path, full, yearly):
    path = tmp_path / "out.zarr"
    big = run(yearly, tmp_path / "big.zarr", chunks={"time": 10}, max_workers=0)
    small = run(yearly, path, chunks={"time": 10}, max_workers=0, memory_limit=300 * 2**20)
    assert small.memory_limit == 300 * 2**20
    assert small.ntasks >= big.ntasks
    assert small.task_memory_estimate <= (300 * 2**20) // 4
    (w,) = small.workers
    assert w.peak_rss > 20 * 2**20 and w.memory_limit == 300 * 2**20
    assert "peak RSS" in small.summary()
    assert_bit_identical(path, full)


def test_all_fill_value_data_counts_as_written(tmp_path, full):
    nan = full.copy(deep=True)
    nan["t2m"][:] = np.nan  # every value equals the fill value
    files = write_files(nan, tmp_path / "src", year_bounds(nan))
    path = tmp_path / "out.zarr"
    assert run(files, path, chunks={"time": 100}, max_workers=0).ok
    status = check(path)
    assert status.complete and status.variables["t2m"].written == 15
    again = run(files, path, max_workers=0)
    assert again.written == 0 and again.skipped == again.ntasks  # resume sees them as done
    assert_bit_identical(path, nan)
