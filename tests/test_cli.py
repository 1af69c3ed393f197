"""The ``xarray-zarrwrite`` command line: help, round trips, exit status."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from xarray_zarrwrite.cli import build_parser, main, parse_chunks, parse_region
from xarray_zarrwrite.testing.datasets import era5_like

SUBCOMMANDS = ("template", "write-region", "convert", "check", "demo")


@pytest.fixture(scope="module")
def data() -> xr.Dataset:
    return era5_like("2000-01-01", 120, nlat=6, nlon=8)


@pytest.fixture
def files(tmp_path, data) -> list[str]:
    paths = []
    for a in range(0, 120, 40):  # three files of 40 days
        path = tmp_path / f"part-{a:03d}.nc"
        data.isel(time=slice(a, a + 40)).to_netcdf(path)
        paths.append(str(path))
    return paths


def assert_bit_identical(store, expected: xr.Dataset) -> None:
    back = xr.open_zarr(store, chunks=None).load()
    for name in expected.data_vars:
        assert back[name].values.tobytes() == expected[name].values.tobytes()
    np.testing.assert_array_equal(
        back.time.values.astype("M8[ns]"), expected.time.values.astype("M8[ns]")
    )


@pytest.mark.parametrize("command", [None, *SUBCOMMANDS])
def test_help(command, capsys):
    argv = ["--help"] if command is None else [command, "--help"]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 0
    out = capsys.readouterr().out
    assert "usage: xarray-zarrwrite" in out
    if command is None:
        for sub in SUBCOMMANDS:
            assert sub in out


def test_usage_errors_exit_2(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    with pytest.raises(SystemExit) as info:
        main(["convert", "a.nc", "out.zarr", "--chunks", "time=zero"])
    assert info.value.code == 2


def test_parsers():
    assert parse_chunks("time=100, lat=-1,lon=full") == {"time": 100, "lat": None, "lon": None}
    assert parse_chunks("auto") == "auto"
    assert parse_region("time=0:100,lat=:6") == {"time": slice(0, 100), "lat": slice(None, 6)}
    assert build_parser().parse_args(["check", "x"]).time_dim == "time"


def test_template_write_region_check_round_trip(tmp_path, files, data, capsys):
    store = str(tmp_path / "a.zarr")
    assert (
        main(
            [
                "template",
                files[0],
                store,
                "--global-end",
                "2000-04-29",
                "--chunks",
                "time=40,lat=-1,lon=-1",
            ]
        )
        == 0
    )
    assert "time=120" in capsys.readouterr().out
    assert main(["check", store]) == 3  # nothing written yet: incomplete
    assert "INCOMPLETE" in capsys.readouterr().out
    for f in files[:2]:
        assert main(["write-region", f, store]) == 0
    assert main(["check", store, "--json", str(tmp_path / "c.json")]) == 3
    status = json.loads((tmp_path / "c.json").read_text())
    assert status["missing"] == {
        "t2m": [["2000-03-21", "2000-04-29"]],
        "tcwv": [["2000-03-21", "2000-04-29"]],
    }
    assert main(["write-region", files[2], store, "--region", "time=80:120"]) == 0
    capsys.readouterr()
    assert main(["check", store]) == 0
    assert "complete" in capsys.readouterr().out
    assert_bit_identical(store, data)


def test_convert_round_trip_and_resume(tmp_path, files, data, capsys):
    store = str(tmp_path / "b.zarr")
    # misaligned on purpose: 40-day files, 30-day chunks
    argv = [
        "convert",
        *files[::-1],
        store,
        "--chunks",
        "time=30",
        "--workers",
        "0",
        "--no-progress",
        "--json",
        str(tmp_path / "r.json"),
    ]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "COMPLETE" in out and "3 source(s)" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["failures"] == [] and report["written"] == report["ntasks"]
    assert_bit_identical(store, data)
    assert main(argv) == 0  # resume: nothing left to do
    assert "0 written" in capsys.readouterr().out
    assert main(["check", store]) == 0


def test_convert_incomplete_exits_3_and_completes(tmp_path, files, data, capsys):
    store = str(tmp_path / "c.zarr")
    json_path = str(tmp_path / "r.json")
    # a missing middle file: nothing failed, but the archive is incomplete (exit 3)
    argv = ["convert", files[0], files[2], store, "--workers", "0", "--no-progress"]
    assert main([*argv, "--freq", "D", "--json", json_path]) == 3
    out = capsys.readouterr().out
    assert "INCOMPLETE" in out and "MISSING time 2000-02-10 .. 2000-03-20" in out
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["status"] == "incomplete" and report["ok"] is False
    assert main(["check", store]) == 3
    back = xr.open_zarr(store, chunks=None).load()
    assert np.isnan(back.t2m.values[40:80]).all()
    np.testing.assert_array_equal(back.t2m.values[:40], data.t2m.values[:40])
    np.testing.assert_array_equal(back.t2m.values[80:], data.t2m.values[80:])
    # the missing file completes it: exit 0
    argv = ["convert", *files, store, "--workers", "0", "--no-progress"]
    assert main(argv) == 0
    assert main(["check", store]) == 0
    assert_bit_identical(store, data)


def test_convert_invalid_input_exits_2(tmp_path, files, capsys):
    store = str(tmp_path / "c.zarr")
    assert main(["convert", str(tmp_path / "none-*.nc"), store]) == 2
    assert "no file matches" in capsys.readouterr().err
    assert main(["convert", files[0], files[0], store, "--no-progress"]) == 2
    assert "is given 2 times" in capsys.readouterr().err
    assert main(["convert", files[0], store, "--memory-limit", "lots"]) == 2
    assert "memory_limit" in capsys.readouterr().err
    assert main(["convert", store]) == 2
    assert not (tmp_path / "c.zarr").exists()  # nothing was written


def test_python_m_entry_point(tmp_path, files):
    store = str(tmp_path / "d.zarr")
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "xarray_zarrwrite",
            "convert",
            *files,
            store,
            "--workers",
            "2",
            "--no-progress",
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    assert "peak RSS" in proc.stdout
    proc = subprocess.run(
        [sys.executable, "-m", "xarray_zarrwrite", "check", str(tmp_path / "nothing.zarr")],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
    )
    assert proc.returncode == 2 and "error:" in proc.stderr  # invalid input: no archive


def test_demo_small(tmp_path, capsys):
    assert (
        main(["demo", "--dir", str(tmp_path), "--months", "2", "--nlat", "6", "--nlon", "8"]) == 0
    )
    out = capsys.readouterr().out
    assert "identical" in out and "demo: OK" in out
    assert "open_mfdataset" in out
