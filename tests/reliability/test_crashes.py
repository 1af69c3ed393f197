"""SIGKILL at random points during a StreamWriter run and during convert, then resume.

At every point a chunk is either absent (reads as NaN) or correct, and after resuming the
archive is bit-identical to the source.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import xarray as xr

import xarray_zarrwrite as xzw
from xarray_zarrwrite.testing.datasets import era5_like

FAST, LONG = 3, 20
STEPS = {"start": "2000-01-01", "periods": 40, "freq": "h", "nlat": 32, "nlon": 64}

STREAM_SCRIPT = """
import sys, xarray_zarrwrite as xzw
from xarray_zarrwrite.testing.datasets import era5_like
steps = era5_like(**{steps!r})
with xzw.StreamWriter({path!r}, max_inflight_mb=0.5) as w:
    for i in range(steps.sizes["time"]):
        w.write(steps.isel(time=[i]))
        print(i, flush=True)
"""


def assert_absent_or_correct(path, source):
    back = xr.open_zarr(path).load()
    for name in ("t2m", "tcwv"):
        got, want = back[name].values, source[name].values
        written = ~np.isnan(got).all(axis=(1, 2))
        np.testing.assert_array_equal(got[written], want[written])  # never wrong data
        assert np.isnan(got[~written]).all()  # the rest is absent, not zeros
    return back


def stream_trial(tmp_path, seed):
    rng = random.Random(seed)
    source = era5_like(**STEPS)
    path = str(tmp_path / f"stream{seed}.zarr")
    source.isel(time=slice(0, 3)).fastzarr.to_template(
        path, global_end=source.time[-1].values, chunks={"time": 1}
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", STREAM_SCRIPT.format(steps=STEPS, path=path)],
        stdout=subprocess.PIPE,
        text=True,
    )
    kill_after = rng.randint(0, 35)
    for line in proc.stdout:  # kill right after the caller queued step `kill_after`
        if int(line) >= kill_after:
            time.sleep(rng.random() * 0.05)
            break
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stdout.close()
    assert_absent_or_correct(path, source)
    status = xzw.check(path)
    missing = sorted({i for v in status.variables.values() for (i, *_) in v.missing_chunks})
    with xzw.StreamWriter(path) as w:  # resume: write exactly what check reports missing
        for i in missing:
            w.write(source.isel(time=[i]))
    assert xzw.check(path).complete
    xr.testing.assert_identical(xr.open_zarr(path).load(), source)
    return len(missing)


@pytest.mark.parametrize("seed", range(FAST))
def test_stream_sigkill_then_resume(tmp_path, seed):
    stream_trial(tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(FAST, FAST + LONG))
def test_stream_sigkill_then_resume_long(tmp_path, seed):
    stream_trial(tmp_path, seed)


CONVERT_SCRIPT = """
import xarray_zarrwrite as xzw
xzw.convert({files!r}, {path!r}, chunks={{"time": 10}}, max_workers=2, progress=False)
"""


def write_sources(tmp_path):
    source = era5_like("2000-01-01", 120, nlat=24, nlon=48)
    files = []
    for k, (a, b) in enumerate([(0, 31), (31, 60), (60, 91), (91, 120)]):
        f = str(tmp_path / f"src{k}.nc")
        source.isel(time=slice(a, b)).to_netcdf(f)
        files.append(f)
    return source, files


def convert_trial(tmp_path, seed):
    rng = random.Random(seed)
    source, files = write_sources(tmp_path)
    path = str(tmp_path / f"conv{seed}.zarr")
    proc = subprocess.Popen(
        [sys.executable, "-c", CONVERT_SCRIPT.format(files=files, path=path)],
        start_new_session=True,
    )
    time.sleep(rng.uniform(1.0, 4.0))  # somewhere between start-up and the end of the run
    os.killpg(proc.pid, signal.SIGKILL)  # the whole run, workers included
    proc.wait()
    if os.path.exists(os.path.join(path, "zarr.json")):
        assert_absent_or_correct(path, source)
    report = xzw.convert(files, path, chunks={"time": 10}, max_workers=2, progress=False)
    assert report.ok
    assert xzw.check(path).complete
    xr.testing.assert_identical(xr.open_zarr(path).load(), source)


@pytest.mark.parametrize("seed", range(2))
def test_convert_sigkill_then_resume(tmp_path, seed):
    convert_trial(tmp_path, seed)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(2, 2 + LONG))
def test_convert_sigkill_then_resume_long(tmp_path, seed):
    convert_trial(tmp_path, seed)
