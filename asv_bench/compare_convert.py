"""Figures for ``xarray_zarrwrite.convert`` against ``xr.open_mfdataset(...).to_zarr(...)``.

Usage::

    python asv_bench/compare_convert.py            # 3 repeats of everything (a few minutes)
    python asv_bench/compare_convert.py --quick    # 1 repeat, smaller memory sweep

Figures (daily 1461 x 120 x 240 float32, 168 MB, one variable, uncompressed NetCDF sources,
blosc zstd-3 + shuffle output for both methods):

1. 4 yearly files, time chunk 73 and 100, 2 workers: wall time against plain
   ``xr.open_mfdataset(files).chunk(time=c).to_zarr(...)`` (dask's threaded scheduler).
2. 48 monthly files: the same comparison, plus 1 vs 2 workers.
3. Peak RSS per worker against ``memory_limit`` (local pool and a dask LocalCluster).

``convert`` runs include everything (scanning, template, planning, the pool). "cold" is the
first call in this process, which starts the local pool's forkserver (the library imported once,
about a second on a small machine); later calls fork workers from it in milliseconds. Times are
medians over the repeats (min in brackets).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import shutil
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr

NT, NLAT, NLON = 1461, 120, 240


def make_data() -> xr.Dataset:
    """Vectorised reanalysis-like field: seasonal cycle, latitude gradient, noise."""
    time_ = pd.date_range("2000-01-01", periods=NT, freq="D")
    lat = np.linspace(90.0, -90.0, NLAT)
    lon = np.linspace(0.0, 360.0, NLON, endpoint=False)
    rng = np.random.default_rng(0)
    doy = (time_.day_of_year.values.astype(np.float32) / np.float32(365.25))[:, None, None]
    la = np.deg2rad(lat).astype(np.float32)[None, :, None]
    lo = np.deg2rad(lon).astype(np.float32)[None, None, :]
    data = rng.standard_normal((NT, NLAT, NLON), dtype=np.float32)
    data *= np.float32(0.5)
    data += np.float32(250.0) + np.float32(40.0) * np.cos(la)
    data += np.float32(10.0) * np.sin(np.float32(2 * np.pi) * doy) * np.sin(la)
    data += np.float32(3.0) * np.cos(lo)
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), data, {"units": "K", "long_name": "t2m"})},
        coords={
            "time": time_,
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
        attrs={"title": "compare_convert"},
    )


def write_files(ds: xr.Dataset, directory: str, freq: str) -> list[str]:
    os.makedirs(directory, exist_ok=True)
    edges = [*pd.date_range("2000-01-01", "2004-01-01", freq=freq)]
    paths = []
    for a, b in zip(edges[:-1], edges[1:], strict=True):
        path = os.path.join(directory, f"t2m-{a:%Y-%m}.nc")
        ds.sel(time=slice(a, b - pd.Timedelta(days=1))).to_netcdf(path)
        paths.append(path)
    return paths


@contextlib.contextmanager
def fresh(path: str) -> Iterator[str]:
    shutil.rmtree(path, ignore_errors=True)
    yield path
    shutil.rmtree(path, ignore_errors=True)


def timed(fn: Callable[[], Any], repeats: int) -> tuple[list[float], Any]:
    times, result = [], None
    for _ in range(repeats):
        t0 = time.perf_counter()
        result = fn()
        times.append(time.perf_counter() - t0)
    return times, result


def xarray_baseline(files: list[str], store: str, chunk: int) -> None:
    from xarray_zarrwrite._compression import parse_compression

    with fresh(store), xr.open_mfdataset(files, combine="by_coords") as ds:
        ds.chunk({"time": chunk}).to_zarr(
            store,
            mode="w",
            zarr_format=3,
            consolidated=False,
            encoding={
                "t2m": {
                    "chunks": (chunk, NLAT, NLON),
                    "compressors": parse_compression("default", 3),
                }
            },
        )


def run_convert(files: list[str], store: str, chunk: int, **kw: Any) -> Any:
    from xarray_zarrwrite.convert import convert

    with fresh(store):
        report = convert(
            files,
            store,
            chunks={"time": chunk, "lat": -1, "lon": -1},
            resume=False,
            progress=False,
            **kw,
        )
        assert report.ok, report.summary()
        return report


def verify(files: list[str], store: str, chunk: int, expected: xr.Dataset) -> None:
    """One convert output against the data itself, bit for bit (not timed)."""
    from xarray_zarrwrite.convert import convert

    with fresh(store):
        convert(files, store, chunks={"time": chunk}, resume=False, progress=False)
        back = xr.open_zarr(store, chunks=None).t2m.values
        assert back.tobytes() == expected.t2m.values.tobytes(), "convert output differs!"


class Table:
    def __init__(self) -> None:
        self.rows: list[tuple[str, ...]] = []

    def add(self, fig: str, case: str, method: str, times: list[float], ref: float | None) -> None:
        med = statistics.median(times)
        ratio = f"{ref / med:.2f}x" if ref else ""
        mbs = f"{NT * NLAT * NLON * 4 / 1e6 / med:.0f}"
        spread = f"{med:.2f} ({min(times):.2f})"
        self.rows.append((fig, case, method, spread, mbs, ratio))
        print(f"  {case:<24} {method:<40} {spread:>14} s {mbs:>6} MB/s {ratio:>7}", flush=True)

    def show(self) -> None:
        head = ("fig", "case", "method", "median (min) s", "MB/s", "speed-up vs xarray")
        widths = [max(len(str(r[i])) for r in [head, *self.rows]) for i in range(6)]
        line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
        print("\n" + line + "\n" + "-" * len(line))
        for r in self.rows:
            print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat; fewer memory limits")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    parser.add_argument("--no-dask", action="store_true", help="skip the LocalCluster rows")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    work = args.dir or tempfile.mkdtemp(prefix="xzw-compare-")
    os.makedirs(work, exist_ok=True)
    from dask.utils import format_bytes

    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), work dir {work}")
    t0 = time.perf_counter()
    ds = make_data()
    yearly = write_files(ds, os.path.join(work, "yearly"), "YS")
    monthly = write_files(ds, os.path.join(work, "monthly"), "MS")
    print(
        f"data: {ds.t2m.nbytes / 1e6:.0f} MB, {len(yearly)} yearly and {len(monthly)} monthly "
        f"NetCDF files, made in {time.perf_counter() - t0:.1f} s"
    )
    out = os.path.join(work, "out.zarr")
    verify(yearly, out, 100, ds)
    table = Table()
    try:
        # cold: the very first convert of this process starts the pool's forkserver
        cold, _ = timed(lambda: run_convert(yearly, out, 73, max_workers=2), 1)
        print("figure 1: 4 yearly files, 2 workers")
        for chunk in (73, 100):
            case = f"yearly, chunk {chunk}"
            base, _ = timed(lambda c=chunk: xarray_baseline(yearly, out, c), repeats)
            ref = statistics.median(base)
            table.add("1", case, "xr.open_mfdataset().to_zarr()", base, None)
            if chunk == 73:
                table.add("1", case, "convert, 2 workers, cold (1st call)", cold, ref)
            warm, _ = timed(lambda c=chunk: run_convert(yearly, out, c, max_workers=2), repeats)
            table.add("1", case, "convert, 2 workers", warm, ref)

        print("figure 2: 48 monthly files")
        for chunk in (73, 100):
            case = f"monthly, chunk {chunk}"
            base, _ = timed(lambda c=chunk: xarray_baseline(monthly, out, c), repeats)
            ref = statistics.median(base)
            table.add("2", case, "xr.open_mfdataset().to_zarr()", base, None)
            for n in (1, 2):
                t, _ = timed(
                    lambda c=chunk, n=n: run_convert(monthly, out, c, max_workers=n), repeats
                )
                table.add("2", case, f"convert, {n} worker(s)", t, ref)

        print("figure 3: peak RSS per worker vs memory_limit (yearly, chunk 100)")
        limits: list[Any] = [None, "1GB", "400MB"] if not args.quick else [None, "400MB"]
        mem_rows = []
        for limit in limits:
            report = run_convert(yearly, out, 100, max_workers=2, memory_limit=limit)
            mem_rows.append(("local pool", limit, report))
        if not args.no_dask:
            from distributed import Client, LocalCluster

            with (
                LocalCluster(
                    n_workers=2, threads_per_worker=1, memory_limit="1GB", dashboard_address=None
                ) as cluster,
                Client(cluster) as client,
            ):
                run_convert(yearly, out, 100, client=client)  # warm the workers up
                t, report = timed(lambda: run_convert(yearly, out, 100, client=client), repeats)
                table.add("1", "yearly, chunk 100", "convert on LocalCluster(2x1)", t, None)
                mem_rows.append(("LocalCluster 2x1", "1GB", report))
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    table.show()
    print("\nfigure 3: peak RSS per worker")
    print(
        f"{'executor':<18} {'memory_limit':<12} {'limit/worker':>12} {'task estimate':>14} "
        f"{'tasks':>5}  peak RSS per worker"
    )
    for name, limit, report in mem_rows:
        peaks = ", ".join(format_bytes(w.peak_rss) for w in report.workers)
        print(
            f"{name:<18} {limit or 'auto':<12} {format_bytes(report.memory_limit or 0):>12} "
            f"{format_bytes(report.task_memory_estimate):>14} {report.ntasks:>5}  {peaks}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
