"""Streaming model output: ``StreamWriter`` against xarray's per-step ``to_zarr(region=...)``.

A small version of ``asv_bench/replay_stream.py`` (which measures the full 8-member, 721 x 1440
case): 12 steps of 2 variables on 181 x 360 float32, one step per chunk, blosc zstd-3, into a
``LatencyStore``-wrapped memory store (5 ms per request), so no network is needed.
``time_*`` is the time until every step is durable; ``track_caller_seconds_*`` the time the
producer spends inside write calls.
"""

from __future__ import annotations

import time

import numpy as np
import pandas as pd
import xarray as xr
from zarr.storage import MemoryStore
from zarr.testing.store import LatencyStore

import xarray_zarrwrite as xzw

NSTEPS = 12


def _steps() -> list[xr.Dataset]:
    rng = np.random.default_rng(0)
    times = pd.date_range("2026-01-01", periods=NSTEPS, freq="6h")
    base = 250 + 40 * np.cos(np.deg2rad(np.linspace(90, -90, 181)))[:, None] * np.ones(360)
    return [
        xr.Dataset(
            {
                name: (
                    ("time", "lat", "lon"),
                    (base + rng.normal(0, 0.05, (1, 181, 360))).astype("f4"),
                )
                for name in ("t2m", "tcwv")
            },
            coords={"time": times[[k]], "lat": np.linspace(90, -90, 181), "lon": np.arange(360.0)},
        )
        for k in range(NSTEPS)
    ]


class StreamSteps:
    number = 1
    repeat = (3, 10, 20.0)
    warmup_time = 0.0
    timeout = 120

    def setup(self) -> None:
        self.steps = _steps()
        self.store = LatencyStore(MemoryStore(), get_latency=0.005, set_latency=0.005)
        full = xr.concat(self.steps, "time")
        full.isel(time=slice(0, 1)).fastzarr.to_template(
            self.store,
            global_end=full.time[-1].values,
            freq="6h",
            chunks={"time": 1},
            compression="blosc:zstd:3",
        )

    def _ours(self) -> float:
        inside = 0.0
        with xzw.StreamWriter(self.store, max_inflight_mb=64) as writer:
            for step in self.steps:
                t0 = time.perf_counter()
                writer.write(step)
                inside += time.perf_counter() - t0
        return inside

    def _xarray(self) -> float:
        inside = 0.0
        for k, step in enumerate(self.steps):
            t0 = time.perf_counter()
            step.drop_vars(["lat", "lon"]).drop_vars("time").to_zarr(
                self.store, region={"time": slice(k, k + 1)}, mode="r+"
            )
            inside += time.perf_counter() - t0
        return inside

    def time_stream_writer(self) -> None:
        self._ours()

    def time_xarray_per_step(self) -> None:
        self._xarray()

    def track_caller_seconds_stream_writer(self) -> float:
        return self._ours()

    def track_caller_seconds_xarray_per_step(self) -> float:
        return self._xarray()

    track_caller_seconds_stream_writer.unit = "seconds"  # type: ignore[attr-defined]
    track_caller_seconds_xarray_per_step.unit = "seconds"  # type: ignore[attr-defined]
