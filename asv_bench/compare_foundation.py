"""Measure the foundation's three comparison figures, ours against the alternative.

Run from the repository root::

    .venv/bin/python asv_bench/compare_foundation.py [--repeats 3] [--cases 1,2,3]
        [--calls next,first,dask]

Every case is timed ``--repeats`` times (best kept), ours and the alternative alternating in
each repeat, each on a fresh template. After every timed write (outside the timed part) the
data is read back and compared with the source bit for bit. The result is a markdown table on
stdout; progress goes to stderr.

The cases (data and chunking are defined in ``asv_bench/benchmarks/__init__.py``, shared with
the asv benchmarks):

1. a region write of 20 float32 variables x 4 chunks of (1, 64, 64) into a MemoryStore behind
   20 ms latency per get and per set (``zarr.testing.store.LatencyStore``): ``write_region``
   against xarray's ``to_zarr(region={"time": slice})``, into the same template. "next": the
   process wrote another region of this template before (as in a long job; our template
   metadata is cached); "first": the first write of the process into the template;
   "dask": as "next", from dask-backed data with one block per chunk;
2. a template of 100 float32 variables x 1,000,000 hourly steps x (10 x 10), time chunk 8760:
   ``to_template`` from one day of example data against xarray's ``to_zarr(compute=False)`` of
   the equivalent lazy dataset (dask, same chunks and compressor; building it is not timed);
   store writes are the write requests that reach the MemoryStore;
3. four yearly NumPy-backed datasets of daily 120 x 240 float32 (1461 days, 168 MB) written
   one after another into a template on local disk (time chunk 1 day: the only uniform chunking
   on which every yearly region is aligned; 1461 chunks of 112.5 KiB, blosc zstd 3 + shuffle).
"""

from __future__ import annotations

import argparse
import math
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import dask
import numpy as np
import xarray as xr
import zarr
from benchmarks import (
    LATENCY_NVARS,
    LATENCY_S,
    LONG_CHUNKS,
    LONG_NTIME,
    LONG_NVARS,
    LONG_TIME_CHUNK,
    CountingStore,
    check_long_template,
    check_region,
    latency_case,
    latency_region,
    latency_store,
    latency_template,
    long_time_axis,
    long_time_example,
    long_time_lazy,
    long_time_xarray_encoding,
    yearly_files,
    yearly_regions,
    yearly_template,
)
from zarr.storage import MemoryStore

