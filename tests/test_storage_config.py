"""BufferedStore reads its defaults from xarray_zarrwrite.config when it is constructed."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap
from typing import Self

import numpy as np
import pytest
import xarray as xr
from zarr.abc.store import Store
from zarr.core.buffer import cpu
from zarr.core.sync import sync
from zarr.storage import MemoryStore

from xarray_zarrwrite._compat import Buffer, WrapperStore
from xarray_zarrwrite.config import config
from xarray_zarrwrite.errors import InputError
from xarray_zarrwrite.storage import BufferedStore
from xarray_zarrwrite.testing.faults import FaultyStore

MIB = 1 << 20


class PeakStore(WrapperStore[Store]):
    """Records the most ``set`` calls in flight at once."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.active = 0
        self.peak = 0

    def _with_store(self, store: Store) -> Self:
        return type(self)(store)

    async def set(self, key: str, value: Buffer) -> None:
        self.active += 1
        self.peak = max(self.peak, self.active)
        try:
            for _ in range(5):
                await asyncio.sleep(0)
            await self._store.set(key, value)
        finally:
            self.active -= 1


def options(store: BufferedStore) -> tuple[int, int, int, float]:
    cfg = store._core.config
    return cfg.max_buffer_bytes, cfg.concurrency, cfg.retries, cfg.retry_backoff


def test_defaults_come_from_the_config() -> None:
    store = BufferedStore(MemoryStore())
    assert options(store) == (
        int(config.get("max_buffer_mb") * MIB),
        config.get("concurrency"),
        config.get("retries"),
        config.get("retry_backoff"),
    )
    assert config.get("max_buffer_mb") == 256
    store.close()


def test_config_set_is_read_at_construction() -> None:
    with config.set(concurrency=3, retries=1, retry_backoff=0.25, max_buffer_mb=2):
        inside = BufferedStore(MemoryStore())
        explicit = BufferedStore(MemoryStore(), concurrency=5, retries=0, max_buffer_mb=1)
    after = BufferedStore(MemoryStore())
    assert options(inside) == (2 * MIB, 3, 1, 0.25)  # kept after the context exits
    assert options(explicit) == (1 * MIB, 5, 0, 0.25)  # explicit arguments win
    assert options(after) == (256 * MIB, config.get("concurrency"), config.get("retries"), 0.1)
    assert "concurrency=3, retries=1" in repr(inside)
    for store in (inside, explicit, after):
        store.close()


def test_config_concurrency_bounds_writes_in_flight() -> None:
    inner = MemoryStore()
    peak = PeakStore(inner)
    with config.set(concurrency=2):
        store = BufferedStore(peak)
    values = {f"k/{i}": np.full(100, i, dtype="u1").tobytes() for i in range(24)}
    sync(store._set_many([(k, cpu.Buffer.from_bytes(v)) for k, v in values.items()]))
    store.close()
    assert peak.peak == 2
    for key, value in values.items():
        got = sync(inner.get(key, cpu.buffer_prototype))
        assert got is not None
        assert got.to_bytes() == value


def test_config_retries_are_the_attempts_of_a_failing_key() -> None:
    faulty = FaultyStore(MemoryStore(), rate=1.0, kinds=("reset",), ops=("set",))
    with config.set(retries=2, retry_backoff=0):
        store = BufferedStore(faulty)
    sync(store.set("k", cpu.Buffer.from_bytes(b"v")))
    with pytest.raises(OSError, match=r"3 attempt\(s\)"):
        store.close()
    assert faulty.calls == 3


@pytest.mark.parametrize(
    ("key", "value", "match"),
    [
        ("concurrency", 0, "concurrency must be an integer >= 1, got 0"),
        ("retries", -1, "retries must be an integer >= 0"),
        ("max_buffer_mb", 0, "max_buffer_mb must be a positive number"),
        ("retry_backoff", -0.5, "retry_backoff must be a number of seconds >= 0"),
    ],
)
def test_bad_config_values_are_rejected_at_construction(key: str, value: float, match: str) -> None:
    with config.set({key: value}), pytest.raises(InputError, match=match) as info:
        BufferedStore(MemoryStore())
    assert f"config key {key!r}" in str(info.value)
    assert f"XARRAY_ZARRWRITE_{key.upper()}" in str(info.value)
    with pytest.raises(InputError, match=f"the argument {key}="):
        BufferedStore(MemoryStore(), **{key: value})  # type: ignore[arg-type]


def test_environment_variables_set_the_defaults(tmp_path: os.PathLike[str]) -> None:
    code = textwrap.dedent(
        f"""
        import xarray as xr
        from xarray_zarrwrite.storage import BufferedStore
        store = BufferedStore({str(tmp_path)!r})
        cfg = store._core.config
        assert (cfg.max_buffer_bytes, cfg.concurrency, cfg.retries, cfg.retry_backoff) == (
            3 << 20, 7, 5, 0.5), cfg
        xr.Dataset({{"a": ("x", [1, 2, 3])}}).to_zarr(store, zarr_format=3, consolidated=False)
        store.close()
        """
    )
    env = {
        **os.environ,
        "XARRAY_ZARRWRITE_MAX_BUFFER_MB": "3",
        "XARRAY_ZARRWRITE_CONCURRENCY": "7",
        "XARRAY_ZARRWRITE_RETRIES": "5",
        "XARRAY_ZARRWRITE_RETRY_BACKOFF": "0.5",
    }
    done = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    back = xr.open_zarr(str(tmp_path), consolidated=False)
    assert back["a"].values.tolist() == [1, 2, 3]
    assert back["a"].values[-1] == 3
