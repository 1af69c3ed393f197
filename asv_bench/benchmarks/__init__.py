"""Shared helpers of the asv benchmarks, after xarray's ``asv_bench/benchmarks/__init__.py``.

Besides xarray's helpers (``parameterized``, ``requires_dask``, a seeded ``randn``,
``_skip_slow``) this holds the data of the foundation's three comparison cases, so that the
asv classes and ``asv_bench/compare_foundation.py`` measure exactly the same thing:

1. :func:`latency_case`: a region write of 20 variables x 4 chunks into a store with 20 ms
   latency per request;
2. :func:`long_time_example` / :func:`long_time_lazy`: a template of 100 variables x 1,000,000
   hourly time steps;
3. :func:`yearly_files`: four yearly datasets of daily 1461 x 120 x 240 float32 (168 MB).

Nothing here may be named ``time_*``, ``peakmem_*``, ``track_*`` or ``mem_*``: asv would take it
for a benchmark.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr.storage import LocalStore, MemoryStore, WrapperStore
from zarr.testing.store import LatencyStore

# Every open of a zarr 3 store with consolidated metadata warns; the warning says nothing
# about what is measured.
warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)

# --- xarray's helpers ------------------------------------------------------------------------


def parameterized(names: list[str], params: list[list[Any]]) -> Callable[[Any], Any]:
    """Set ``param_names`` and ``params`` of a benchmark function."""

    def decorator(func: Any) -> Any:
        func.param_names = names
        func.params = params
        return func

    return decorator


def requires_dask() -> None:
    """Skip the benchmark (asv skips on ``NotImplementedError``) when dask is missing."""
    try:
        import dask  # noqa: F401
    except ImportError as err:
        raise NotImplementedError() from err


def randn(
    shape: tuple[int, ...],
    frac_nan: float | None = None,
    chunks: tuple[int, ...] | None = None,
    seed: int = 0,
    dtype: Any = np.float64,
) -> Any:
    """Seeded standard-normal data (dask-backed with ``chunks``), a fraction of it NaN."""
    if chunks is None:
        x = np.random.default_rng(seed).standard_normal(shape, dtype=dtype)
    else:
        import dask.array as da

        x = da.random.default_rng(seed).standard_normal(shape, chunks=chunks).astype(dtype)
    if frac_nan is not None:
        size = int(np.prod(shape))
        mask = np.zeros(size, dtype=bool)
        mask[np.random.default_rng(seed).choice(size, int(size * frac_nan), replace=False)] = True
        mask = mask.reshape(shape)
        if chunks is None:
            x[mask] = np.nan
        else:
            x = da.where(da.from_array(mask, chunks=chunks), np.nan, x)
    return x


def _skip_slow() -> None:
    """Skip a slow or demanding benchmark when ``ASV_SKIP_SLOW=1``.

    Use it as a class's ``setup`` (or call it first in one), or as ``func.setup``.
    """
    if os.environ.get("ASV_SKIP_SLOW", "0") == "1":
        raise NotImplementedError("Skipping this test...")


# --- stores -----------------------------------------------------------------------------------

LATENCY_S = 0.02
"""Per-request latency of the slow-store case, for reads and writes alike (seconds)."""


def latency_store(inner: Any = None, latency: float = LATENCY_S) -> LatencyStore:
    """``inner`` (a fresh MemoryStore by default) behind ``latency`` seconds per get and set."""
    return LatencyStore(
        MemoryStore() if inner is None else inner, get_latency=latency, set_latency=latency
    )


class CountingStore(WrapperStore[Any]):
    """Counts write requests that reach the wrapped store.

    ``sets`` counts ``set``; ``conditional`` counts ``set_if_not_exists`` (zarr uses it for the
    parent groups of every array it creates: a request on an object store too); ``writes`` is
    their sum.
    """

    def __init__(self, store: Any) -> None:
        super().__init__(store)
        self.sets = 0
        self.conditional = 0

    @property
    def writes(self) -> int:
        return self.sets + self.conditional

    def _with_store(self, store: Any) -> CountingStore:
        out = type(self)(store)
        out.sets, out.conditional = self.sets, self.conditional
        return out

    async def set(self, key: str, value: Any) -> None:
        self.sets += 1
        await self._store.set(key, value)

    async def set_if_not_exists(self, key: str, value: Any) -> None:
        self.conditional += 1
        await self._store.set_if_not_exists(key, value)


def store_keys(store: Any) -> list[str]:
    """Every key of a zarr Store (sorted)."""
    from zarr.core.sync import sync

    async def collect() -> list[str]:
        return sorted([k async for k in store.list()])

    return sync(collect())


# --- case 1: 20 variables x 4 chunks into a store with 20 ms latency -------------------------

LATENCY_NVARS = 20
LATENCY_CHUNK = 64  # chunks are (1, 64, 64) float32: 16 KiB
LATENCY_STEPS = 4  # time steps per region write: 4 chunks per variable
LATENCY_NTIME = 4 * LATENCY_STEPS  # the template holds 4 regions
LATENCY_CHUNKS = {"time": 1, "lat": LATENCY_CHUNK, "lon": LATENCY_CHUNK}


def latency_case() -> xr.Dataset:
    """The full data of case 1: 20 float32 variables of (16, 64, 64), hourly."""
    n, t = LATENCY_CHUNK, LATENCY_NTIME
    rng = np.random.default_rng(1)
    data = rng.standard_normal((LATENCY_NVARS, t, n, n), dtype=np.float32)
    return xr.Dataset(
        {
            f"v{i:02d}": (("time", "lat", "lon"), data[i], {"units": "1"})
            for i in range(LATENCY_NVARS)
        },
        coords={
            "time": pd.date_range("2000-01-01", periods=t, freq="h"),
            "lat": np.linspace(-90.0, 90.0, n),
            "lon": np.linspace(0.0, 360.0, n, endpoint=False),
        },
    )


def latency_region(k: int = 1) -> slice:
    """The ``k``-th region of case 1 along time."""
    return slice(k * LATENCY_STEPS, (k + 1) * LATENCY_STEPS)


def latency_template(full: xr.Dataset) -> MemoryStore:
    """A fresh template of case 1 in a MemoryStore (no latency while setting up)."""
    import xarray_zarrwrite as xzw

    store = MemoryStore()
    xzw.to_template(
        full.isel(time=latency_region(0)),
        store,
        global_end=full.time.values[-1],
        chunks=LATENCY_CHUNKS,
    )
    return store


# --- case 2: a template of 100 variables x 1,000,000 hourly steps ----------------------------

LONG_NVARS = 100
LONG_NTIME = 1_000_000
LONG_NY = LONG_NX = 10
LONG_TIME_CHUNK = 8760  # one (non-leap) year of hours: (8760, 10, 10) float32 = 3.3 MiB
LONG_CHUNKS = {"time": LONG_TIME_CHUNK, "lat": -1, "lon": -1}
LONG_START = "2000-01-01"


def _long_coords(ntime: int) -> dict[str, Any]:
    return {
        "time": pd.date_range(LONG_START, periods=ntime, freq="h"),
        "lat": np.linspace(-90.0, 90.0, LONG_NY),
        "lon": np.linspace(0.0, 360.0, LONG_NX, endpoint=False),
    }


def long_time_axis() -> pd.DatetimeIndex:
    return pd.date_range(LONG_START, periods=LONG_NTIME, freq="h")


def long_time_example() -> xr.Dataset:
    """What our template is made from: one day (24 hourly steps) of the 100 variables."""
    shape = (24, LONG_NY, LONG_NX)
    zeros = np.zeros(shape, dtype=np.float32)
    return xr.Dataset(
        {f"v{i:03d}": (("time", "lat", "lon"), zeros, {"units": "K"}) for i in range(LONG_NVARS)},
        coords=_long_coords(24),
    )


def long_time_lazy() -> xr.Dataset:
    """What xarray's template is made from: the full extent, lazy (dask), same chunking."""
    import dask.array as da

    shape = (LONG_NTIME, LONG_NY, LONG_NX)
    chunks = (LONG_TIME_CHUNK, LONG_NY, LONG_NX)
    return xr.Dataset(
        {
            f"v{i:03d}": (
                ("time", "lat", "lon"),
                da.zeros(shape, dtype=np.float32, chunks=chunks),
                {"units": "K"},
            )
            for i in range(LONG_NVARS)
        },
        coords=_long_coords(LONG_NTIME),
    )


