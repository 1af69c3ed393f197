"""memory_limit is honoured: the measured peak RSS of the worker (here the converting process,
threads executor, run in a subprocess so that nothing else inflates its high-water mark) stays
within the limit. No timing assertions."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pandas as pd
import pytest
import xarray as xr

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
NT, NY, NX = 160, 250, 250  # 40 MB of float32 per file


def _files(tmp_path) -> tuple[list[str], list[xr.Dataset]]:
    paths, parts = [], []
    for k in range(2):
        rng = np.random.default_rng(k)
        ds = xr.Dataset(
            {"v": (("time", "y", "x"), rng.random((NT, NY, NX), dtype="f4"))},
            coords={
                "time": pd.date_range("2000-01-01", periods=NT, freq="6h")
                + pd.Timedelta(hours=6 * NT * k),
                "y": np.arange(NY),
                "x": np.arange(NX),
            },
        )
        path = tmp_path / f"f{k}.nc"
        ds.to_netcdf(path)
        paths.append(str(path))
        parts.append(ds)
    return paths, parts


@pytest.mark.parametrize("limit_mib", [300])
def test_peak_rss_stays_within_memory_limit(tmp_path, limit_mib):
    paths, parts = _files(tmp_path)
    out = tmp_path / "out.zarr"
    script = tmp_path / "worker.py"
    script.write_text(
        textwrap.dedent(
            f"""
            import json
            from xarray_zarrwrite.convert import convert
            from xarray_zarrwrite.convert._task import peak_rss

            if __name__ == "__main__":
                report = convert({paths!r}, {str(out)!r}, chunks={{"time": 8, "y": 250, "x": 250}},
                                 memory_limit="{limit_mib}MiB", executor="threads",
                                 max_workers=2, progress=False)
                print(json.dumps({{"peak": peak_rss(), "ok": report.ok,
                                  "ntasks": report.ntasks}}))
            """
        )
    )
    proc = subprocess.run(
        [sys.executable, str(script)],
        capture_output=True,
        text=True,
        timeout=600,
        env={**os.environ, "PYTHONPATH": ROOT},
        check=False,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["ok"]
    assert result["ntasks"] > 2  # the limit shaped the tasks (2 files, 40 chunks)
    assert result["peak"] <= limit_mib * 2**20, (result["peak"] / 2**20, proc.stderr[-2000:])
    back = xr.open_zarr(out)
    full = xr.concat(parts, dim="time")
    np.testing.assert_array_equal(back.v.values, full.v.values)
    assert back.v.values[-1, -1, -1] == full.v.values[-1, -1, -1]
