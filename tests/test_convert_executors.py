"""convert's executors: threads by default, processes on request (with the main-guard trap
refused by a clear error), serial; Ctrl-C on threads stops promptly and the archive resumes."""

from __future__ import annotations

import importlib
import os
import pathlib
import signal
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pandas as pd
import pytest
import xarray as xr

from xarray_zarrwrite import check
from xarray_zarrwrite.convert import convert
from xarray_zarrwrite.convert._guard import _is_guard, unguarded_script
from xarray_zarrwrite.errors import ConvertOptionError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _dataset(n: int = 40) -> xr.Dataset:
    rng = np.random.default_rng(7)
    return xr.Dataset(
        {
            "t2m": (("time", "lat", "lon"), rng.random((n, 3, 4), dtype="f4")),
            "q": (("time", "lat", "lon"), rng.integers(0, 1000, (n, 3, 4)).astype("i4")),
        },
        coords={
            "time": pd.date_range("2001-01-01", periods=n, freq="D"),
            "lat": [10.0, 20.0, 30.0],
            "lon": [0.0, 1.0, 2.0, 3.0],
        },
    )


@pytest.fixture
def files(tmp_path) -> tuple[xr.Dataset, list[str]]:
    ds = _dataset()
    paths = []
    for k in range(4):
        path = tmp_path / f"part{k}.nc"
        ds.isel(time=slice(10 * k, 10 * k + 10)).to_netcdf(path)
        paths.append(str(path))
    return ds, paths


def _assert_same(path, ds: xr.Dataset) -> None:
    back = xr.open_zarr(path)
    for name in ds.data_vars:
        np.testing.assert_array_equal(back[name].values, ds[name].values)
        assert back[name].dtype == ds[name].dtype
        assert back[name].values[-1, -1, -1] == ds[name].values[-1, -1, -1]
    np.testing.assert_array_equal(back.time.values, ds.time.values)


@pytest.mark.parametrize("executor", [None, "threads", "serial"])
def test_in_process_executors_write_bit_identical(tmp_path, files, executor):
    ds, paths = files
    path = tmp_path / "out.zarr"
    report = convert(paths, path, chunks={"time": 7}, executor=executor, progress=False)
    assert report.ok
    expected = "serial" if executor == "serial" else "threads"
    assert expected in report.summary()
    _assert_same(path, ds)


def test_threads_progress_covers_scan_and_tasks(tmp_path, files, capsys):
    ds, paths = files
    path = tmp_path / "out.zarr"
    with pytest.MonkeyPatch.context() as mp:
        seen: list[str] = []
        ex = importlib.import_module("xarray_zarrwrite.convert._executors")
        real = ex._bar

        def spy(total, progress, desc="convert", unit="task"):
            seen.append(desc)
            return real(total, False, desc, unit)

        mp.setattr(ex, "_bar", spy)
        assert convert(paths, path, chunks={"time": 10}, summary=False).ok
    assert seen == ["scan", "convert"]
    assert capsys.readouterr().out == ""  # progress and summary never go to stdout
    _assert_same(path, ds)


@pytest.mark.parametrize(
    ("kw", "match"),
    [
        ({"executor": "fork"}, "executor must be one of"),
        ({"executor": "threads", "client": "tcp://127.0.0.1:1"}, "contradict"),
        ({"max_workers": -1}, "max_workers"),
        ({"max_workers": True}, "max_workers"),
    ],
)
def test_bad_executor_options_are_refused(tmp_path, files, kw, match):
    _, paths = files
    path = tmp_path / "out.zarr"
    with pytest.raises(ConvertOptionError, match=match):
        convert(paths, path, progress=False, **kw)
    assert not path.exists()


def test_guard_detection():
    import ast

    def guard(src: str) -> bool:
        return _is_guard(ast.parse(src, mode="eval").body)

    assert guard('__name__ == "__main__"')
    assert guard("'__main__' == __name__")
    assert guard('__name__ == "__main__" and True')
    assert not guard('__name__ != "x"')
    assert not guard("x == '__main__'")
    assert unguarded_script() is None  # pytest's own entry point has its guard


def _script(tmp_path, name: str, body: str) -> str:
    path = tmp_path / name
    path.write_text(textwrap.dedent(body))
    return str(path)


