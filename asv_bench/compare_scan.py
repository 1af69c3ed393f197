"""The scan of many look-alike files: the fast scan (one full scan, then a byte comparison per
file) against the full h5py scan of every file, in the same run, per kind of daily file.

Kinds: ``plain`` (xarray's default encoding: per-file time units), ``packed`` (int16 with a
per-file ``scale_factor``/``add_offset``, as ERA5 files from the CDS). The full scan is what
``XARRAY_ZARRWRITE_FAST_SCAN=0`` gives. One thread, this process; files in the page cache.

Usage::

    python asv_bench/compare_scan.py               # 365 daily files of each kind
    python asv_bench/compare_scan.py --days 1461 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time

import numpy as np


def write_days(directory: str, days: int, packed: bool) -> list[str]:
    from xarray_zarrwrite.testing.datasets import era5_like

    os.makedirs(directory, exist_ok=True)
    ds = era5_like("2002-01-01", days, nlat=120, nlon=240)
    paths = []
    for i in range(days):
        day = ds.isel(time=slice(i, i + 1))
        encoding = {}
        if packed:
            for name, var in day.data_vars.items():
                lo, hi = float(var.min()), float(var.max())
                encoding[name] = {
                    "dtype": "int16",
                    "scale_factor": (hi - lo) / 65000,
                    "add_offset": (hi + lo) / 2,
                    "_FillValue": np.int16(-32767),
                }
        path = os.path.join(directory, f"day-{i:05d}.nc")
        day.to_netcdf(path, encoding=encoding)
        paths.append(path)
    return paths


def scan_seconds(paths: list[str], fast: bool) -> float:
    from xarray_zarrwrite.convert import _fastscan, _sources

    specs = [_sources.expand_sources(p)[0] for p in paths]
    os.environ[_fastscan.FAST_SCAN_ENV] = "1" if fast else "0"
    _fastscan.forget()
    t0 = time.perf_counter()
    for spec in specs:
        _sources.scan_source(spec, "time", None, None)
    return time.perf_counter() - t0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=365)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args(argv)
    work = tempfile.mkdtemp(prefix="xzw-scan-")
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    try:
        for kind in ("plain", "packed"):
            paths = write_days(os.path.join(work, kind), args.days, kind == "packed")
            scan_seconds(paths[:2], True)  # imports, first-call costs
            runs: dict[str, list[float]] = {"fast": [], "full": []}
            for _ in range(args.repeats):  # interleaved: the same load for both
                runs["fast"].append(scan_seconds(paths, True))
                runs["full"].append(scan_seconds(paths, False))
            fast, full = (float(np.median(runs[k])) for k in ("fast", "full"))
            print(
                f"{kind:>6}: {args.days} files, full scan {full / args.days * 1e3:.2f} ms/file, "
                f"fast scan {fast / args.days * 1e3:.2f} ms/file ({full / fast:.1f}x; "
                f"medians of {args.repeats})"
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
