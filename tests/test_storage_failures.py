"""BufferedStore failures belong to the writer; retries are counted once per key."""

from __future__ import annotations

import pickle
import re
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.abc.store import Store
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import sync
from zarr.storage import LocalStore, MemoryStore

import xarray_zarrwrite as xzw
from xarray_zarrwrite._compat import WrapperStore
from xarray_zarrwrite.errors import WriteFailedError
from xarray_zarrwrite.storage import BufferedStore, is_transient_error
from xarray_zarrwrite.testing.faults import FaultyStore

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from zarr.abc.store import ByteRequest
    from zarr.core.buffer import Buffer, BufferPrototype

PROTO = default_buffer_prototype()


def buf(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


def raw(store: Store, key: str) -> bytes | None:
    value = sync(store.get(key, PROTO))
    return None if value is None else value.to_bytes()


def wait_without_taking(store: BufferedStore) -> None:
    """A barrier for the background writes that leaves their failures to the writer."""
    store.with_read_only(True).flush_sync(strict=True)


def dataset() -> xr.Dataset:
    rng = np.random.default_rng(42)
    return xr.Dataset(
        {"a": (("x", "y"), rng.standard_normal((10, 3)).astype("f4"))},
        coords={"x": np.arange(10), "y": [10.0, 20.0, 30.0]},
    )


def assert_bitwise(actual: xr.Dataset, expected: xr.Dataset) -> None:
    for name, var in expected.variables.items():
        np.testing.assert_array_equal(actual[name].values, var.values, strict=True)
        assert actual[name].values.tobytes() == var.values.tobytes(), name
    assert actual["a"].values[-1, -1] == expected["a"].values[-1, -1]


@pytest.fixture(params=["memory", "local"])
def inner(request: pytest.FixtureRequest, tmp_path: Path) -> Store:
    if request.param == "memory":
        return MemoryStore()
    return LocalStore(str(tmp_path / "inner"))


# ---------------------------------------------------------------------------------------------
# Failures belong to the writer
# ---------------------------------------------------------------------------------------------


def test_reader_open_zarr_does_not_take_the_writers_failure(inner: Store) -> None:
    old = dataset()
    ds = old.copy(deep=True)
    ds["a"][5:] += 100  # the region write below updates the second chunk
    faulty = FaultyStore(inner, rate=0.0, ops=("set", "delete"))
    store = BufferedStore(faulty)
    old.to_zarr(store, zarr_format=3, encoding={"a": {"chunks": (5, 3)}})
    store.flush_sync(strict=True)
    faulty.permanent_keys = ("a/c/1/*",)
    ds.isel(x=slice(5, 10)).drop_vars("y").to_zarr(store, region={"x": slice(5, 10)})
    wait_without_taking(store)
    assert store.failed_keys == ("a/c/1/0",)

    # the reader, on a read-only view of the same buffer, opens, loads and closes: no error
    reader = store.with_read_only(True)
    with xr.open_zarr(reader, consolidated=None) as back:
        loaded = back.load()
    assert_bitwise(loaded, old)  # what is durable (the failed value is not served)
    pickle.loads(pickle.dumps(reader)).close()  # (dask's tokenize pickles the reader's store)
    reader.close()

    # ... and the writer gets it, once, with the key and the true attempt count
    with pytest.raises(WriteFailedError, match=re.escape("'a/c/1/0'")) as info:
        store.flush_sync()
    assert "1 attempt(s)" in str(info.value)
    assert isinstance(info.value.__cause__, PermissionError)
    store.flush_sync()  # raised once: no double reporting ...
    with pytest.raises(WriteFailedError, match="a/c/1/0"):
        store.flush_sync(strict=True)  # ... but strict still says the key is not durable

    # the writer repairs the chunk, and plain xarray/zarr read back every byte
    faulty.permanent_keys = ()
    ds.isel(x=slice(5, 10)).drop_vars("y").to_zarr(store, region={"x": slice(5, 10)})
    store.close()
    assert store.failed_keys == ()
    assert_bitwise(xr.open_zarr(inner, consolidated=None).load(), ds)
    np.testing.assert_array_equal(zarr.open_array(inner, path="a")[...], ds["a"].values)


def test_every_read_path_leaves_the_failure_to_the_writer() -> None:
    inner = MemoryStore()
    sync(inner.set("d/k", buf(b"old")))
    faulty = FaultyStore(inner, rate=0.0, ops=("set", "delete"), permanent_keys=("bad",))
    store = BufferedStore(faulty)
    sync(store.set("bad", buf(b"x")))
    wait_without_taking(store)
    ro = store.with_read_only(True)
    for view in (store, ro):  # reads through the writer's own store object take nothing either
        assert sync(view.get("bad", PROTO)) is None
        assert raw(view, "d/k") == b"old"
        assert sync(view.get_partial_values(PROTO, [("d/k", None), ("bad", None)]))[1] is None
        assert sync(view.exists("d/k"))
        assert not sync(view.exists("bad"))
        assert sync(view.getsize("d/k")) == 3
        assert not sync(view.is_empty("d"))
        assert sorted(sync(_collect(view.list()))) == ["d/k"]
        assert sync(_collect(view.list_prefix("d"))) == ["d/k"]
        assert sorted(sync(_collect(view.list_dir("")))) == ["d"]
    sync(ro.flush())
    ro.flush_sync(strict=True)
    sync(ro.aclose())
    ro.close()
    pickle.loads(pickle.dumps(ro)).close()
    with pytest.raises(WriteFailedError, match="set of 'bad'"):
        store.close()
    store.close()  # reported once


async def _collect_async(iterator: Any) -> list[str]:
    return [key async for key in iterator]


def _collect(iterator: Any) -> Any:
    return _collect_async(iterator)


def _close(store: BufferedStore) -> None:
    store.close()


def _aclose(store: BufferedStore) -> None:
    sync(store.aclose())


def _flush(store: BufferedStore) -> None:
    sync(store.flush())


def _flush_sync(store: BufferedStore) -> None:
    store.flush_sync()


def _with(store: BufferedStore) -> None:
    with store:
        pass


def _async_with(store: BufferedStore) -> None:
    async def body() -> None:
        async with store:
            pass

    sync(body())


@pytest.mark.parametrize(
    "finish", [_close, _aclose, _flush, _flush_sync, _with, _async_with], ids=lambda f: f.__name__
)
def test_flush_and_close_raise_an_unreported_failure_once(
    inner: Store, finish: Callable[[BufferedStore], None]
) -> None:
    faulty = FaultyStore(inner, rate=0.0, ops=("set", "delete"), permanent_keys=("bad/*",))
    store = BufferedStore(faulty)
    sync(store.set("ok", buf(b"o")))
    sync(store.set("bad/1", buf(b"x")))  # the last write: only flush/close can report it
    with pytest.raises(WriteFailedError, match=re.escape("'bad/1'")):
        finish(store)
    finish(store)  # no double reporting
    store.close()
    with pytest.raises(WriteFailedError, match="bad/1"):
        store.flush_sync(strict=True)
    assert raw(inner, "ok") == b"o"
    assert raw(inner, "bad/1") is None
    assert store.failed_keys == ("bad/1",)


@pytest.mark.parametrize("write", ["set", "delete", "delete_dir", "clear"])
def test_next_write_raises_the_failure_and_flush_does_not_repeat_it(write: str) -> None:
    inner = MemoryStore()
    faulty = FaultyStore(inner, rate=0.0, ops=("set", "delete"), permanent_keys=("bad",))
    store = BufferedStore(faulty)
    sync(store.set("bad", buf(b"x")))
    wait_without_taking(store)
    calls = {
        "set": lambda: store.set("next", buf(b"n")),
        "delete": lambda: store.delete("gone"),
        "delete_dir": lambda: store.delete_dir("dir"),
        "clear": lambda: store.clear(),
    }
    with pytest.raises(WriteFailedError, match="set of 'bad'"):
        sync(calls[write]())
    store.flush_sync()
    store.close()
    assert raw(inner, "next") == (b"n" if write == "set" else None)
    # clear() deletes everything: the failed key is durably absent now, no longer failed
    assert store.failed_keys == (() if write == "clear" else ("bad",))


def test_write_failed_error_is_not_swallowed_by_open_zarr_fallback() -> None:
    assert not issubclass(WriteFailedError, ValueError)
    store = MemoryStore()
    dataset().to_zarr(store, zarr_format=3, consolidated=False)

    class FailingMetadata(WrapperStore[Store]):
        def _with_store(self, store: Store) -> Self:
            return type(self)(store)

        async def get(
            self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
        ) -> Buffer | None:
            if key.endswith("zarr.json"):
                raise WriteFailedError(f"injected failure of {key!r}")
            return await self._store.get(key, prototype, byte_range)

    with pytest.raises(WriteFailedError, match="injected failure"):
        xr.open_zarr(FailingMetadata(store), consolidated=None)


# ---------------------------------------------------------------------------------------------
# One retry layer: attempts counted once per key
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("retries", [0, 1, 4])
@pytest.mark.parametrize("write_through", [False, True])
def test_a_failing_put_is_attempted_exactly_retries_plus_one_times(
    retries: int, write_through: bool
) -> None:
    inner = MemoryStore()
    faulty = FaultyStore(inner, rate=1.0, kinds=("reset",), ops=("set",))
    store = BufferedStore(faulty, retries=retries, retry_backoff=0, write_through=write_through)
    attempts = f"{retries + 1} attempt(s)"
    with pytest.raises(WriteFailedError, match=re.escape(attempts)) as info:
        sync(store.set("k", buf(b"v")))
        store.flush_sync()
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert faulty.calls == retries + 1
    assert faulty.faults_injected == retries + 1
    assert store.stats.retries == retries
    assert store.stats.failures == 1
    store.close()
    assert raw(inner, "k") is None


@pytest.mark.parametrize("write_through", [False, True])
def test_region_write_through_a_buffered_store_retries_once_per_key(
    write_through: bool,
) -> None:
    ds = dataset()
    inner = MemoryStore()
    ds.fastzarr.to_template(inner, time_dim=None, chunks={"x": 10, "y": 3})
    faulty = FaultyStore(inner, rate=1.0, kinds=("reset",), ops=("set",))
    store = BufferedStore(faulty, retries=2, retry_backoff=0, write_through=write_through)
    with pytest.raises(WriteFailedError, match=re.escape("3 attempt(s)")):
        xzw.write_region(ds[["a"]], store, region={"x": slice(0, 10), "y": slice(0, 3)})
        store.flush_sync()
    assert faulty.calls == 3  # one chunk key, retries + 1 attempts: no second retry layer
    store.close()
    faulty.rate = 0.0
    with BufferedStore(faulty) as good:
        xzw.write_region(ds[["a"]], good, region={"x": slice(0, 10), "y": slice(0, 3)})
    assert_bitwise(xr.open_zarr(inner, consolidated=False).load(), ds)


def test_a_read_that_spent_its_retries_is_not_retried_again() -> None:
    inner = MemoryStore()
    sync(inner.set("k", buf(b"v")))
    faulty = FaultyStore(inner, rate=1.0, kinds=("error",), ops=("get",))
    store = BufferedStore(faulty, retries=2, retry_backoff=0)
    with pytest.raises(OSError, match="injected transient") as info:
        sync(store.get("k", PROTO))
    assert faulty.calls == 3
    assert not is_transient_error(info.value)  # an outer retry loop leaves it alone
    assert is_transient_error(OSError(5, "a fresh EIO is still transient"))
    store.close()