def _run(script: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONPATH": ROOT}
    return subprocess.run(
        [sys.executable, script],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=env,
        check=False,
    )


def test_unguarded_script_with_processes_gets_the_clear_error(tmp_path, files):
    _, paths = files
    out = tmp_path / "out.zarr"
    script = _script(
        tmp_path,
        "unguarded.py",
        f"""
        import sys
        from xarray_zarrwrite.convert import convert
        from xarray_zarrwrite.errors import MainGuardError

        try:
            convert({paths!r}, {str(out)!r}, executor="processes", max_workers=1,
                    progress=False)
        except MainGuardError as e:
            print("MainGuardError:", e)
            sys.exit(3)
        """,
    )
    proc = _run(script)
    assert proc.returncode == 3, proc.stderr[-3000:]
    assert 'if __name__ == "__main__":' in proc.stdout
    assert "unguarded.py" in proc.stdout and "executor='threads'" in proc.stdout
    assert "out-of-memory" not in proc.stdout + proc.stderr
    assert not out.exists()


def test_script_running_convert_outside_its_guard_gets_the_clear_error(tmp_path, files):
    """A guard the script has but does not use: the workers re-run convert, refuse, and die
    while starting; the parent says why (not "out-of-memory killer")."""
    _, paths = files
    out = tmp_path / "out.zarr"
    script = _script(
        tmp_path,
        "misguarded.py",
        f"""
        import sys
        from xarray_zarrwrite.convert import convert
        from xarray_zarrwrite.errors import MainGuardError

        if __name__ == "__main__":
            print("starting")
        try:
            convert({paths!r}, {str(out)!r}, executor="processes", max_workers=1,
                    progress=False, retries=0)
        except MainGuardError as e:
            print("MainGuardError:", e)
            sys.exit(3)
        """,
    )
    proc = _run(script)
    assert proc.returncode == 3, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "died while starting" in proc.stdout
    assert 'if __name__ == "__main__":' in proc.stdout
    assert "out-of-memory" not in proc.stdout


def test_guarded_script_with_processes_converts(tmp_path, files):
    ds, paths = files
    out = tmp_path / "out.zarr"
    script = _script(
        tmp_path,
        "guarded.py",
        f"""
        from xarray_zarrwrite.convert import convert

        if __name__ == "__main__":
            report = convert({paths!r}, {str(out)!r}, chunks={{"time": 10}},
                             executor="processes", max_workers=2, progress=False)
            print(report.status, report.summary())
        """,
    )
    proc = _run(script)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert proc.stdout.startswith("complete") and "local process pool" in proc.stdout
    _assert_same(out, ds)


def test_ctrl_c_on_threads_cancels_queued_tasks_and_the_archive_resumes(tmp_path):
    ds = _dataset(80)
    paths = []
    for k in range(2):
        p = tmp_path / f"half{k}.nc"
        ds.isel(time=slice(40 * k, 40 * k + 40)).to_netcdf(p)
        paths.append(str(p))
    out = tmp_path / "out.zarr"
    marker = tmp_path / "started"
    script = _script(
        tmp_path,
        "interrupted.py",
        f"""
        import os, sys, time, pathlib
        from zarr.storage import LocalStore
        from xarray_zarrwrite.convert import convert

        class SlowStore(LocalStore):
            async def set(self, key, value):
                if key.startswith(("t2m/c/", "q/c/")):
                    pathlib.Path({str(marker)!r}).touch()
                    time.sleep(0.1)  # a slow store: the task holds its thread
                await super().set(key, value)

            def with_read_only(self, read_only=False):
                return type(self)(self.root, read_only=read_only)

        if __name__ == "__main__":
            try:
                convert({paths!r}, SlowStore({str(out)!r}), chunks={{"time": 1}},
                        executor="threads", max_workers=1, progress=False)
            except KeyboardInterrupt:
                print("KeyboardInterrupt", flush=True)
                sys.exit(130)
            print("finished")
        """,
    )
    env = {**os.environ, "PYTHONPATH": ROOT}
    proc = subprocess.Popen(
        [sys.executable, script],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        deadline = time.monotonic() + 120
        while not marker.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.02)
        assert marker.exists(), "convert never wrote a chunk"
        proc.send_signal(signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
    assert proc.returncode == 130, stderr[-3000:]
    assert "KeyboardInterrupt" in stdout
    assert "cancelled" in stderr and "run convert again to resume" in stderr
    assert not check(out).complete  # the queued tasks never ran
    report = convert(paths, out, chunks={"time": 1}, progress=False)
    assert report.ok and report.skipped >= 1 and report.written >= 1
    assert check(out).complete
    _assert_same(out, ds)


def test_threads_scan_local_sources_on_one_thread_and_remote_ones_on_all(tmp_path, files):
    """Local sources are scanned one after another (HDF5's lock and the GIL make a second
    thread slower); remote ones wait on the network and are spread over the threads. The
    schemas come back in the sources' order either way."""
    fsspec = pytest.importorskip("fsspec")
    ds, paths = files
    root = f"/scan-{os.getpid()}-{time.monotonic_ns()}"
    fs = fsspec.filesystem("memory")
    remote = []
    for k, p in enumerate(paths):
        fs.pipe(f"{root}/part{k}.nc", pathlib.Path(p).read_bytes())
        remote.append(f"memory://{root}/part{k}.nc")
    ex = importlib.import_module("xarray_zarrwrite.convert._executors")
    threads: dict[str, set[str]] = {}
    real = ex.scan_batch

    def spy(specs, *args):
        for s in specs:
            threads.setdefault(s.label, set()).add(threading.current_thread().name)
        time.sleep(0.05)  # as a remote read would: every thread gets some
        return real(specs, *args)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(ex, "scan_batch", spy)
        local = convert(paths, tmp_path / "a.zarr", chunks={"time": 10}, progress=False)
        far = convert(
            remote,
            tmp_path / "b.zarr",
            chunks={"time": 10},
            engine="netcdf4",
            max_workers=4,
            progress=False,
        )
    assert local.ok and far.ok
    assert len({t for p in paths for t in threads[p]}) == 1
    assert len({t for r in remote for t in threads[r]}) > 1
    assert [s.source for s in far.sources] == remote
    _assert_same(tmp_path / "a.zarr", ds)
    _assert_same(tmp_path / "b.zarr", ds)