def long_time_xarray_encoding(ds: xr.Dataset) -> dict[str, dict[str, Any]]:
    """The compressor of our default (blosc zstd 3, shuffle) for xarray's template too."""
    from zarr.codecs import BloscCodec

    blosc = BloscCodec(cname="zstd", clevel=3, shuffle="shuffle")
    return {str(v): {"compressors": [blosc]} for v in ds.data_vars}


def check_long_template(store: Any) -> None:
    """Read the template back: full extent, chunking, time labels bit for bit, no data chunk."""
    ds = xr.open_zarr(store, consolidated=None, chunks=None)
    want = long_time_axis()
    assert dict(ds.sizes) == {"time": LONG_NTIME, "lat": LONG_NY, "lon": LONG_NX}, ds.sizes
    assert len(ds.data_vars) == LONG_NVARS
    got, want = ds.time.values, want.values.astype(ds.time.dtype)  # pandas makes [us]
    assert got.dtype == want.dtype and got.tobytes() == want.tobytes()
    for name, var in ds.data_vars.items():
        assert var.dtype == np.float32, (name, var.dtype)
        assert var.encoding["chunks"] == (LONG_TIME_CHUNK, LONG_NY, LONG_NX), var.encoding
    assert np.isnan(ds.v000[-1].values).all()  # unwritten: reads as the fill value
    data_chunks = [k for k in store_keys(store) if k.startswith("v") and "/c/" in k]
    assert not data_chunks, f"a template wrote data chunks: {data_chunks[:3]}"


