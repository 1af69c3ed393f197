"""The dask write path's freshness gate: once per compute call, and across ``extend``.

Every block of a dask write used to run the gate (a store round trip) before its put. Now a
gate task runs it once per compute call and the blocks reuse its result (for at most
``_dask.GATE_WINDOW_S``); a template replaced between two compute calls is still caught
before any put of the later one. A template that another writer only *extended* (same start,
chunking, shards and encodings, longer axis) is still written, where the write lies in units
that were whole in the old extent; the old end's partial unit, and a real replacement, raise.
"""

from __future__ import annotations

import subprocess
import sys
import warnings
from typing import Any

import dask
import dask.array as da
import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.abc.store import ByteRequest
from zarr.core.buffer import Buffer, BufferPrototype
from zarr.storage import LocalStore, WrapperStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite import _dask
from xarray_zarrwrite._growth import growth, layout_of
from xarray_zarrwrite._open import load_template_with_root
from xarray_zarrwrite._runtime import runtime
from xarray_zarrwrite.errors import RegionError, TemplateChangedError
from xarray_zarrwrite.testing.datasets import era5_like

N = 12


def _steps(n: int = N + 8, start: str = "2000-01-01") -> xr.Dataset:
    return era5_like(start, n, freq="D", nlat=4, nlon=6)


def _make(path: str, n: int = N, start: str = "2000-01-01", tchunk: int = 2, **kw: Any) -> None:
    steps = _steps(start=start)
    steps.isel(time=slice(0, 2)).fastzarr.to_template(
        path, global_end=steps.time[n - 1].values, freq="D", chunks={"time": tchunk}, mode="w", **kw
    )


class Counting(WrapperStore[LocalStore]):
    """Counts reads of the root document (one per freshness check)."""

    roots = 0

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        if key == "zarr.json":
            type(self).roots += 1
        return await self._store.get(key, prototype, byte_range)

    def with_read_only(self, read_only: bool = False) -> Counting:  # zarr 3.1 lacks it
        return Counting(self._store.with_read_only(read_only))


def _counting(path: str) -> Counting:
    Counting.roots = 0
    return Counting(LocalStore(path))


def _hooked(data: xr.Dataset, at: int | None, hook: Any) -> xr.Dataset:
    """``data`` chunked by 2 steps, whose block ``at`` (along time; None: the first block
    computed, whichever it is) calls ``hook`` when it is computed; a hook that returns False
    has not acted yet and is called again for the next such block.

    Which blocks are stored before block ``at`` is computed depends on dask's task order,
    whose ties fall to key names (random tokens): only ``None`` puts the hook before every
    store."""

    done: list[bool] = []  # once: a block may be computed twice (range check, then store)

    def block(x: np.ndarray, block_info: Any = None) -> np.ndarray:
        at_block = at is None or block_info[0]["chunk-location"][0] == at
        if at_block and not done and hook() is not False:
            done.append(True)
        return x

    out = data.copy()
    for name, var in data.data_vars.items():
        arr = da.from_array(var.values, chunks=(2, -1, -1))  # type: ignore[no-untyped-call]
        out[name] = (var.dims, arr.map_blocks(block, dtype=arr.dtype), var.attrs)
    return out


def _read(path: str) -> xr.Dataset:
    with warnings.catch_warnings():  # templates made with consolidated=False
        warnings.filterwarnings("ignore", "Failed to open Zarr store", RuntimeWarning)
        return xr.open_zarr(path, consolidated=None).load()


def test_one_gate_read_per_compute_call(tmp_path, monkeypatch):
    monkeypatch.setattr(_dask, "GATE_WINDOW_S", 3600.0)  # the compute call bounds it here
    path = str(tmp_path / "t.zarr")
    _make(path, tchunk=1)
    store = _counting(path)
    data = _steps().isel(time=slice(0, N)).chunk(time=1)  # 12 blocks per variable
    planned = xzw.write_region(data, store, compute=False)
    for _ in range(2):
        Counting.roots = 0
        with dask.config.set(scheduler="threads"):
            planned.compute()  # type: ignore[union-attr]
        assert Counting.roots == 1  # the gate task's check, not one per block (24 blocks)
    back = _read(path)
    for name in ("t2m", "tcwv"):  # bit for bit, the last step included
        np.testing.assert_array_equal(back[name].values, data[name].values)


