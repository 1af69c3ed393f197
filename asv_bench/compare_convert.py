"""Figures of issue 12 for ``xarray_zarrwrite.convert``, all measured in one run.

Usage::

    python asv_bench/compare_convert.py            # 3 repeats of the warm rows (a few minutes)
    python asv_bench/compare_convert.py --quick    # 1 repeat; daily files at 60 x 120
    python asv_bench/compare_convert.py --only 1   # one figure (1, 2, 3 or 4)

Data: daily 1461 x 120 x 240 float32 (168 MB), one variable, uncompressed NetCDF4 sources;
blosc zstd-3 + shuffle output for every method.

The xarray baseline is exactly ``xr.open_mfdataset(files).chunk({"time": C}).to_zarr(store,
encoding=<the same chunks and compressors>)``. The floor (``floor_convert.py``) reads the raw
bytes with h5py and compresses them per output chunk with the same codec on 2 threads, nothing
else in between. "cold" is the first call in a fresh process (a child process that imports
everything first: imports are excluded on both sides); "warm" rows are medians of repeats in
this process (min in brackets); "cold" rows are medians (min) of ``--repeats`` fresh
processes, the methods interleaved in a rotating order.

1. 4 yearly files, time chunk 73 and 100: convert vs the xarray baseline (goal >= 1.5x) and
   vs the floor (goal <= 1.3x), cold and warm.
2. 1,461 daily files: convert vs ``open_mfdataset(files).to_zarr()`` (goal >= 10x).
3. 48 monthly files: convert with 1 vs 2 workers.
4. Peak RSS against ``memory_limit``, 3 limits, each in a fresh process.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import statistics
import subprocess
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
        path = os.path.join(directory, f"t2m-{a:%Y-%m-%d}.nc")
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
    def __init__(self, nbytes: int) -> None:
        self.rows: list[tuple[str, ...]] = []
        self.nbytes = nbytes

    def add(
        self, fig: str, case: str, method: str, times: list[float], refs: dict[str, float]
    ) -> float:
        """A row; ``refs``: {label: seconds} of the rows it is compared with."""
        med = statistics.median(times)
        ratios = ", ".join(f"{ref / med:.2f}x vs {label}" for label, ref in refs.items())
        mbs = f"{self.nbytes / 1e6 / med:.0f}"
        spread = f"{med:.2f} ({min(times):.2f})" if len(times) > 1 else f"{med:.2f}"
        self.rows.append((fig, case, method, spread, mbs, ratios))
        print(f"  {case:<22} {method:<44} {spread:>13} s {mbs:>5} MB/s  {ratios}", flush=True)
        return med

    def show(self) -> None:
        head = ("fig", "case", "method", "median (min) s", "MB/s", "speed-up (ref / this)")
        widths = [max(len(str(r[i])) for r in [head, *self.rows]) for i in range(6)]
        line = " | ".join(h.ljust(w) for h, w in zip(head, widths, strict=True))
        print("\n" + line + "\n" + "-" * len(line))
        for r in self.rows:
            print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths, strict=True)))


# --- cold runs: a fresh child process, imports done before the clock starts ----------------


def _child(argv: list[str]) -> int:
    """``--child KIND JSON``: import everything, then time one call; prints a JSON line."""
    kind, spec = argv[0], json.loads(argv[1])
    import dask.array  # noqa: F401
    import h5py  # noqa: F401
    import netCDF4  # noqa: F401

    import xarray_zarrwrite.convert  # noqa: F401

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import floor_convert

    files, store, chunk = spec["files"], spec["store"], spec["chunk"]
    t0 = time.perf_counter()
    peak = 0
    if kind == "convert":
        report = run_convert(files, store, chunk, **spec.get("kw", {}))
        peak = max(w.peak_rss for w in report.workers)
    elif kind == "xarray":
        xarray_baseline(files, store, chunk)
    elif kind == "xarray-plain":
        xarray_plain(files, store)
    else:
        floor_convert.floor(files, "t2m", chunk, store)
        shutil.rmtree(store, ignore_errors=True)
    print(json.dumps({"seconds": time.perf_counter() - t0, "peak_rss": peak}))
    return 0


def cold(kind: str, files: list[str], store: str, chunk: int, **kw: Any) -> dict[str, Any]:
    spec = json.dumps({"files": files, "store": store, "chunk": chunk, "kw": kw})
    out = subprocess.run(
        [sys.executable, os.path.abspath(__file__), "--child", kind, spec],
        check=True,
        capture_output=True,
        text=True,
    )
    return dict(json.loads(out.stdout.strip().splitlines()[-1]))


def xarray_plain(files: list[str], store: str) -> None:
    """``xr.open_mfdataset(files).to_zarr(store)``, as issue 12 names it for daily files."""
    with fresh(store), xr.open_mfdataset(files, combine="by_coords") as ds:
        ds.to_zarr(store, mode="w", zarr_format=3, consolidated=False)


def floor(files: list[str], store: str, chunk: int) -> None:
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import floor_convert

    with fresh(store):
        floor_convert.floor(files, "t2m", chunk, store)


# --- the figures ---------------------------------------------------------------------------


def figure1(table: Table, yearly: list[str], out: str, repeats: int) -> None:
    print("figure 1: 4 yearly files, 2 workers (threads)")
    for chunk in (73, 100):
        case = f"yearly, chunk {chunk}"
        runs = colds(
            {
                "xarray": lambda c=chunk: cold("xarray", yearly, out, c),
                "floor": lambda c=chunk: cold("floor", yearly, out, c),
                "convert": lambda c=chunk: cold("convert", yearly, out, c, max_workers=2),
            },
            repeats,
        )
        xr_cold = table.add("1", case, "xarray baseline, cold", runs["xarray"], {})
        fl_cold = table.add("1", case, "floor (h5py + codec, 2 threads), cold", runs["floor"], {})
        refs = {"xarray": xr_cold, "floor": fl_cold}
        table.add("1", case, "convert, cold", runs["convert"], refs)
        base, _ = timed(lambda c=chunk: xarray_baseline(yearly, out, c), repeats)
        low, _ = timed(lambda c=chunk: floor(yearly, out, c), repeats)
        xr_w = table.add("1", case, "xarray baseline, warm", base, {})
        fl_w = table.add("1", case, "floor, warm", low, {})
        warm, _ = timed(lambda c=chunk: run_convert(yearly, out, c, max_workers=2), repeats)
        table.add("1", case, "convert, warm", warm, {"xarray": xr_w, "floor": fl_w})


def figure2(table: Table, daily: list[str], out: str, repeats: int) -> None:
    print(f"figure 2: {len(daily)} daily files (cold: a fresh process per call)")
    runs = colds(
        {
            "xarray": lambda: cold("xarray-plain", daily, out, 1),
            **{
                f"chunk {c}": lambda c=c: cold("convert", daily, out, c, max_workers=2)
                for c in (1, 73)
            },
        },
        repeats,
    )
    case = f"{len(daily)} daily"
    plain = table.add("2", case, "xr.open_mfdataset(files).to_zarr(), cold", runs["xarray"], {})
    for chunk in (1, 73):
        table.add(
            "2", case, f"convert, chunk {chunk}, cold", runs[f"chunk {chunk}"], {"xarray": plain}
        )


def colds(kinds: dict[str, Callable[[], dict[str, Any]]], repeats: int) -> dict[str, list[float]]:
    """``repeats`` cold runs of each kind, interleaved and in a rotating order (so that no kind
    always runs first after a pause, or always after another's page-cache writes)."""
    names = list(kinds)
    out: dict[str, list[float]] = {n: [] for n in names}
    for r in range(repeats):
        for name in names[r % len(names) :] + names[: r % len(names)]:
            out[name].append(kinds[name]()["seconds"])
    return out


def figure3(table: Table, monthly: list[str], out: str, repeats: int) -> None:
    print("figure 3: 48 monthly files, 1 vs 2 workers (chunk 73)")
    base, _ = timed(lambda: xarray_baseline(monthly, out, 73), repeats)
    ref = table.add("3", "monthly, chunk 73", "xarray baseline, warm", base, {})
    one = None
    for n in (1, 2):
        t, _ = timed(lambda n=n: run_convert(monthly, out, 73, max_workers=n), repeats)
        refs = {"xarray": ref} if one is None else {"xarray": ref, "1 worker": one}
        med = table.add("3", "monthly, chunk 73", f"convert, {n} worker(s), warm", t, refs)
        one = one or med


def figure4(yearly: list[str], out: str) -> list[tuple[str, float, int]]:
    print("figure 4: peak RSS vs memory_limit (yearly, chunk 100, 2 workers, fresh process each)")
    rows = []
    for limit in ("300MB", "600MB", "1200MB"):
        got = cold("convert", yearly, out, 100, max_workers=2, memory_limit=limit)
        rows.append((limit, got["seconds"], int(got["peak_rss"])))
        print(f"  {limit}: peak RSS {got['peak_rss'] / 1e6:.0f} MB in {got['seconds']:.2f} s")
    return rows


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--child"]:
        return _child(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat; smaller daily files")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--only", action="append", choices=["1", "2", "3", "4"])
    parser.add_argument("--dir", help="work directory (default: a temporary one; kept if given)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    figures = set(args.only or ["1", "2", "3", "4"])
    work = args.dir or tempfile.mkdtemp(prefix="xzw-compare-")
    os.makedirs(work, exist_ok=True)
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPU(s), work dir {work}")
    print("load average before:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    t0 = time.perf_counter()
    ds = make_data()
    yearly = write_files(ds, os.path.join(work, "yearly"), "YS")
    monthly = write_files(ds, os.path.join(work, "monthly"), "MS") if "3" in figures else []
    daily: list[str] = []
    if "2" in figures:
        small = ds.isel(lat=slice(None, None, 2), lon=slice(None, None, 2)) if args.quick else ds
        daily = write_files(small, os.path.join(work, "daily"), "D")
    print(
        f"data: {ds.t2m.nbytes / 1e6:.0f} MB; {len(yearly)} yearly, {len(monthly)} monthly, "
        f"{len(daily)} daily NetCDF files, made in {time.perf_counter() - t0:.1f} s"
    )
    out = os.path.join(work, "out.zarr")
    verify(yearly, out, 100, ds)
    table = Table(int(ds.t2m.nbytes))
    mem: list[tuple[str, float, int]] = []
    try:
        if "1" in figures:
            figure1(table, yearly, out, repeats)
        if "2" in figures:
            figure2(table, daily, out, repeats)
        if "3" in figures:
            figure3(table, monthly, out, repeats)
        if "4" in figures:
            mem = figure4(yearly, out)
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    table.show()
    if mem:
        print("\nfigure 4: peak RSS of the (one) worker process vs memory_limit")
        for limit, sec, peak in mem:
            print(f"  memory_limit {limit:>7}: peak RSS {peak / 1e6:6.0f} MB ({sec:.2f} s)")
    print("load average after:", " ".join(f"{x:.2f}" for x in os.getloadavg()))
    return 0


if __name__ == "__main__":
    sys.exit(main())