# --- case 3: four yearly files of daily 1461 x 120 x 240 float32 -----------------------------

YEARS = (2000, 2001, 2002, 2003)  # 366 + 365 + 365 + 365 = 1461 days
YEAR_NY, YEAR_NX = 120, 240
# Yearly regions start at days 0, 366, 731 and 1096; gcd(366, 365) = 1, so the only uniform
# time chunking on which every yearly region is chunk aligned is 1 day per chunk:
# (1, 120, 240) float32 = 112.5 KiB per chunk, 1461 chunks.
YEAR_CHUNKS = {"time": 1, "lat": -1, "lon": -1}


def yearly_files(seed: int = 0, years: tuple[int, ...] = YEARS) -> list[xr.Dataset]:
    """NumPy-backed yearly datasets (one float32 variable ``t2m``), 168 MB for all four.

    A smooth field with a seasonal cycle plus uniform noise of 0.5 K: distinct in every cell,
    so a misplaced chunk cannot go unnoticed; generated vectorised (under a second).
    """
    time = pd.date_range(f"{years[0]}-01-01", f"{years[-1]}-12-31", freq="D")
    lat = np.linspace(90.0, -90.0, YEAR_NY)
    lon = np.linspace(0.0, 360.0, YEAR_NX, endpoint=False)
    rng = np.random.default_rng(seed)
    data = rng.random((len(time), YEAR_NY, YEAR_NX), dtype=np.float32)
    data *= np.float32(0.5)
    data += (250.0 + 40.0 * np.cos(np.deg2rad(lat))).astype(np.float32)[None, :, None]
    doy = time.day_of_year.values
    data += (10.0 * np.sin(2 * np.pi * doy / 365.25)).astype(np.float32)[:, None, None]
    full = xr.Dataset(
        {"t2m": (("time", "lat", "lon"), data, {"units": "K", "long_name": "t2m"})},
        coords={
            "time": time,
            "lat": ("lat", lat, {"units": "degrees_north"}),
            "lon": ("lon", lon, {"units": "degrees_east"}),
        },
    )
    return [full.sel(time=str(y)) for y in years]


def yearly_regions(files: list[xr.Dataset]) -> list[slice]:
    """The time region of every yearly file in the 1461-day template."""
    out, start = [], 0
    for f in files:
        n = f.sizes["time"]
        out.append(slice(start, start + n))
        start += n
    return out


def yearly_template(files: list[xr.Dataset], path: str, global_end: Any = None) -> None:
    """Our template of case 3 at ``path`` (local disk), from the first days of the first file."""
    import xarray_zarrwrite as xzw

    xzw.to_template(
        files[0].isel(time=slice(0, 3)),
        path,
        global_end=files[-1].time.values[-1] if global_end is None else global_end,
        chunks=YEAR_CHUNKS,
    )


# --- read-back checks -------------------------------------------------------------------------


def check_region(store: Any, ds: xr.Dataset, region: dict[str, slice]) -> None:
    """Every data variable of ``ds`` is stored bit for bit at ``region``, time labels too."""
    if isinstance(store, str | os.PathLike):
        store = LocalStore(os.fspath(store), read_only=True)
    group = zarr.open_group(store, mode="r", use_consolidated=False)
    for name, var in ds.data_vars.items():
        arr = group[str(name)]
        sel = tuple(region.get(str(d), slice(None)) for d in var.dims)
        got = np.asarray(arr[sel])
        want = var.values
        assert got.dtype == want.dtype, (name, got.dtype, want.dtype)
        assert got.tobytes() == want.tobytes(), f"{name} differs from the source at {region}"
    back = xr.open_zarr(store, consolidated=None, chunks=None)
    for dim, sel in region.items():
        if dim in ds.indexes:
            got_labels = back.indexes[dim][sel]
            assert got_labels.equals(ds.indexes[dim]), f"labels of {dim} differ at {sel}"
