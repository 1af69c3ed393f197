"""The ``xarray-zarrwrite`` command line: help, round trips, exit status."""

from __future__ import annotations

import json
import logging
import subprocess
import sys

import numpy as np
import pytest
import xarray as xr

from xarray_zarrwrite._cli_util import for_shell
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
    assert "examples:" in out and "  xarray-zarrwrite " in out  # an example per subcommand
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
    err = capsys.readouterr().err
    assert "--memory-limit" in err and "memory_limit" not in err  # the flag, not the keyword
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
    # the second part: many daily files, converted and written by xarray, compared
    assert "60 daily files" in out and "identical bit for bit" in out
    assert (tmp_path / "daily" / "era5-00059.nc").exists()


def run_cli(*argv, cwd=None):
    return subprocess.run(
        [sys.executable, "-m", "xarray_zarrwrite", *map(str, argv)],
        capture_output=True,
        text=True,
        check=False,
        timeout=300,
        cwd=cwd,
    )


def test_json_stdout_is_one_document(tmp_path, files, data):
    store = tmp_path / "j.zarr"
    # progress bars on (the default): they and the summary go to stderr
    proc = run_cli("convert", *files, store, "--chunks", "time=30", "--json", "-")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)  # exactly one JSON document, nothing else
    assert report["status"] == "complete" and report["ok"] is True
    assert "COMPLETE" in proc.stderr and "COMPLETE" not in proc.stdout
    assert_bit_identical(store, data)
    proc = run_cli("check", store, "--json", "-")
    assert proc.returncode == 0, proc.stderr
    status = json.loads(proc.stdout)
    assert status["complete"] is True and status["store"] == str(store)
    assert "complete" in proc.stderr


