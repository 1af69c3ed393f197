"""Replay of streaming inference output (the Earth2Studio case), ours vs xarray vs zarr-python.

An 8-member ensemble, 1 initial time, 21 lead times, ``t2m`` and ``tcwv`` on a 721 x 1440
float32 grid (smooth fields plus small noise), template chunks (8, 1, 1, 721, 1440), blosc zstd
level 3 with shuffle, one lead time per step (66 MB). In one run:

1. with a fake model step of 0.3 s that leaves the CPU idle (like a GPU model): the time the
   caller spends inside write calls over the 21 steps;
2. with no model step: the time until everything is durable, against the two-core compression
   bound (the measured time to blosc-compress every chunk on two threads);
3. the peak extra resident memory of our writer against ``max_inflight_mb``;
4. the 20 ms-latency store case (20 variables x 4 chunks) through ``BufferedStore``.

Run: ``.venv/bin/python asv_bench/replay_stream.py`` (``--steps 5`` for a quick look).
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
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


def make_template(path: Path, steps: list[xr.Dataset]) -> None:
    lead = np.array([s.lead_time.values[0] for s in steps])
    steps[0].fastzarr.to_template(
        str(path),
        extent={"lead_time": lead},
        chunks={"ensemble": 8, "time": 1, "lead_time": 1, "lat": -1, "lon": -1},
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


def run_ours(path, steps, model_s, max_inflight_mb):
    inside = 0.0
    t0 = time.perf_counter()
    mem = RSSPeak()
    with xzw.StreamWriter(str(path), max_inflight_mb=max_inflight_mb) as writer:
        for step in steps:
            time.sleep(model_s)
            a = time.perf_counter()
            writer.write(step)
            inside += time.perf_counter() - a
    total = time.perf_counter() - t0
    return inside, total, mem.stop()


def run_xarray(path, steps, model_s):
    inside = 0.0
    t0 = time.perf_counter()
    for k, step in enumerate(steps):
        time.sleep(model_s)
        a = time.perf_counter()
        step.drop_vars(["ensemble", "time", "lat", "lon"]).to_zarr(
            str(path), region={"lead_time": slice(k, k + 1)}, mode="r+"
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


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--steps", type=int, default=21)
    p.add_argument("--model-step", type=float, default=0.3)
    p.add_argument("--max-inflight-mb", type=float, default=512)
    args = p.parse_args()
    steps = make_steps(args.steps)
    mb = sum(s.nbytes for s in steps) / 2**20
    work = Path(tempfile.mkdtemp(prefix="xzw-replay-"))
    rows = []
    try:
        for model_s in (args.model_step, 0.0):
            res = {}
            for name in ("ours", "xarray", "zarr"):
                path = work / f"{name}-{model_s}.zarr"
                make_template(path, steps)
                if name == "ours":
                    inside, total, extra = run_ours(path, steps, model_s, args.max_inflight_mb)
                elif name == "xarray":
                    (inside, total), extra = run_xarray(path, steps, model_s), None
                else:
                    (inside, total), extra = run_zarr(path, steps, model_s), None
                verify(path, steps)
                res[name] = (inside, total, extra)
                shutil.rmtree(path)
            rows.append((model_s, res))
        bound = compression_bound(steps)
        lat = latency_case()
    finally:
        shutil.rmtree(work, ignore_errors=True)

    print(f"\n{args.steps} steps, {mb:.0f} MiB raw, blosc zstd-3 shuffle, 2 cores")
    print(f"two-core compression bound: {bound:.2f} s\n")
    print(
        "| model step | writer | time inside write calls (s) | time until durable (s) | peak extra RSS (MiB) |"
    )
    print("| --- | --- | --- | --- | --- |")
    for model_s, res in rows:
        for name, (inside, total, extra) in res.items():
            rss = f"{extra:.0f} (limit {args.max_inflight_mb:.0f})" if extra is not None else ""
            print(f"| {model_s:.1f} s | {name} | {inside:.3f} | {total:.2f} | {rss} |")
    (_, r0), (_, r1) = rows
    print(
        f"\nratios: caller time xarray/ours {r0['xarray'][0] / r0['ours'][0]:.1f}x (model step); "
        f"durable time xarray/ours {r1['xarray'][1] / r1['ours'][1]:.2f}x, "
        f"ours/bound {r1['ours'][1] / bound:.2f}x (no model step)"
    )
    print(
        f"20 ms latency, 20 vars x 4 chunks: ours {lat[0]:.3f} s, through BufferedStore "
        f"{lat[1]:.3f} s, xarray {lat[2]:.3f} s ({lat[2] / lat[1]:.1f}x)"
    )


if __name__ == "__main__":
    main()
