"""A process forked after a BufferedStore has written can use it, and new ones, without hanging."""

from __future__ import annotations

import multiprocessing
import os
from typing import TYPE_CHECKING

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore

from xarray_zarrwrite.storage import BufferedStore

if TYPE_CHECKING:
    from pathlib import Path

pytestmark = [
    pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork"),
    # Python 3.12+ warns that forking a multi-threaded process may deadlock: that hazard is
    # exactly what this module checks (zarr's IO thread is running when we fork).
    pytest.mark.filterwarnings("ignore:This process .* is multi-threaded:DeprecationWarning"),
]

JOIN_TIMEOUT_S = 120


def dataset(offset: int) -> xr.Dataset:
    data = np.arange(offset, offset + 60, dtype="f8").reshape(12, 5)
    return xr.Dataset(
        {"v": (("t", "x"), data)}, coords={"t": np.arange(12), "x": np.arange(5) * 0.5}
    )


def child(inherited: BufferedStore, own_path: str) -> None:
    """Write through the inherited store, then through a new BufferedStore; exit 0 if all ok."""
    assert inherited.write_through  # a forked copy writes through
    assert inherited.failed_keys == ()  # takes the (reset) lock
    # (raw keys sit outside the groups that the parent reads back with xarray)
    sync(inherited.set("from_child/raw", cpu.Buffer.from_bytes(b"child bytes")))
    got = sync(inherited.get("from_child/raw", default_buffer_prototype()))
    assert got is not None
    assert got.to_bytes() == b"child bytes"
    dataset(1000).to_zarr(inherited, group="child_group", zarr_format=3, consolidated=False)
    inherited.close()
    with BufferedStore(own_path) as own:
        dataset(2000).to_zarr(own, zarr_format=3, consolidated=False)


def assert_bitwise(path: Path | str, expected: xr.Dataset, group: str | None = None) -> None:
    back = xr.open_zarr(str(path), group=group, consolidated=False).load()
    for name, var in expected.variables.items():
        assert back[name].values.tobytes() == var.values.tobytes(), name
    assert back["v"].values[-1, -1] == expected["v"].values[-1, -1]
    raw = zarr.open_array(str(path), path="v" if group is None else f"{group}/v", mode="r")
    np.testing.assert_array_equal(raw[...], expected["v"].values)


@pytest.mark.parametrize("lock_held_at_fork", [False, True])
def test_forked_child_writes_through_inherited_and_new_stores(
    tmp_path: Path, lock_held_at_fork: bool
) -> None:
    parent_path = tmp_path / "parent.zarr"
    child_path = tmp_path / "child.zarr"
    store = BufferedStore(LocalStore(str(parent_path)), concurrency=4)
    dataset(0).to_zarr(store, group="parent_group", zarr_format=3, consolidated=False)
    store.flush_sync(strict=True)
    sync(store.set("pending/key", cpu.Buffer.from_bytes(b"parent")))  # may still be queued

    ctx = multiprocessing.get_context("fork")
    process = ctx.Process(target=child, args=(store, str(child_path)))
    lock = store._core._lock
    if lock_held_at_fork:
        # as if a thread of the parent were inside the engine's critical section at the fork
        lock.acquire()
    try:
        process.start()
    finally:
        if lock_held_at_fork:
            lock.release()
    process.join(JOIN_TIMEOUT_S)
    if process.is_alive():
        process.kill()
        process.join()
        pytest.fail(f"the forked child hung (still running after {JOIN_TIMEOUT_S} s)")
    exitcode = process.exitcode
    process.close()
    assert exitcode == 0, f"the forked child failed (exit code {exitcode}, traceback above)"

    # the parent's store is untouched by the fork and still works
    sync(store.set("after/fork", cpu.Buffer.from_bytes(b"still works")))
    store.close()
    assert (parent_path / "pending" / "key").read_bytes() == b"parent"
    assert (parent_path / "after" / "fork").read_bytes() == b"still works"
    assert (parent_path / "from_child" / "raw").read_bytes() == b"child bytes"
    assert_bitwise(parent_path, dataset(0), group="parent_group")
    assert_bitwise(parent_path, dataset(1000), group="child_group")
    assert_bitwise(child_path, dataset(2000))