def test_messages_name_flags_and_stores_as_given(tmp_path, files, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    assert main(["check", "nothing.zarr"]) == 2
    err = capsys.readouterr().err
    assert "nothing.zarr" in err and "file://" not in err and "LocalStore(" not in err
    assert "xarray-zarrwrite template SOURCE STORE" in err
    assert "fastzarr" not in err
    argv = ["convert", files[0], "t.zarr", "--time-dim", "day", "--no-progress"]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert "--time-dim" in err and "time_dim" not in err
    assert not (tmp_path / "t.zarr").exists()


def test_check_unknown_variable_and_plot(tmp_path, files, data, capsys):
    store = str(tmp_path / "p.zarr")
    argv = ["convert", files[0], files[2], store, "--freq", "D", "--workers", "0"]
    assert main([*argv, "--no-progress", "--chunks", "time=20"]) == 3  # middle file missing
    capsys.readouterr()
    assert main(["check", store, "--variables", "nope"]) == 2
    assert "nope" in capsys.readouterr().err
    pytest.importorskip("matplotlib")
    png = tmp_path / "map.png"
    assert main(["check", store, "--plot", str(png)]) == 3
    assert png.read_bytes()[:4] == b"\x89PNG"
    assert f"completeness map: {png}" in capsys.readouterr().out
    back = xr.open_zarr(store, chunks=None)
    assert back.t2m.isel(time=-1).values.tobytes() == data.t2m.isel(time=-1).values.tobytes()


def test_storage_options_json(tmp_path, files, data, capsys):
    url = f"memory://{tmp_path.name}/s.zarr"  # this process: convert runs on threads here
    opts = json.dumps({"skip_instance_cache": True})
    argv = ["convert", *files, url, "--workers", "0", "--no-progress", "--storage-options", opts]
    assert main(argv) == 0
    assert main(["check", url, "--storage-options", opts]) == 0
    assert_bit_identical(url, data)
    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main(["check", url, "--storage-options", "{not json"])
    assert info.value.code == 2
    assert "--storage-options is not valid JSON" in capsys.readouterr().err
    with pytest.raises(SystemExit) as info:
        main(["check", url, "--storage-options", "[1, 2]"])
    assert info.value.code == 2


def test_interrupt_exits_130_and_says_how_to_resume(tmp_path, files, monkeypatch, capsys):
    conv = sys.modules["xarray_zarrwrite.convert"]  # the package (its name is the function)

    def interrupted(*args, **kwargs):
        # what the executors log when Ctrl-C arrives, then the interrupt itself
        logging.getLogger("xarray_zarrwrite.convert._executors").warning(
            "convert interrupted (%s): cancelled %d queued task(s), waiting for %d "
            "running one(s); run convert again to resume",
            "KeyboardInterrupt",
            5,
            2,
        )
        raise KeyboardInterrupt

    monkeypatch.setattr(conv, "convert", interrupted)
    assert main(["convert", *files, str(tmp_path / "i.zarr"), "--no-progress"]) == 130
    err = capsys.readouterr().err
    assert "interrupted: 5 tasks cancelled; re-run the same command to resume" in err


def test_demo_data_only(tmp_path, capsys):
    assert main(["demo", "--data-only", str(tmp_path / "d"), "--months", "2"]) == 0
    assert "wrote 2 sample file(s)" in capsys.readouterr().out
    names = sorted(p.name for p in (tmp_path / "d").iterdir())
    assert names == ["t2m_2000-01.nc", "t2m_2000-02.nc"]
    with xr.open_dataset(tmp_path / "d" / "t2m_2000-02.nc") as ds:
        assert ds.sizes["time"] == 29 and str(ds.time.values[-1])[:10] == "2000-02-29"


def test_for_shell():
    assert (
        for_shell("set time_dim= to its time dimension") == "set --time-dim to its time dimension"
    )
    assert for_shell("pass resume=False to replace it") == "pass --no-resume to replace it"
    assert for_shell("or pass executor='processes'") == "or pass --executor processes"
    assert for_shell("pass freq='D'") == "pass --freq D"
    assert (
        for_shell("create one first with ds.fastzarr.to_template(store)")
        == "create one first with `xarray-zarrwrite template SOURCE STORE`"
    )
    assert for_shell("pass region={'time': slice(start, stop)}") == "pass --region time=START:STOP"
    assert for_shell("memory_limit 'x' is bad") == "--memory-limit 'x' is bad"
    assert for_shell("the chunks of time") == "the chunks of time"  # English words stay
    stores = {"file:///abs/a.zarr": "a.zarr", "LocalStore('file:///abs/a.zarr')": "a.zarr"}
    assert for_shell("no template at LocalStore('file:///abs/a.zarr')", stores) == (
        "no template at a.zarr"
    )


def test_new_convert_flags_reach_convert(tmp_path, files, data):
    import inspect

    from xarray_zarrwrite import convert

    if "shards" not in inspect.signature(convert).parameters:
        pytest.skip("this convert has no shards keyword")
    store = str(tmp_path / "s.zarr")
    argv = ["convert", *files, store, "--chunks", "time=20,lat=-1,lon=-1", "--shards", "time=60"]
    assert main([*argv, "--executor", "threads", "--workers", "2", "--no-progress"]) == 0
    import zarr

    arr = zarr.open_array(store, path="t2m", mode="r")
    assert arr.chunks == (20, 6, 8) and arr.shards == (60, 6, 8)
    assert_bit_identical(store, data)


def test_check_group(tmp_path, data, capsys):
    import xarray_zarrwrite as xzw

    store = str(tmp_path / "g.zarr")
    xzw.to_template(data, store, group="runs/a", chunks={"time": 40, "lat": -1, "lon": -1})
    xzw.write_region(data.isel(time=slice(0, 80)), store, group="runs/a")
    assert main(["check", store, "--group", "runs/a", "--json", str(tmp_path / "c.json")]) == 3
    assert "(group runs/a): INCOMPLETE" in capsys.readouterr().out
    status = json.loads((tmp_path / "c.json").read_text())
    assert status["missing"]["t2m"] == [["2000-03-21", "2000-04-29"]]
    assert main(["check", store]) == 2  # no archive at the root: says which group to give
    assert "--group runs/a" in capsys.readouterr().err
    xzw.write_region(data.isel(time=slice(80, 120)), store, group="runs/a")
    assert main(["check", store, "--group", "runs/a"]) == 0
    assert_bit_identical(xzw._store.in_group(xzw._store.resolve_store(store), "runs/a"), data)