import xarray_zarrwrite as xzw


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def timed(run: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    run()
    return time.perf_counter() - t0


class Best:
    """Best (lowest) time of each side over the repeats."""

    def __init__(self) -> None:
        self.ours = math.inf
        self.theirs = math.inf
        self.extra: dict[str, Any] = {}

    def add(self, ours: float, theirs: float) -> None:
        self.ours = min(self.ours, ours)
        self.theirs = min(self.theirs, theirs)


# --- case 1 -----------------------------------------------------------------------------------


def case_latency(repeats: int, call: str) -> Best:
    full = latency_case()
    warm_sel, sel = latency_region(0), latency_region(1)
    region = {"time": sel}
    best = Best()
    for i in range(repeats):
        part = full.isel(time=sel)
        ours_mem, theirs_mem = latency_template(full), latency_template(full)
        ours, theirs = latency_store(ours_mem), latency_store(theirs_mem)
        if call != "first":
            # the process wrote another region of this template before
            warm = full.isel(time=warm_sel)
            xzw.write_region(warm, ours, region={"time": warm_sel})
            warm.drop_vars(["lat", "lon"]).to_zarr(theirs, region={"time": warm_sel}, mode="r+")
        if call == "dask":
            part = part.chunk({"time": 1})
        part_xr = part.drop_vars(["lat", "lon"])

        def run_ours(part: xr.Dataset = part, ours: Any = ours) -> None:
            xzw.write_region(part, ours, region=region)

        def run_theirs(part_xr: xr.Dataset = part_xr, theirs: Any = theirs) -> None:
            part_xr.to_zarr(theirs, region=region, mode="r+")

        if i % 2:
            t_theirs, t_ours = timed(run_theirs), timed(run_ours)
        else:
            t_ours, t_theirs = timed(run_ours), timed(run_theirs)
        expected = full.isel(time=sel)
        check_region(ours_mem, expected, region)
        check_region(theirs_mem, expected, region)
        if call != "first":
            check_region(ours_mem, full.isel(time=warm_sel), {"time": warm_sel})
        best.add(t_ours, t_theirs)
        log(f"  1 {call}: ours {t_ours:.3f} s, xarray {t_theirs:.3f} s (read back: identical)")
    return best


# --- case 2 -----------------------------------------------------------------------------------


def case_template(repeats: int) -> Best:
    example = long_time_example()
    end = long_time_axis()[-1]
    lazy = long_time_lazy()
    encoding = long_time_xarray_encoding(lazy)
    best = Best()
    for i in range(repeats):
        ours, theirs = CountingStore(MemoryStore()), CountingStore(MemoryStore())

        def run_ours(ours: CountingStore = ours) -> None:
            xzw.to_template(example, ours, global_end=end, freq="h", chunks=LONG_CHUNKS)

        def run_theirs(theirs: CountingStore = theirs) -> None:
            lazy.to_zarr(theirs, compute=False, zarr_format=3, encoding=encoding)

        if i % 2:
            t_theirs, t_ours = timed(run_theirs), timed(run_ours)
        else:
            t_ours, t_theirs = timed(run_ours), timed(run_theirs)
        writes = tuple(
            f"{s.writes} ({s.sets} set + {s.conditional} set_if_not_exists)" for s in (ours, theirs)
        )
        check_long_template(ours._store)
        check_long_template(theirs._store)
        best.add(t_ours, t_theirs)
        best.extra["writes"] = writes
        log(
            f"  2: ours {t_ours:.3f} s, {writes[0]} writes; xarray {t_theirs:.3f} s, "
            f"{writes[1]} writes (read back: identical)"
        )
    return best


# --- case 3 -----------------------------------------------------------------------------------


def case_yearly(repeats: int) -> Best:
    files = yearly_files()
    regions = yearly_regions(files)
    files_xr = [f.drop_vars(["lat", "lon"]) for f in files]
    best = Best()
    for i in range(repeats):
        tmp = Path(tempfile.mkdtemp(prefix="xzw-compare-"))
        try:
            ours, theirs = str(tmp / "ours.zarr"), str(tmp / "xarray.zarr")
            yearly_template(files, ours)
            yearly_template(files, theirs)

            def run_ours(ours: str = ours) -> None:
                for f in files:
                    xzw.write_region(f, ours)

            def run_theirs(theirs: str = theirs) -> None:
                for f, sel in zip(files_xr, regions, strict=True):
                    f.to_zarr(theirs, region={"time": sel}, mode="r+")

            if i % 2:
                t_theirs, t_ours = timed(run_theirs), timed(run_ours)
            else:
                t_ours, t_theirs = timed(run_ours), timed(run_theirs)
            for f, sel in zip(files, regions, strict=True):
                check_region(ours, f, {"time": sel})
                check_region(theirs, f, {"time": sel})
            nfiles = sum(1 for p in Path(ours, "t2m").rglob("*") if p.is_file())
            assert nfiles == 1 + sum(f.sizes["time"] for f in files), nfiles  # zarr.json + chunks
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        best.add(t_ours, t_theirs)
        log(f"  3: ours {t_ours:.3f} s, xarray {t_theirs:.3f} s (read back: identical)")
    return best


# --- table ------------------------------------------------------------------------------------


def row(case: str, best: Best, writes: str = "") -> str:
    ratio = best.theirs / best.ours
    return f"| {case} | {best.ours:.3f} | {best.theirs:.3f} | {ratio:.1f}x | {writes} |"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=3, help="best of N (default 3)")
    parser.add_argument("--cases", default="1,2,3", help="comma-separated subset of 1,2,3")
    parser.add_argument(
        "--calls", default="next,first,dask", help="case 1's variants: subset of next,first,dask"
    )
    args = parser.parse_args(argv)
    cases = {c.strip() for c in args.cases.split(",")}
    calls = {c.strip() for c in args.calls.split(",")}
    load0 = os.getloadavg()[0]
    rows = []
    if "1" in cases:
        for call, label in (
            ("next", "template written before"),
            ("first", "first write of the process"),
            ("dask", "template written before, dask-backed data"),
        ):
            if call not in calls:
                continue
            log(f"case 1 ({call})")
            best = case_latency(args.repeats, call)
            rows.append(
                row(
                    f"1. region write, {LATENCY_NVARS} vars x 4 chunks, "
                    f"{LATENCY_S * 1000:.0f} ms latency: {label}",
                    best,
                )
            )
    if "2" in cases:
        log("case 2")
        best = case_template(args.repeats)
        w_ours, w_theirs = best.extra["writes"]
        rows.append(
            row(
                f"2. template, {LONG_NVARS} vars x {LONG_NTIME:,} hourly steps x 10 x 10, "
                f"time chunk {LONG_TIME_CHUNK}",
                best,
                f"{w_ours} vs {w_theirs}",
            )
        )
    if "3" in cases:
        log("case 3")
        best = case_yearly(args.repeats)
        rows.append(
            row("3. 4 yearly files, daily 1461 x 120 x 240 float32 (168 MB), local disk", best)
        )
    load1 = os.getloadavg()[0]
    print(
        f"Best of {args.repeats}; Python {platform.python_version()}, "
        f"xarray_zarrwrite {xzw.__version__}, xarray {xr.__version__}, zarr {zarr.__version__}, "
        f"dask {dask.__version__}, numpy {np.__version__}; {os.cpu_count()} CPUs, "
        f"load average {load0:.1f} -> {load1:.1f}. Alternative: xarray `to_zarr`. "
        "Every write read back bit for bit."
    )
    print()
    print("| case | ours (s) | alternative (s) | ratio | store writes (ours vs alternative) |")
    print("|---|---:|---:|---:|---|")
    for r in rows:
        print(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
