"""Replay of streaming inference output (the Earth2Studio case), ours vs xarray vs zarr-python.

An 8-member ensemble, 1 initial time, 21 lead times, ``t2m`` and ``tcwv`` on a 721 x 1440
float32 grid (smooth fields plus small noise), template chunks (8, 1, L, 721, 1440) with
``lead_time`` chunk L = 1 and L = 7 (``--lead-chunks``), blosc zstd level 3 with shuffle, one
lead time per step (66 MB). Writers: ours (:class:`StreamWriter`, which assembles the steps of
a 7-step chunk in memory and writes each chunk once), xarray ``to_zarr(region=...)`` per step
(``safe_chunks=False`` where a step is part of a chunk: read-modify-write), and Earth2Studio-
style per-step writes (zarr ``Array.__setitem__`` per step: read-modify-write too). In one run:

1. with a fake model step of 0.3 s that leaves the CPU idle (like a GPU model): the time the
   caller spends inside write calls over the 21 steps (exposed time);
2. with no model step: the time until everything is durable, against the two-core compression
   bound (the measured time to blosc-compress every chunk on two threads);
3. bytes written to the store (``write()`` syscall bytes of the process: read-modify-write
   shows here) and the peak extra resident memory of each writer;
4. the 20 ms-latency store case (20 variables x 4 chunks) through ``BufferedStore``.

Run: ``.venv/bin/python asv_bench/replay_stream.py`` (``--steps 5`` for a quick look).
``--durable-only`` measures only time-to-durable (lead_time chunk 1, no model step) against
the bound, interleaved ``--repeats`` times in one run: ours with the default snapshot, ours
with ``borrow=True`` (no snapshot copy), alternating which runs first, the bound before and
after each, and the process CPU seconds of each (the CPU ratio does not depend on what else the
machine runs; the wall ratio does: the load average is printed), with the page faults and new
snapshot-pool buffers of each run.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import os
import resource
import shutil
import tempfile
import threading
import time
from pathlib import Path

import numcodecs
import numpy as np
import pandas as pd
import psutil
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

import xarray_zarrwrite as xzw

MEMBERS, NLAT, NLON = 8, 721, 1440
COMPRESSION = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def make_steps(nsteps: int) -> list[xr.Dataset]:
    lat = np.linspace(90, -90, NLAT)
    lon = np.linspace(0, 360, NLON, endpoint=False)
    la, lo = np.deg2rad(lat)[:, None], np.deg2rad(lon)[None, :]
    rng = np.random.default_rng(0)
    base_t = (250 + 40 * np.cos(la) + 3 * np.cos(lo)).astype("f4")
    base_w = (5 + 40 * np.cos(la) ** 4 * (1 + 0.3 * np.sin(3 * lo))).astype("f4")
    steps = []
    for k in range(nsteps):
        shape = (MEMBERS, 1, 1, NLAT, NLON)
        t2m = base_t + 0.02 * k + rng.normal(0, 0.05, shape).astype("f4")
        tcwv = base_w + 0.01 * k + rng.normal(0, 0.05, shape).astype("f4")
        steps.append(
            xr.Dataset(
                {
                    "t2m": (("ensemble", "time", "lead_time", "lat", "lon"), t2m),
                    "tcwv": (("ensemble", "time", "lead_time", "lat", "lon"), tcwv),
                },
                coords={
                    "ensemble": np.arange(MEMBERS),
                    "time": [np.datetime64("2026-01-01T00:00", "ns")],
                    "lead_time": [np.timedelta64(6 * k, "h").astype("m8[ns]")],
                    "lat": lat,
                    "lon": lon,
                },
            )
        )
    return steps


def make_template(path: Path, steps: list[xr.Dataset], lead_chunk: int = 1) -> None:
    lead = np.array([s.lead_time.values[0] for s in steps])
    steps[0].fastzarr.to_template(
        str(path),
        extent={"lead_time": lead},
        chunks={"ensemble": 8, "time": 1, "lead_time": lead_chunk, "lat": -1, "lon": -1},
        compression=COMPRESSION,
        mode="w",
    )


class RSSPeak:
    """Samples the process RSS in a thread; ``.extra`` is the peak above the start."""

    def __init__(self) -> None:
        self.proc = psutil.Process()
        self.start = self.proc.memory_info().rss
        self.peak = self.start
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.wait(0.002):
            self.peak = max(self.peak, self.proc.memory_info().rss)

    def stop(self) -> float:
        self._stop.set()
        self._t.join()
        return (self.peak - self.start) / 2**20


def written_bytes() -> int:
    """Bytes this process has passed to ``write()`` so far (Linux ``wchar``)."""
    return int(psutil.Process().io_counters().write_chars)


def run_ours(path, steps, model_s, max_inflight_mb, borrow=False):
    inside = 0.0
    t0 = time.perf_counter()
    with xzw.StreamWriter(str(path), max_inflight_mb=max_inflight_mb, borrow=borrow) as writer:
        for step in steps:
            time.sleep(model_s)
            a = time.perf_counter()
            writer.write(step)
            inside += time.perf_counter() - a
    return inside, time.perf_counter() - t0


def run_xarray(path, steps, model_s):
    inside = 0.0
    t0 = time.perf_counter()
    for k, step in enumerate(steps):
        time.sleep(model_s)
        a = time.perf_counter()
        step.drop_vars(["ensemble", "time", "lat", "lon"]).to_zarr(
            str(path), region={"lead_time": slice(k, k + 1)}, mode="r+", safe_chunks=False
        )
        inside += time.perf_counter() - a
    return inside, time.perf_counter() - t0


def run_zarr(path, steps, model_s):
    group = zarr.open_group(str(path), mode="r+")
    arrays = {n: group[n] for n in ("t2m", "tcwv")}
    inside = 0.0
    t0 = time.perf_counter()
    for k, step in enumerate(steps):
        time.sleep(model_s)
        a = time.perf_counter()
        for n, arr in arrays.items():
            arr[:, :, k : k + 1] = step[n].values
        inside += time.perf_counter() - a
    return inside, time.perf_counter() - t0


def compression_bound(steps) -> float:
    """Seconds to blosc-compress every chunk on two threads (one chunk per thread)."""
    codec = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    chunks = [np.ascontiguousarray(s[n].values) for s in steps for n in ("t2m", "tcwv")]
    t0 = time.perf_counter()
    with cf.ThreadPoolExecutor(2) as pool:
        list(pool.map(codec.encode, chunks))
    return time.perf_counter() - t0


def verify(path, steps) -> None:
    back = xr.open_zarr(str(path))
    for k, step in enumerate(steps):
        for n in ("t2m", "tcwv"):
            np.testing.assert_array_equal(back[n].isel(lead_time=[k]).values, step[n].values)


def latency_case(repeats: int = 3) -> tuple[float, float, float]:
    """20 variables x 4 chunks into a 20 ms-latency store: BufferedStore vs xarray."""
    from zarr.storage import MemoryStore
    from zarr.testing.store import LatencyStore

    time_index = pd.date_range("2000-01-01", periods=4, freq="D")
    ds = xr.Dataset(
        {
            f"v{i}": (("time", "y"), np.random.default_rng(i).random((4, 64), "f4"))
            for i in range(20)
        },
        coords={"time": time_index},
    )
    best = {"ours": 1e9, "buffered": 1e9, "xarray": 1e9}
    for _ in range(repeats):
        for case in best:
            inner = LatencyStore(MemoryStore(), get_latency=0.02, set_latency=0.02)
            ds.fastzarr.to_template(inner, chunks={"time": 1, "y": 64}, compression=None)
            t0 = time.perf_counter()
            if case == "xarray":
                ds.drop_vars("time").to_zarr(inner, region={"time": slice(0, 4)}, mode="r+")
            elif case == "ours":
                ds.fastzarr.write_region(inner)
            else:
                with xzw.BufferedStore(inner) as store:
                    ds.fastzarr.write_region(store)
            best[case] = min(best[case], time.perf_counter() - t0)
            xr.testing.assert_identical(xr.open_zarr(inner).load(), ds)
    return best["ours"], best["buffered"], best["xarray"]


def budget_mb(lead_chunk: int, given: float) -> float:
    """``given``, or what one open chunk of both variables is charged if that is more (the
    budget rule of chunk assembly: 1.5 x the chunk, plus a byte per element, plus a step)."""
    elems = MEMBERS * lead_chunk * NLAT * NLON
    need = 2 * elems * (4 * 1.5 + 1) + 2 * MEMBERS * NLAT * NLON * 4
    return max(given, need / 2**20) if lead_chunk > 1 else given


def run_one(name, path, steps, model_s, mb):
    """One writer: (exposed s, durable s, MiB written, peak extra RSS MiB)."""
    written = written_bytes()
    mem = RSSPeak()
    if name == "ours":
        inside, total = run_ours(path, steps, model_s, mb)
    elif name == "xarray":
        inside, total = run_xarray(path, steps, model_s)
    else:
        inside, total = run_zarr(path, steps, model_s)
    extra = mem.stop()
    return inside, total, (written_bytes() - written) / 2**20, extra


WRITERS = ("default", "borrow")
WRITERS_NAMES = {"default": "ours", "borrow": "ours borrow"}


def pool_buffers() -> int:
    """Host snapshot buffers the process has allocated so far (the pool only grows when no
    free buffer of a size is left: in steady state it reuses them, with no page faults)."""
    from xarray_zarrwrite._runtime import runtime

    pool = runtime.peek("staging.host_pool")
    return 0 if pool is None else int(pool.allocated)


def durable_case(steps, repeats: int, mb: float, writers: tuple[str, ...] = WRITERS) -> None:
    """Time (and CPU seconds) until durable, ours vs the bound, interleaved in one run.

    The two writers alternate which goes first in each repeat (the first writer of the process
    also pays one-time costs: its snapshot pool's first-touch page faults, blosc's first output
    buffers). Each line gives the process's minor page faults during the writer and the
    snapshot buffers it allocated; the summary gives the medians over every repeat and over
    the steady-state runs (no snapshot buffer allocated).
    """
    work = Path(tempfile.mkdtemp(prefix="xzw-durable-"))
    names = [WRITERS_NAMES[w] for w in writers]
    ratios: dict[str, list[tuple[float, float, int]]] = {name: [] for name in names}
    try:
        for r in range(repeats):
            for name in names if r % 2 == 0 else names[::-1]:
                c0 = time.process_time()
                before = compression_bound(steps)
                cpu_b = time.process_time() - c0
                path = work / f"{r}.zarr"
                make_template(path, steps, 1)
                grown, faults = pool_buffers(), resource.getrusage(resource.RUSAGE_SELF).ru_minflt
                c0 = time.process_time()
                _, total = run_ours(path, steps, 0.0, mb, borrow=name != "ours")
                cpu = time.process_time() - c0
                faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
                grown = pool_buffers() - grown
                c0 = time.process_time()
                after = compression_bound(steps)
                cpu_b = (cpu_b + time.process_time() - c0) / 2
                verify(path, steps)
                shutil.rmtree(path)
                bound = (before + after) / 2
                ratios[name].append((total / bound, cpu / cpu_b, grown))
                print(
                    f"{name:12s} rep {r}: bound {before:.2f}/{after:.2f} s, ours {total:.2f} s, "
                    f"wall {total / bound:.2f}x, cpu {cpu:.2f}/{cpu_b:.2f} s = {cpu / cpu_b:.2f}x, "
                    f"minflt {faults}, new pool buffers {grown}, load {os.getloadavg()[0]:.1f}",
                    flush=True,
                )
    finally:
        shutil.rmtree(work, ignore_errors=True)
    for name, rows in ratios.items():
        steady = [row for row in rows if row[2] == 0]
        line = f"{name}: median time-to-durable / bound {_median(rows, 0):.2f}x, CPU / bound CPU "
        line += f"{_median(rows, 1):.2f}x ({len(rows)} runs)"
        if steady and len(steady) < len(rows):
            line += f"; steady state (no pool growth, {len(steady)} runs): "
            line += f"{_median(steady, 0):.2f}x, CPU {_median(steady, 1):.2f}x"
        print(line)


def _median(rows: list[tuple[float, float, int]], i: int) -> float:
    return float(np.median([row[i] for row in rows]))


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=21)
    p.add_argument("--model-step", type=float, default=0.3)
    p.add_argument("--max-inflight-mb", type=float, default=512)
    p.add_argument("--lead-chunks", type=int, nargs="+", default=[1, 7])
    p.add_argument("--no-latency", action="store_true", help="skip the latency-store case")
    p.add_argument("--durable-only", action="store_true", help="only time-to-durable vs bound")
    p.add_argument("--repeats", type=int, default=3, help="repeats of --durable-only")
    p.add_argument(
        "--writers",
        nargs="+",
        choices=WRITERS,
        default=list(WRITERS),
        help="writers of --durable-only (one, with --repeats 1: the first writer of a process)",
    )
    args = p.parse_args()
    steps = make_steps(args.steps)
    if args.durable_only:
        durable_case(steps, args.repeats, args.max_inflight_mb, tuple(args.writers))
        return
    mb = sum(s.nbytes for s in steps) / 2**20
    work = Path(tempfile.mkdtemp(prefix="xzw-replay-"))
    rows = []
    try:
        for lead_chunk in args.lead_chunks:
            limit = budget_mb(lead_chunk, args.max_inflight_mb)
            for model_s in (args.model_step, 0.0):
                for name in ("ours", "xarray", "zarr"):
                    path = work / f"{name}-{model_s}-{lead_chunk}.zarr"
                    make_template(path, steps, lead_chunk)
                    res = run_one(name, path, steps, model_s, limit)
                    verify(path, steps)
                    rows.append((lead_chunk, limit, model_s, name, res))
                    shutil.rmtree(path)
                    print(f"done: {rows[-1]}", flush=True)  # progress, for long runs
        bound = compression_bound(steps)
        lat = None if args.no_latency else latency_case()
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(args, rows, mb, bound, lat)


def report(args, rows, mb, bound, lat) -> None:
    print(f"\n{args.steps} steps, {mb:.0f} MiB raw, blosc zstd-3 shuffle, 2 cores")
    print(f"two-core compression bound: {bound:.2f} s\n")
    print(
        "| lead_time chunk | model step | writer | exposed time (s) | time until durable (s) "
        "| MiB written | peak extra RSS (MiB) |"
    )
    print("| --- | --- | --- | --- | --- | --- | --- |")
    by = {}
    for lead_chunk, limit, model_s, name, (inside, total, wrote, extra) in rows:
        by[lead_chunk, model_s, name] = (inside, total)
        rss = f"{extra:.0f}" + (f" (limit {limit:.0f})" if name == "ours" else "")
        print(
            f"| {lead_chunk} | {model_s:.1f} s | {name} | {inside:.3f} | {total:.2f} "
            f"| {wrote:.0f} | {rss} |"
        )
    m = args.model_step
    for c in args.lead_chunks:
        ours_e, ours_d = by[c, m, "ours"][0], by[c, 0.0, "ours"][1]
        print(
            f"\nlead_time chunk {c}: exposed xarray/ours {by[c, m, 'xarray'][0] / ours_e:.1f}x, "
            f"zarr/ours {by[c, m, 'zarr'][0] / ours_e:.1f}x (model step); durable "
            f"xarray/ours {by[c, 0.0, 'xarray'][1] / ours_d:.2f}x, "
            f"ours/bound {ours_d / bound:.2f}x (no model step)"
        )
    if lat is None:
        return
    print(
        f"20 ms latency, 20 vars x 4 chunks: ours {lat[0]:.3f} s, through BufferedStore "
        f"{lat[1]:.3f} s, xarray {lat[2]:.3f} s ({lat[2] / lat[1]:.1f}x)"
    )


if __name__ == "__main__":
    main()