@pytest.mark.parametrize("how", ["start", "chunks"])
def test_replaced_between_compute_calls_raises_before_any_put(tmp_path, monkeypatch, how):
    monkeypatch.setattr(_dask, "GATE_WINDOW_S", 3600.0)  # only a new compute call re-checks
    path = str(tmp_path / "t.zarr")
    _make(path)
    store = _counting(path)
    planned = xzw.write_region(_steps().isel(time=slice(0, 4)).chunk(time=2), store, compute=False)
    planned.compute()  # type: ignore[union-attr]
    _make(path, start="2001-06-01") if how == "start" else _make(path, tchunk=4)
    with pytest.raises(TemplateChangedError, match="replaced"):
        planned.compute()  # type: ignore[union-attr]
    assert _read(path).t2m.isnull().all()  # nothing of the stale plan in the new template


def test_replaced_between_blocks_raises(tmp_path, monkeypatch):
    monkeypatch.setattr(_dask, "GATE_WINDOW_S", 0.0)  # every block checks again
    path = str(tmp_path / "t.zarr")
    _make(path)
    data = _hooked(_steps().isel(time=slice(0, N)), 3, lambda: _make(path, start="2001-06-01"))
    with (
        pytest.raises(TemplateChangedError, match="replaced"),
        dask.config.set(scheduler="synchronous"),
    ):
        xzw.write_region(data, path)
    back = _read(path)
    assert back.t2m.isnull().all() and back.tcwv.isnull().all()
    assert str(back.time.values[0])[:10] == "2001-06-01"


def _extend_in_another_process(path: str) -> None:
    script = f"import xarray_zarrwrite as x; x.extend({path!r}, steps=6)"
    subprocess.run([sys.executable, "-c", script], check=True, timeout=120)


@pytest.mark.parametrize(
    ("where", "window", "consolidated"),
    [
        ("same-process", 0.0, True),
        ("same-process", 3600.0, True),
        ("same-process", 0.0, False),
        ("other-process", 0.0, True),
    ],
    ids=["every-block", "per-call", "unconsolidated", "other-process"],
)
def test_dask_write_across_a_concurrent_extend(tmp_path, monkeypatch, where, window, consolidated):
    monkeypatch.setattr(_dask, "GATE_WINDOW_S", window)
    path = str(tmp_path / "t.zarr")
    _make(path, consolidated=consolidated)
    src = _steps().isel(time=slice(0, N))
    if where == "same-process":
        hook = lambda: xzw.extend(path, steps=6)
    else:
        hook = lambda: _extend_in_another_process(path)
    with dask.config.set(scheduler="synchronous"):
        xzw.write_region(_hooked(src, 2, hook), path)
    back = _read(path)
    assert back.sizes["time"] == N + 6
    np.testing.assert_array_equal(back.time.values, _steps(N + 6).time.values)
    for name in ("t2m", "tcwv"):
        np.testing.assert_array_equal(back[name].values[:N], src[name].values)  # bit for bit
        assert np.isnan(back[name].values[N:]).all()  # the extended part: fill


def test_compute_false_planned_before_an_extend(tmp_path):
    path = str(tmp_path / "t.zarr")
    _make(path)
    src = _steps().isel(time=slice(4, N))
    planned = xzw.write_region(src.chunk(time=2), path, compute=False)
    _extend_in_another_process(path)
    planned.compute()  # type: ignore[union-attr]
    back = _read(path)
    np.testing.assert_array_equal(back.t2m.values[4:N], src.t2m.values)
    assert np.isnan(back.t2m.values[:4]).all() and np.isnan(back.t2m.values[N:]).all()
    assert back.t2m.values[-1].size and back.sizes["time"] == N + 6


def test_the_old_partial_end_unit_is_refused_after_an_extend(tmp_path, monkeypatch):
    monkeypatch.setattr(_dask, "GATE_WINDOW_S", 0.0)
    path = str(tmp_path / "t.zarr")
    _make(path, n=N - 1)  # 11 steps, chunks of 2: the last unit [10:11] is partial
    src = _steps().isel(time=slice(0, N - 1))
    # the extend after planning, before any block is stored (the first block computed by
    # the compute call): the partial unit's store always sees it, whatever dask's order
    armed: list[bool] = []

    def extend_once_armed() -> bool:
        if armed:
            xzw.extend(path, steps=6)
        return bool(armed)

    data = _hooked(src, None, extend_once_armed)
    planned = xzw.write_region(data, path, compute=False)
    armed.append(True)
    with (
        pytest.raises(TemplateChangedError, match="extended") as err,
        dask.config.set(scheduler="synchronous"),
    ):
        planned.compute()  # type: ignore[union-attr]
    assert "[10:11" in str(err.value)
    back = _read(path)
    for name in ("t2m", "tcwv"):
        got, want = back[name].values[: N - 1], src[name].values
        landed = ~np.isnan(got)
        np.testing.assert_array_equal(got[landed], want[landed])  # whatever landed is right
        assert np.isnan(back[name].values[N - 1 :]).all()


