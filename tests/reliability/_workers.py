"""Code run inside spawned worker processes (importable by module name)."""

from __future__ import annotations

import random
import time

import numpy as np
import pandas as pd
import xarray as xr


def cell_values(t0: int, t1: int, y0: int, y1: int, nx: int, trial: int) -> np.ndarray:
    """Deterministic, distinct values for every cell: any lost or misplaced cell shows."""
    t = np.arange(t0, t1)[:, None, None]
    y = np.arange(y0, y1)[None, :, None]
    x = np.arange(nx)[None, None, :]
    return (trial * 1e6 + t * 1e3 + y * 10 + x * 0.01).astype("float64")


def piece(trial: int, t0: int, t1: int, y0: int, y1: int, nx: int) -> xr.Dataset:
    time_index = pd.date_range("2001-01-01", periods=t1, freq="h")[t0:t1]
    v = cell_values(t0, t1, y0, y1, nx, trial)
    return xr.Dataset(
        {"a": (("time", "y", "x"), v), "b": (("time", "y", "x"), (-v).astype("float32"))},
        coords={"time": time_index, "y": np.arange(y0, y1), "x": np.arange(nx)},
    )


def write_pieces(path: str, trial: int, nx: int, pieces: list, seed: int) -> list[str]:
    """Write each (t0, t1, y0, y1) piece with a random delay; return error names."""
    import xarray_zarrwrite  # noqa: F401  (registers the accessor in this process)

    rng = random.Random(seed)
    outcomes = []
    for t0, t1, y0, y1 in pieces:
        time.sleep(rng.random() * 0.02)
        try:
            piece(trial, t0, t1, y0, y1, nx).fastzarr.write_region(path)
            outcomes.append("ok")
        except Exception as e:  # noqa: BLE001  (reported to the parent as data)
            outcomes.append(type(e).__name__)
    return outcomes
