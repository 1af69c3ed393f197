"""Figure: objects written and write time of an hourly archive, time chunk 1 unsharded vs
shards of 24 steps, ours against xarray's ``to_zarr``, in one run.

Usage (from the repository root)::

    .venv/bin/python asv_bench/compare_shards.py --quick          # 30 days of 181 x 360
    .venv/bin/python asv_bench/compare_shards.py                  # 1 year of 721 x 1440
    .venv/bin/python asv_bench/compare_shards.py --steps 2160     # 90 days of 721 x 1440
    .venv/bin/python asv_bench/compare_shards.py --steps 2160 --interleave

Data: one float32 variable ``t2m`` (time, lat, lon), hourly, generated on the fly one day
block (24 steps) at a time: a fixed smooth base field, plus a per-step offset, plus small
noise taken from a preallocated pool (the noise keeps the low mantissa bits as incompressible
as real data's). Generation is timed separately and excluded from both sides' write times.

Four outputs, one after another, each deleted before the next (a full-size output is tens of
GB): {time chunk 1 unsharded, shards of 24 steps} x {ours, xarray}, all with chunks
``(1, nlat, nlon)``, blosc zstd level 3 + shuffle (our default) and Zarr format 3. With
``--interleave``, ours and xarray take turns day by day (who goes first alternates) into two
outputs of the same layout, so that both see the same load on a shared machine (twice the
disk space):

- ours: ``to_template`` from the first day block (``chunks={"time": 1, ...}``, and
  ``shards={"time": 24, "lat": -1, "lon": -1}``), then a blocking ``write_region`` of each
  NumPy-backed day block, region found from the labels (what a user generating data day by
  day does; no dask);
- xarray (its documented pattern): ``to_zarr(store, compute=False, encoding=...)`` of the
  equivalent lazy (dask) dataset as the template (building it is not timed), then
  ``to_zarr(store, region={"time": slice(...)}, mode="r+")`` of each day block without the
  ``lat``/``lon`` coordinates, with the same ``chunks``/``shards``/``compressors`` encoding.

Both use at most 2 threads for codecs (``zarr.config`` ``threading.max_workers=2``, blosc's
own threads off). After each output is written, the first, middle and last day blocks are
read back with plain ``xr.open_zarr`` and compared with the generated data bit for bit (not
timed), and its objects (files) and bytes are counted. Times are wall clock of one run;
writes go to the page cache as the OS allows (no fsync on either side).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import dask.array as da
import numcodecs
import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.codecs import BloscCodec

import xarray_zarrwrite as xzw

DAY = 24
SHARD = {"time": DAY, "lat": -1, "lon": -1}
POOL = 7  # noise fields in the pool (prime, so that step t and t + 24 differ)


def log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


class Generator:
    """Synthetic hourly ``t2m`` of shape (steps, nlat, nlon), one day block at a time."""

    def __init__(self, steps: int, nlat: int, nlon: int) -> None:
        self.steps, self.nlat, self.nlon = steps, nlat, nlon
        self.time = pd.date_range("2021-01-01", periods=steps, freq="h")
        self.lat = np.linspace(90.0, -90.0, nlat)
        self.lon = np.linspace(0.0, 360.0, nlon, endpoint=False)
        la, lo = np.deg2rad(self.lat)[:, None], np.deg2rad(self.lon)[None, :]
        base = 250.0 + 45.0 * np.cos(la) ** 2 + 5.0 * np.sin(3 * lo) * np.cos(la)
        self.base = base.astype("f4")
        rng = np.random.default_rng(42)
        self.pool = (rng.standard_normal((POOL, nlat, nlon), dtype="f4") * 0.05).astype("f4")
        t = np.arange(steps)
        self.offset = 3.0 * np.sin(2 * np.pi * t / 24) + 8.0 * np.sin(2 * np.pi * t / 8760)
        self.offset = self.offset.astype("f4")
        self.ndays = -(-steps // DAY)

    def block(self, day: int, out: np.ndarray | None = None) -> np.ndarray:
        """The day block ``day`` (steps ``24 day`` to ``24 day + 23``), into ``out``."""
        t0, t1 = day * DAY, min((day + 1) * DAY, self.steps)
        if out is None or out.shape[0] != t1 - t0:
            out = np.empty((t1 - t0, self.nlat, self.nlon), "f4")
        for i, t in enumerate(range(t0, t1)):
            np.add(self.base, self.pool[t % POOL], out=out[i])
            out[i] += self.offset[t]
        return out

    def dataset(self, day: int, values: np.ndarray) -> xr.Dataset:
        t0 = day * DAY
        return xr.Dataset(
            {"t2m": (("time", "lat", "lon"), values, {"units": "K"})},
            coords={
                "time": self.time[t0 : t0 + values.shape[0]],
                "lat": ("lat", self.lat, {"units": "degrees_north"}),
                "lon": ("lon", self.lon, {"units": "degrees_east"}),
            },
        )


@dataclass
class Result:
    name: str
    template_s: float
    write_s: float
    gen_s: float
    objects: int
    nbytes: int

    @property
    def total_s(self) -> float:
        return self.template_s + self.write_s


def compressor() -> BloscCodec:
    return BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")


def ours_template(gen: Generator, path: str, sharded: bool) -> None:
    xzw.to_template(
        gen.dataset(0, gen.block(0)),
        path,
        global_end=gen.time[-1],
        freq="h",
        chunks={"time": 1, "lat": -1, "lon": -1},
        shards=SHARD if sharded else None,
        compression="blosc:zstd:3:shuffle",
        mode="w",
    )


def ours_write(gen: Generator, path: str, day: int, values: np.ndarray) -> None:
    xzw.write_region(gen.dataset(day, values), path)


def xarray_template(gen: Generator, path: str, sharded: bool) -> Callable[[], None]:
    shape = (gen.steps, gen.nlat, gen.nlon)
    lazy = gen.dataset(0, gen.block(0)).drop_vars("t2m").assign_coords(time=gen.time)
    lazy["t2m"] = (("time", "lat", "lon"), da.zeros(shape, dtype="f4", chunks=(DAY, -1, -1)))
    lazy["t2m"].attrs["units"] = "K"
    enc: dict[str, Any] = {"chunks": (1, gen.nlat, gen.nlon), "compressors": (compressor(),)}
    if sharded:
        enc["shards"] = (DAY, gen.nlat, gen.nlon)

    def make() -> None:
        lazy.to_zarr(path, mode="w", compute=False, zarr_format=3, encoding={"t2m": enc})

    return make


def xarray_write(gen: Generator, path: str, day: int, values: np.ndarray) -> None:
    t0 = day * DAY
    ds = gen.dataset(day, values).drop_vars(["lat", "lon"])
    ds.to_zarr(path, region={"time": slice(t0, t0 + values.shape[0])}, mode="r+")


def make_template(gen: Generator, path: str, sharded: bool, ours: bool) -> float:
    """Write the template; its time in seconds (building xarray's lazy dataset excluded)."""
    shutil.rmtree(path, ignore_errors=True)
    if ours:
        t0 = time.perf_counter()
        ours_template(gen, path, sharded)
    else:
        make = xarray_template(gen, path, sharded)
        t0 = time.perf_counter()
        make()
    return time.perf_counter() - t0


def run_sides(gen: Generator, sharded: bool, sides: list[tuple[str, str, bool]]) -> list[Result]:
    """Template then every day block for each side ``(name, path, ours)``.

    With two sides, they take turns day by day (the first to write alternates), so that both
    see the same machine load; each day block is generated once for both.
    """
    template_s = [make_template(gen, path, sharded, ours) for _, path, ours in sides]
    write_s = [0.0] * len(sides)
    buf: np.ndarray | None = None
    gen_s = 0.0
    for day in range(gen.ndays):
        t0 = time.perf_counter()
        buf = gen.block(day, buf)
        gen_s += time.perf_counter() - t0
        for i in sorted(range(len(sides)), key=lambda i: (i + day) % len(sides)):
            _, path, ours = sides[i]
            t0 = time.perf_counter()
            (ours_write if ours else xarray_write)(gen, path, day, buf)
            write_s[i] += time.perf_counter() - t0
        if day % 30 == 29:
            done = ", ".join(f"{s[0]} {w:.1f} s" for s, w in zip(sides, write_s, strict=True))
            log(f"  {day + 1}/{gen.ndays} days: {done}")
    results = []
    for (name, path, _), t_s, w_s in zip(sides, template_s, write_s, strict=True):
        verify(gen, path)
        objects, nbytes = count(path)
        shutil.rmtree(path)
        results.append(Result(name, t_s, w_s, gen_s, objects, nbytes))
    return results


def run_one(name: str, gen: Generator, path: str, sharded: bool, ours: bool) -> Result:
    return run_sides(gen, sharded, [(name, path, ours)])[0]


def verify(gen: Generator, path: str) -> None:
    """Read the first, middle and last day blocks back and compare bit for bit."""
    ds = xr.open_zarr(path, chunks=None)
    assert ds.t2m.shape == (gen.steps, gen.nlat, gen.nlon), ds.t2m.shape
    assert (ds.time.values == gen.time.values).all(), "time labels differ"
    for day in sorted({0, gen.ndays // 2, gen.ndays - 1}):
        want = gen.block(day)
        t0 = day * DAY
        got = ds.t2m.isel(time=slice(t0, t0 + want.shape[0])).values
        assert got.dtype == want.dtype and got.tobytes() == want.tobytes(), f"day {day} differs"
    ds.close()


def count(path: str) -> tuple[int, int]:
    objects = nbytes = 0
    for root, _, files in os.walk(path):
        for f in files:
            objects += 1
            nbytes += os.path.getsize(os.path.join(root, f))
    return objects, nbytes


def warm_up(work: str) -> None:
    """Imports and first opens on both sides (not timed)."""
    gen = Generator(2 * DAY, 4, 8)
    path = os.path.join(work, "warmup.zarr")
    for sharded in (False, True):
        for ours in (True, False):
            run_one("warm-up", gen, path, sharded, ours)


#: upper bound of stored / raw bytes of the synthetic data (see main)
STORED_FRACTION = 0.6


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=8760, help="hourly steps (default 8760)")
    parser.add_argument("--nlat", type=int, default=721)
    parser.add_argument("--nlon", type=int, default=1440)
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    parser.add_argument("--quick", action="store_true", help="30 days of 181 x 360")
    parser.add_argument(
        "--interleave",
        action="store_true",
        help="ours and xarray take turns day by day (two outputs on disk at once) instead of "
        "one whole output after the other",
    )
    args = parser.parse_args(argv)
    if args.quick:
        args.steps, args.nlat, args.nlon = 30 * DAY, 181, 360
    zarr.config.set({"threading.max_workers": 2})
    numcodecs.blosc.use_threads = False
    warnings.filterwarnings("ignore", message=".*[Cc]onsolidated metadata.*")
    work = args.dir or tempfile.mkdtemp(prefix="xzw-shards-")
    os.makedirs(work, exist_ok=True)
    raw = args.steps * args.nlat * args.nlon * 4
    free = shutil.disk_usage(work).free
    # the synthetic data compresses to 0.51 of its raw size with blosc zstd-3 + shuffle
    # (measured: 9.17 GB stored for 17.9 GB raw); keep a margin over that
    need = raw * STORED_FRACTION * (2 if args.interleave else 1)
    if free < need:
        log(f"only {free / 1e9:.1f} GB free in {work}; the outputs need about {need / 1e9:.1f} GB")
        return 1
    t0 = time.perf_counter()
    gen = Generator(args.steps, args.nlat, args.nlon)
    setup_s = time.perf_counter() - t0
    log(f"generator set up in {setup_s:.2f} s; warm-up")
    warm_up(work)
    header(args, raw)
    results: list[Result] = []
    try:
        for sharded in (False, True):
            layout = "shards of 24" if sharded else "unsharded"
            sides = [
                (f"{'ours' if ours else 'xarray'}, {layout}", os.path.join(work, f"{i}.zarr"), ours)
                for i, ours in enumerate((True, False))
            ]
            groups = [sides] if args.interleave else [[side] for side in sides]
            for group in groups:
                log(f"{', '.join(s[0] for s in group)} (load {os.getloadavg()[0]:.2f})")
                for result in run_sides(gen, sharded, group):
                    results.append(result)
                    row(raw, result)  # each row as soon as it is measured
    finally:
        if not args.dir:
            shutil.rmtree(work, ignore_errors=True)
    report(results)
    return 0


def header(args: argparse.Namespace, raw: int) -> None:
    print(
        f"data: {args.steps} hourly steps x {args.nlat} x {args.nlon} float32 "
        f"({raw / 1e9:.2f} GB), chunks (1, {args.nlat}, {args.nlon}), blosc zstd 3 + "
        f"shuffle; zarr {zarr.__version__}, xarray {xr.__version__}"
    )
    print(
        "\n| output | template s | writes s | total s | MB/s | objects | GB | "
        "generation s (excluded) | load avg |\n|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        flush=True,
    )


def row(raw: int, r: Result) -> None:
    print(
        f"| {r.name} | {r.template_s:.2f} | {r.write_s:.1f} | {r.total_s:.1f} | "
        f"{raw / 1e6 / r.total_s:.0f} | {r.objects} | {r.nbytes / 1e9:.3f} | {r.gen_s:.1f} | "
        f"{os.getloadavg()[0]:.1f} |",
        flush=True,
    )


def report(results: list[Result]) -> None:
    print()
    for i in (0, 2):
        ours, xa = results[i], results[i + 1]
        layout = ours.name.split(", ")[1]
        print(
            f"{layout}: ours/xarray time {ours.total_s / xa.total_s:.2f} "
            f"(xarray/ours {xa.total_s / ours.total_s:.2f}x), objects {ours.objects} vs "
            f"{xa.objects}, bytes {ours.nbytes / xa.nbytes:.3f} of xarray's"
        )
    print("sampled days (first, middle, last) of every output equal the data bit for bit")


if __name__ == "__main__":
    sys.exit(main())