def test_blocking_write_with_a_cached_template_across_an_extend(tmp_path):
    path = str(tmp_path / "t.zarr")
    _make(path, n=N - 1)
    src = _steps().isel(time=slice(0, N))
    xzw.write_region(src.isel(time=slice(0, 2)), path)  # caches the template
    _extend_in_another_process(path)
    xzw.write_region(src.isel(time=slice(2, 6)), path)  # inside the old extent
    with pytest.raises(RegionError):  # [10:11] was the old partial end: now misaligned
        xzw.write_region(src.isel(time=slice(10, 11)), path)
    back = _read(path)
    np.testing.assert_array_equal(back.t2m.values[:6], src.t2m.values[:6])
    assert np.isnan(back.t2m.values[6:]).all()


def _layout(path: str) -> Any:
    info, _ = load_template_with_root(LocalStore(path))
    return layout_of(info, {n: z.metadata for n, z in info.zarr_arrays.items()})


def _grown(path: str, old: Any) -> Any:
    info, _ = load_template_with_root(LocalStore(path))
    return growth(old, info, {n: z.metadata for n, z in info.zarr_arrays.items()})


@pytest.mark.parametrize(
    "replace",
    [
        {"start": "2001-06-01"},
        {"tchunk": 4},
        {"n": N + 6, "tchunk": 4},
        {"encoding": {"t2m": {"dtype": "float64"}}},
        {"compression": "blosc:lz4:1"},
    ],
    ids=["start", "chunks", "longer-other-chunks", "dtype", "codec"],
)
def test_growth_refuses_a_real_replacement(tmp_path, replace):
    path = str(tmp_path / "t.zarr")
    _make(path)
    old = _layout(path)
    _make(path, **replace)
    assert _grown(path, old) is None


def test_growth_refuses_other_shards_and_takes_an_extend(tmp_path):
    path = str(tmp_path / "t.zarr")
    _make(path, tchunk=1, shards={"time": 2})
    old = _layout(path)
    xzw.extend(path, steps=3)
    grown = _grown(path, old)
    assert grown is not None and dict(grown.sizes) == {"time": (N, N + 3)}
    assert grown.allows("t2m", (slice(10, 12), slice(0, 4), slice(0, 6)))
    _make(path, n=N + 3, tchunk=1, shards={"time": 4})
    assert _grown(path, old) is None
    assert zarr.open_group(path, mode="r")["t2m"].shards is not None


def test_extend_in_a_spawned_process_while_blocks_are_written(tmp_path, monkeypatch):
    """A real OS process (``multiprocessing`` spawn) extends between two blocks."""
    import multiprocessing

    monkeypatch.setattr(_dask, "GATE_WINDOW_S", 0.0)
    path = str(tmp_path / "t.zarr")
    _make(path)
    src = _steps().isel(time=slice(0, N))

    def hook() -> None:
        ctx = multiprocessing.get_context("spawn")
        proc = ctx.Process(target=xzw.extend, args=(path,), kwargs={"steps": 4})
        proc.start()
        proc.join(120)
        assert proc.exitcode == 0

    with dask.config.set(scheduler="synchronous"):
        xzw.write_region(_hooked(src, 4, hook), path)
    back = _read(path)
    assert back.sizes["time"] == N + 4
    np.testing.assert_array_equal(back.tcwv.values[:N], src.tcwv.values)
    assert np.isnan(back.tcwv.values[N:]).all()


@pytest.mark.parametrize("kind", ["stream", "nonblocking"])
def test_stream_writes_across_an_extend(tmp_path, kind):
    """The same gate on the StreamWriter path (steps assembled into 4-step units) and the
    non-blocking path: steps planned before another process extended still land."""
    path = str(tmp_path / "t.zarr")
    _make(path, tchunk=4)
    src = _steps().isel(time=slice(0, N))
    if kind == "stream":
        with xzw.StreamWriter(path) as writer:
            for i in range(N):
                if i == 6:
                    writer.flush()
                    xzw.extend(path, steps=6)
                writer.write(src.isel(time=[i]))
    else:
        xzw.write_region(src.isel(time=slice(0, 4)), path, blocking=False).result(60)  # type: ignore[union-attr]
        xzw.extend(path, steps=6)
        xzw.write_region(src.isel(time=slice(4, N)), path, blocking=False).result(60)  # type: ignore[union-attr]
        for shared in list(runtime.writers.values()):  # the per-store shared writer
            shared.close()
    back = _read(path)
    assert back.sizes["time"] == N + 6
    for name in ("t2m", "tcwv"):
        np.testing.assert_array_equal(back[name].values[:N], src[name].values)
        assert np.isnan(back[name].values[N:]).all()
