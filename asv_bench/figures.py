"""The documentation's figures: small, quick versions of the comparisons, drawn as PNGs.

Run from the repository root (about a minute on two cores)::

    .venv/bin/python asv_bench/figures.py                   # every figure into docs/_static/
    .venv/bin/python asv_bench/figures.py --only map        # one figure
    .venv/bin/python asv_bench/figures.py --out /tmp/figs   # elsewhere

Figures (each names the machine and sizes in its caption line):

``completeness_map.png``
    ``CheckReport.plot()`` of an archive converted from monthly files with two months missing.
``convert_workers.png``
    ``convert`` throughput against worker threads, beside
    ``xr.open_mfdataset(files).to_zarr(store)`` with as many dask threads, same files, same run.
``stream_exposed.png``
    Time each model step waits for its output: ``StreamWriter.write`` against a blocking
    ``write_region``, with a model step that leaves the CPU idle.
``packing_tradeoff.png``
    Stored bits per value against the measured maximum error of each packing (from
    ``benchmarks/bitpack.py``'s ``compare_sizes``), for several error targets.

The numbers are measured each time; nothing is copied from elsewhere. The full-size
comparisons are ``compare_convert.py``, ``replay_stream.py`` and ``compare_packing.py``.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

FIGURES = ("map", "workers", "stream", "packing")


def _plt() -> Any:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _machine() -> str:
    return f"{os.cpu_count()} CPUs, {platform.machine()}, Python {platform.python_version()}"


def figure_map(work: Path, out: Path) -> Path:
    """Convert 12 monthly files minus April and September; plot what check() finds."""
    import xarray_zarrwrite as xzw
    from xarray_zarrwrite.testing import sample_files

    files = sample_files(work / "map", months=12)
    keep = [f for f in files if not f.endswith(("2000-04.nc", "2000-09.nc"))]
    store = work / "map.zarr"
    xzw.convert(
        keep,
        store,
        chunks={"time": 7},
        global_start="2000-01-01",
        global_end="2000-12-31",
        freq="D",
        progress=False,
        summary=False,
        raise_on_failure=False,
    )
    plt = _plt()
    fig, ax = plt.subplots(figsize=(10, 2.6), layout="constrained")
    xzw.check(store).plot(
        ax=ax, title="check(store).plot(): 2000, weekly chunks, April and September missing"
    )
    path = out / "completeness_map.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _timed(fn: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def figure_workers(work: Path, out: Path, months: int = 12) -> Path:
    """convert vs open_mfdataset().to_zarr() on the same monthly files, 1 and 2 workers."""
    import dask
    import xarray as xr

    import xarray_zarrwrite as xzw
    from xarray_zarrwrite.testing import sample_files

    files = sample_files(work / "workers", months=months, nlat=181, nlon=360)
    raw_mb = sum(xr.open_dataset(f).nbytes for f in files) / 1e6
    workers = [1, 2]
    ours, theirs = [], []
    for n in workers:
        store = work / f"ours-{n}.zarr"
        ours.append(
            raw_mb
            / _timed(
                lambda s=store, n=n: xzw.convert(
                    files, s, chunks={"time": 30}, max_workers=n, progress=False, summary=False
                )
            )
        )

        def baseline(n: int = n) -> None:
            with dask.config.set(scheduler="threads", num_workers=n):
                ds = xr.open_mfdataset(files).chunk({"time": 30})
                ds.to_zarr(work / f"xr-{n}.zarr", mode="w")

        theirs.append(raw_mb / _timed(baseline))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    x = np.arange(len(workers))
    ax.bar(x - 0.2, ours, 0.4, label="xarray_zarrwrite.convert", color="#1f77b4")
    ax.bar(x + 0.2, theirs, 0.4, label="open_mfdataset().to_zarr()", color="#aaaaaa")
    ax.set_xticks(x, [f"{n} worker(s)" for n in workers])
    ax.set_ylabel("MB/s (uncompressed)")
    ax.set_ylim(0, 1.3 * max(ours + theirs))  # room for the legend above the bars
    ax.set_title(f"{months} monthly files, {raw_mb:.0f} MB, 30-day chunks; {_machine()}")
    ax.legend(frameon=False)
    path = out / "convert_workers.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_stream(work: Path, out: Path, steps: int = 12, model_s: float = 0.15) -> Path:
    """Seconds each step waits in its write call: StreamWriter against blocking write_region."""
    import pandas as pd

    import xarray_zarrwrite as xzw
    from xarray_zarrwrite.testing.datasets import era5_like

    ds = era5_like("2000-01-01", steps, freq="6h", nlat=721, nlon=1440, noise=0.05)
    exposed: dict[str, list[float]] = {}
    for name in ("blocking write_region", "StreamWriter.write"):
        store = work / f"stream-{len(exposed)}.zarr"
        ds.isel(time=slice(0, 1)).fastzarr.to_template(
            store, global_end=pd.Timestamp(ds.time.values[-1]), freq="6h", chunks={"time": 1}
        )
        waits: list[float] = []
        if name.startswith("blocking"):
            for i in range(steps):
                time.sleep(model_s)  # the model computes (CPU idle, as on a GPU)
                waits.append(_timed(lambda i=i: ds.isel(time=[i]).fastzarr.write_region(store)))
        else:
            with xzw.StreamWriter(store, max_inflight_mb=512) as writer:
                for i in range(steps):
                    time.sleep(model_s)
                    waits.append(_timed(lambda i=i: writer.write(ds.isel(time=[i]))))
        exposed[name] = waits
    plt = _plt()
    fig, ax = plt.subplots(figsize=(7, 3.6), layout="constrained")
    for (name, waits), colour in zip(exposed.items(), ("#aaaaaa", "#1f77b4"), strict=True):
        ax.plot(range(1, steps + 1), np.array(waits) * 1e3, "o-", label=name, color=colour)
    step_mb = ds.isel(time=[0]).nbytes / 1e6
    ax.set_xlabel("model step")
    ax.set_ylabel("ms the model waits")
    ax.set_title(f"{step_mb:.0f} MB per step, model step {model_s * 1e3:.0f} ms; {_machine()}")
    ax.legend(frameon=False)
    path = out / "stream_exposed.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def figure_packing(work: Path, out: Path, hours: int = 48) -> Path:
    """Bits per value against measured maximum error, per packing method and error target."""
    from benchmarks.bitpack import compare_sizes, era5_like_t2m

    field = era5_like_t2m(nt=hours)
    rows: dict[str, list[tuple[float, float]]] = {}
    lossless: float | None = None
    for target in (0.005, 0.01, 0.05, 0.1):
        for method, row in compare_sizes(field, target).items():
            if row["max_error"] == 0:
                lossless = row["bits_per_value"]
                continue
            family = method.split(" (keepbits")[0]  # BitRound: one line over its keepbits
            rows.setdefault(family, []).append((row["max_error"], row["bits_per_value"]))
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 4.2), layout="constrained")
    for method, points in sorted(rows.items()):
        err, bits = zip(*sorted(set(points)), strict=True)
        ax.plot(err, bits, "o-", label=method)
    if lossless is not None:
        ax.axhline(lossless, color="#888888", ls="--", label="lossless blosc zstd-3 shuffle")
    ax.set_xscale("log")
    ax.set_xlabel("measured maximum absolute error (K)")
    ax.set_ylabel("stored bits per value")
    ax.set_title(f"ERA5-like 2 m temperature {field.shape} float32 (32 bits raw)")
    ax.legend(frameon=False, fontsize="small", loc="lower left")
    path = out / "packing_tradeoff.png"
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=str(HERE.parent / "docs" / "_static"))
    parser.add_argument("--only", choices=FIGURES, action="append", help="figures to draw")
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draw = {
        "map": figure_map,
        "workers": figure_workers,
        "stream": figure_stream,
        "packing": figure_packing,
    }
    work = Path(tempfile.mkdtemp(prefix="xzw-figures-"))
    try:
        for name in args.only or FIGURES:
            t0 = time.perf_counter()
            path = draw[name](work, out)
            print(f"{path} ({time.perf_counter() - t0:.1f} s)")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
