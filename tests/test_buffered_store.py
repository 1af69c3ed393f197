"""BufferedStore: zarr's store contract, write-behind semantics, errors, S3 via moto_server."""

from __future__ import annotations

import asyncio
import errno
import os
import pickle
import random
import re
import subprocess
import sys
import textwrap
import threading
import uuid
from typing import TYPE_CHECKING, Any, Self

import numpy as np
import pytest
import xarray as xr
import zarr
from zarr.abc.store import RangeByteRequest, Store, SuffixByteRequest
from zarr.core.buffer import cpu, default_buffer_prototype
from zarr.core.sync import _collect_aiterator, sync
from zarr.storage import FsspecStore, LocalStore, MemoryStore
from zarr.testing.store import StoreTests

from xarray_zarrwrite._compat import WrapperStore  # zarr 3.1-3.4 alike
from xarray_zarrwrite.errors import ReadOnlyStoreError, WriteFailedError
from xarray_zarrwrite.storage._buffered import (
    BufferedStore,
    BufferedStoreStats,
    _owned,
    is_transient_error,
)
from xarray_zarrwrite.testing import fixtures as _s3_fixtures
from xarray_zarrwrite.testing.faults import FaultyStore
from xarray_zarrwrite.testing.latency import LatencyStore

if TYPE_CHECKING:
    from collections.abc import Callable
    from pathlib import Path

    from zarr.core.buffer import Buffer

PROTO = default_buffer_prototype()

# the S3 fixtures (moto_server on 127.0.0.1), under the names the tests ask for
s3_endpoint = _s3_fixtures.s3_endpoint
s3_storage_options = _s3_fixtures.s3_storage_options
s3_url = _s3_fixtures.s3_url


def buf(data: bytes) -> cpu.Buffer:
    return cpu.Buffer.from_bytes(data)


# ---------------------------------------------------------------------------------------------
# Test doubles wrapping real stores
# ---------------------------------------------------------------------------------------------


class GateStore(WrapperStore[Store]):
    """Holds every write until ``gate`` is set: writes are deterministically still queued."""

    def __init__(self, store: Store) -> None:
        super().__init__(store)
        self.gate = threading.Event()
        self.started: list[str] = []

    def _with_store(self, store: Store) -> Self:
        return type(self)(store)

    async def _wait(self, key: str) -> None:
        self.started.append(key)
        while not self.gate.is_set():
            await asyncio.sleep(0.002)

    async def set(self, key: str, value: Buffer) -> None:
        await self._wait(key)
        await self._store.set(key, value)

    async def delete(self, key: str) -> None:
        await self._wait(key)
        await self._store.delete(key)


class RecordingStore(WrapperStore[Store]):
    """Records the order in which values arrive, with a random delay per write."""

    def __init__(self, store: Store, seed: int = 0) -> None:
        super().__init__(store)
        self.log: list[tuple[str, bytes]] = []
        self._rng = random.Random(seed)

    async def set(self, key: str, value: Buffer) -> None:
        await asyncio.sleep(self._rng.uniform(0, 0.004))
        await self._store.set(key, value)
        self.log.append((key, value.to_bytes()))


async def eventually(predicate: Callable[[], bool], what: str) -> None:
    """Wait (boundedly, polling) for a condition; no assertion on how long it takes."""
    for _ in range(10_000):
        if predicate():
            return
        await asyncio.sleep(0.001)
    raise AssertionError(f"timed out waiting until {what}")


async def wait_for_failures(store: BufferedStore, n: int) -> None:
    await eventually(lambda: store.stats.failures >= n, f"{n} background failure(s)")


async def io_loop_tasks(store: BufferedStore) -> int:
    async def count() -> int:
        for _ in range(5):
            await asyncio.sleep(0)
        return len(asyncio.all_tasks()) - 1

    return await store._core.run(count)


def inner_bytes(store: Store, key: str) -> bytes | None:
    value = sync(store.get(key, PROTO))
    return None if value is None else value.to_bytes()


# ---------------------------------------------------------------------------------------------
# zarr's store contract
# ---------------------------------------------------------------------------------------------


class _BufferedStoreContract(StoreTests[BufferedStore, cpu.Buffer]):
    store_cls = BufferedStore
    buffer_cls = cpu.Buffer

    async def set(self, store: BufferedStore, key: str, value: Buffer) -> None:
        # Bypass the buffer: write straight into the wrapped store.
        await store._store.set(key, value)

    async def get(self, store: BufferedStore, key: str) -> Buffer:
        # What is durable, i.e. in the wrapped store once queued writes are flushed.
        await store.flush()
        value = await store._store.get(key, PROTO)
        assert value is not None, f"{key!r} was not written to the wrapped store"
        return value

    def test_store_repr(self, store: BufferedStore) -> None:
        assert repr(store).startswith(f"BufferedStore({store._store!r}, max_buffer_mb=")
        assert str(store) == f"buffered+{store._store}"

    def test_store_supports_writes(self, store: BufferedStore) -> None:
        assert store.supports_writes

    def test_store_supports_listing(self, store: BufferedStore) -> None:
        assert store.supports_listing


class TestBufferedLocalStore(_BufferedStoreContract):
    @pytest.fixture
    def store_kwargs(self, tmp_path: Path) -> dict[str, Any]:
        return {"target": str(tmp_path), "max_buffer_mb": 1, "concurrency": 4}

    def test_wraps_local_store(self, store: BufferedStore) -> None:
        assert isinstance(store._store, LocalStore)


class TestBufferedSlowMemoryStore(_BufferedStoreContract):
    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        slow = LatencyStore(MemoryStore(), set_latency=0.003)
        return {"target": slow, "max_buffer_mb": 0.01, "concurrency": 2}


class TestBufferedWriteThroughStore(_BufferedStoreContract):
    @pytest.fixture
    def store_kwargs(self) -> dict[str, Any]:
        return {"target": MemoryStore(), "write_through": True}


# ---------------------------------------------------------------------------------------------
# Construction
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"max_buffer_mb": 0}, "max_buffer_mb must be a positive"),
        ({"max_buffer_mb": float("nan")}, "max_buffer_mb must be a positive"),
        ({"concurrency": 0}, "concurrency must be an integer >= 1"),
        ({"retries": -1}, "retries must be an integer >= 0"),
        ({"retry_backoff": -0.1}, "retry_backoff must be"),
    ],
)
def test_rejects_bad_options(kwargs: dict[str, Any], match: str) -> None:
    with pytest.raises(ValueError, match=match):
        BufferedStore(MemoryStore(), **kwargs)


def test_storage_options_need_a_url() -> None:
    with pytest.raises(ValueError, match="storage_options cannot be used"):
        BufferedStore(MemoryStore(), storage_options={"anon": True})


def test_local_targets_use_atomic_local_store(tmp_path: Path) -> None:
    assert isinstance(BufferedStore(str(tmp_path))._store, LocalStore)
    assert isinstance(BufferedStore(f"file://{tmp_path}")._store, LocalStore)
    fsspec_local = FsspecStore.from_url(f"local://{tmp_path}")
    routed = BufferedStore(fsspec_local)._store
    assert isinstance(routed, LocalStore)
    assert routed.root == tmp_path
    assert isinstance(BufferedStore("memory://buffered-test")._store, FsspecStore)


def test_read_only_target() -> None:
    store = BufferedStore(MemoryStore(), read_only=True)
    assert store.read_only
    with pytest.raises(ReadOnlyStoreError, match="read-only"):
        sync(store.set("k", buf(b"v")))


# ---------------------------------------------------------------------------------------------
# Write-behind semantics
# ---------------------------------------------------------------------------------------------


async def test_read_your_writes_while_queued() -> None:
    inner = MemoryStore()
    gate = GateStore(inner)
    store = BufferedStore(gate, concurrency=2)
    await store._set_many(
        [("g/zarr.json", buf(b"{}")), ("g/c/0", buf(b"abcdef")), ("g/c/1", buf(b"xyz"))]
    )
    assert inner._store_dict == {}  # nothing has reached the wrapped store
    assert store.stats.pending_keys == 3
    assert (await store.get("g/c/0", PROTO)) == buf(b"abcdef")
    got = await store.get("g/c/0", PROTO, byte_range=RangeByteRequest(1, 3))
    assert got == buf(b"bc")
    assert await store.get("g/c/0", PROTO, byte_range=SuffixByteRequest(2)) == buf(b"ef")
    parts = await store.get_partial_values(
        PROTO, [("g/c/1", None), ("missing", None), ("g/c/0", RangeByteRequest(0, 1))]
    )
    assert parts == [buf(b"xyz"), None, buf(b"a")]
    assert await store.exists("g/c/1")
    assert await store.getsize("g/c/0") == 6
    assert sorted(await _collect_aiterator(store.list())) == ["g/c/0", "g/c/1", "g/zarr.json"]
    assert await _collect_aiterator(store.list_prefix("g/c/")) == ("g/c/0", "g/c/1")
    assert await _collect_aiterator(store.list_dir("g")) == ("c", "zarr.json")
    assert not await store.is_empty("g")
    # A read-only view (zarr makes one for mode="r") shares the buffer.
    reader = store.with_read_only(True)
    assert await reader.get("g/c/1", PROTO) == buf(b"xyz")
    with pytest.raises(ReadOnlyStoreError):
        await reader.set("g/c/2", buf(b"no"))
    reader.close()  # a reader's close does not wait for the writers' queue (held by the gate)
    assert store.stats.pending_keys == 3
    gate.gate.set()
    await store.flush()
    assert {k: v.to_bytes() for k, v in inner._store_dict.items()} == {
        "g/zarr.json": b"{}",
        "g/c/0": b"abcdef",
        "g/c/1": b"xyz",
    }
    assert store.stats.pending_keys == 0


async def test_last_write_wins_and_never_goes_back() -> None:
    inner = MemoryStore()
    recorder = RecordingStore(inner, seed=1)
    store = BufferedStore(recorder, concurrency=8)
    for version in range(60):
        await store.set(f"k{version % 3}", buf(b"%d" % version))
        if version % 7 == 0:
            await asyncio.sleep(0.002)
    await store.flush()
    for key in ("k0", "k1", "k2"):
        versions = [int(v) for k, v in recorder.log if k == key]
        assert versions == sorted(set(versions)), f"{key} went back in time: {versions}"
        assert inner_bytes(inner, key) == b"%d" % versions[-1]
    assert [int(inner_bytes(inner, f"k{i}") or b"-1") for i in range(3)] == [57, 58, 59]


async def test_coalescing_keeps_only_the_newest_value() -> None:
    inner = MemoryStore()
    gate = GateStore(inner)
    store = BufferedStore(gate)
    await store.set("k", buf(b"first"))
    await eventually(lambda: bool(gate.started), "the first write is in flight")
    for i in range(10):
        await store.set("k", buf(b"v%d" % i))
    assert await store.get("k", PROTO) == buf(b"v9")
    stats = store.stats
    assert stats.coalesced == 9
    assert stats.buffered_bytes == len(b"first") + len(b"v9")
    gate.gate.set()
    await store.flush()
    assert inner_bytes(inner, "k") == b"v9"
    assert store.stats.puts == 2


async def test_delete_is_ordered_after_queued_set() -> None:
    inner = MemoryStore()
    await inner.set("old", buf(b"old"))
    gate = GateStore(inner)
    store = BufferedStore(gate)
    await store.set("k", buf(b"v"))
    await store.delete("k")
    await store.delete("old")
    assert await store.get("k", PROTO) is None
    assert not await store.exists("k")
    assert not await store.exists("old")
    assert await _collect_aiterator(store.list()) == ()
    await store.set("k2", buf(b"x"))
    await store.delete("k2")
    await store.set("k2", buf(b"y"))  # set after delete wins again
    gate.gate.set()
    await store.flush()
    assert set(inner._store_dict) == {"k2"}
    assert inner_bytes(inner, "k2") == b"y"


async def test_delete_dir_is_ordered_with_queued_and_later_writes() -> None:
    inner = MemoryStore()
    await inner.set("foo/old", buf(b"old"))
    gate = GateStore(inner)
    store = BufferedStore(gate, concurrency=2)
    for key in ("foo/a", "foo/b", "foo-bar/c", "bar/c"):
        await store.set(key, buf(key.encode()))
    deleting = asyncio.ensure_future(store.delete_dir("foo"))
    await eventually(lambda: bool(store._core._fences), "delete_dir has started")
    await store.set("foo/new", buf(b"new"))  # issued after delete_dir: must survive
    assert not await store.exists("foo/a")
    assert not await store.exists("foo/old")
    assert await store.exists("foo/new")
    assert await _collect_aiterator(store.list_prefix("foo/")) == ("foo/new",)
    gate.gate.set()
    await deleting
    await store.flush()
    assert set(inner._store_dict) == {"foo-bar/c", "bar/c", "foo/new"}


async def test_clear_drops_queued_writes() -> None:
    inner = MemoryStore()
    gate = GateStore(inner)
    store = BufferedStore(gate, concurrency=1)
    await store.set("a", buf(b"a"))  # will be in flight, held by the gate
    await store.set("b", buf(b"b"))  # stays queued: dropped by clear()
    clearing = asyncio.ensure_future(store.clear())
    await eventually(lambda: bool(store._core._fences), "clear has started")
    assert await store.is_empty("")
    assert await store.get("a", PROTO) is None
    gate.gate.set()
    await clearing
    await store.flush()
    assert inner._store_dict == {}
    assert gate.started == ["a"]


def test_copy_protects_queued_chunks_from_caller_mutation() -> None:
    inner = MemoryStore()
    gate = GateStore(inner)
    store = BufferedStore(gate)
    array = zarr.create_array(store, shape=(8,), chunks=(8,), dtype="f8", compressors=None)
    source = np.arange(8.0)
    array[:] = source  # an uncompressed complete chunk: zarr hands us a view of `source`
    source[:] = -1.0
    gate.gate.set()
    store.flush_sync()
    np.testing.assert_array_equal(zarr.open_array(inner, mode="r")[:], np.arange(8.0))
    # bytes-backed values (compressed chunks, metadata) are queued without a copy
    value = buf(b"immutable")
    assert _owned(value) is value
    mutable = cpu.Buffer.from_array_like(np.zeros(4, dtype="B"))
    assert _owned(mutable) is not mutable


async def test_async_and_sync_context_managers_flush(tmp_path: Path) -> None:
    inner = MemoryStore()
    async with BufferedStore(LatencyStore(inner, set_latency=0.005)) as store:
        await store.set("a", buf(b"1"))
    assert inner_bytes(inner, "a") == b"1"
    with BufferedStore(str(tmp_path)) as local:
        await local.set("b", buf(b"2"))
    assert (tmp_path / "b").read_bytes() == b"2"
    assert not local._is_open


def test_unclosed_store_is_flushed_at_exit(tmp_path: Path) -> None:
    script = textwrap.dedent(
        """
        import sys
        from zarr.core.buffer import cpu
        from zarr.core.sync import sync
        from zarr.storage import LocalStore
        from xarray_zarrwrite.testing.latency import LatencyStore
        from xarray_zarrwrite.storage._buffered import BufferedStore

        store = BufferedStore(LatencyStore(LocalStore(sys.argv[1]), set_latency=0.1))
        for i in range(4):
            sync(store.set(f"k{i}", cpu.Buffer.from_bytes(b"%d" % i)))
        assert store.stats.pending_keys > 0
        """
    )
    done = subprocess.run(
        [sys.executable, "-c", script, str(tmp_path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "Warning" not in done.stderr, done.stderr
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == {
        f"k{i}": b"%d" % i for i in range(4)
    }


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------


def faulty_memory(**kwargs: Any) -> tuple[MemoryStore, FaultyStore]:
    inner = MemoryStore()
    return inner, FaultyStore(inner, **{"rate": 0.0, "ops": ("set", "delete"), **kwargs})


async def test_permanent_failure_raised_once_at_flush() -> None:
    inner, faulty = faulty_memory(permanent_keys=("bad/*",))
    store = BufferedStore(faulty, retries=5)
    await store.set("good", buf(b"y"))
    await store.set("bad/1", buf(b"x"))
    with pytest.raises(WriteFailedError, match=re.escape("'bad/1'")) as info:
        await store.flush()
    assert isinstance(info.value.__cause__, PermissionError)
    assert "1 attempt(s)" in str(info.value)  # permanent errors are not retried
    assert store.stats.retries == 0
    await store.flush()  # reported once ...
    assert store.failed_keys == ("bad/1",)  # ... but never reported as durable
    with pytest.raises(WriteFailedError, match="bad/1"):
        await store.flush(strict=True)
    assert inner_bytes(inner, "bad/1") is None
    assert inner_bytes(inner, "good") == b"y"
    # the failed value is not served from memory: reads show what is durable
    assert await store.get("bad/1", PROTO) is None
    # a later successful write of the key clears it
    faulty.permanent_keys = ()
    await store.set("bad/1", buf(b"x2"))
    await store.flush(strict=True)
    assert store.failed_keys == ()


async def test_failure_raised_at_next_set_which_is_still_queued() -> None:
    inner, faulty = faulty_memory(permanent_keys=("bad/*",))
    store = BufferedStore(faulty)
    await store.set("bad/1", buf(b"x"))
    await wait_for_failures(store, 1)
    with pytest.raises(WriteFailedError, match="bad/1"):
        await store.set("next", buf(b"n"))
    await store.flush()
    assert inner_bytes(inner, "next") == b"n"


async def test_reads_never_take_a_failure_from_the_writer() -> None:
    _, faulty = faulty_memory(permanent_keys=(re.compile(r"^bad/"),))
    store = BufferedStore(faulty)
    await store.delete("bad/gone")
    await wait_for_failures(store, 1)
    # readers (xr.open_zarr, zarr's metadata checks) see the durable state and raise nothing
    assert await store.get("anything", PROTO) is None
    assert await store.get_partial_values(PROTO, [("anything", None)]) == [None]
    assert [k async for k in store.list()] == []
    # ... so the failure is still there for the writer
    with pytest.raises(WriteFailedError, match=r"delete of 'bad/gone'"):
        await store.flush()


def test_failure_raised_at_close_then_close_succeeds() -> None:
    _, faulty = faulty_memory(permanent_keys=("bad/*",))
    store = BufferedStore(faulty)
    sync(store._set_many([(f"bad/{i}", buf(b"x")) for i in range(12)] + [("ok", buf(b"o"))]))
    with pytest.raises(WriteFailedError, match=r"12 buffered write\(s\).*and 2 more") as info:
        store.close()
    assert isinstance(info.value.__cause__, BaseExceptionGroup)
    assert len(info.value.__cause__.exceptions) == 12
    store.close()
    assert len(store.failed_keys) == 12


async def test_transient_faults_are_retried_until_all_data_arrives() -> None:
    inner, faulty = faulty_memory(rate=0.3, seed=3, ops=("set",))
    store = BufferedStore(faulty, retries=12, retry_backoff=0.0005, concurrency=8)
    expected = {f"c/{i}": os.urandom(64 + i) for i in range(200)}
    await store._set_many([(k, buf(v)) for k, v in expected.items()])
    await store.flush(strict=True)
    assert faulty.faults_injected > 20
    assert store.stats.retries == faulty.faults_injected
    assert store.stats.failures == 0
    assert {k: v.to_bytes() for k, v in inner._store_dict.items()} == expected


async def test_transient_faults_exhausting_retries_fail() -> None:
    inner, faulty = faulty_memory(rate=1.0, kinds=("reset",), ops=("set",))
    store = BufferedStore(faulty, retries=2, retry_backoff=0)
    await store.set("k", buf(b"v"))
    with pytest.raises(WriteFailedError, match=r"3 attempt\(s\)") as info:
        await store.flush()
    assert isinstance(info.value.__cause__, ConnectionResetError)
    assert store.stats.retries == 2
    assert inner_bytes(inner, "k") is None


async def test_transient_read_faults_are_retried() -> None:
    inner = MemoryStore()
    await inner.set("k", buf(b"v"))
    faulty = FaultyStore(inner, rate=0.5, seed=0, ops=("get", "exists", "list"))
    store = BufferedStore(faulty, retries=20, retry_backoff=0)
    for _ in range(30):
        assert await store.get("k", PROTO) == buf(b"v")
        assert await store.exists("k")
        assert await _collect_aiterator(store.list()) == ("k",)
    assert faulty.faults_injected > 10


def _botocore_error(code: str, status: int) -> Exception:
    from botocore.exceptions import ClientError

    response: Any = {"Error": {"Code": code}, "ResponseMetadata": {"HTTPStatusCode": status}}
    return ClientError(response, "PutObject")


def _aiohttp_errors() -> list[tuple[Exception, bool]]:
    import aiohttp
    from botocore.exceptions import EndpointConnectionError, ReadTimeoutError

    return [
        (aiohttp.ServerDisconnectedError(), True),
        (aiohttp.ClientResponseError(None, (), status=503), True),  # type: ignore[arg-type]
        (aiohttp.ClientResponseError(None, (), status=404), False),  # type: ignore[arg-type]
        (EndpointConnectionError(endpoint_url="http://127.0.0.1:1"), True),
        (ReadTimeoutError(endpoint_url="http://127.0.0.1:1"), True),
        (_botocore_error("SlowDown", 503), True),
        (_botocore_error("InternalError", 500), True),
        (_botocore_error("AccessDenied", 403), False),
    ]


@pytest.mark.parametrize(
    ("error", "transient"),
    [
        (OSError(errno.EIO, "io"), True),
        (OSError("no errno"), True),
        (ConnectionResetError(), True),
        (BrokenPipeError(), True),
        (TimeoutError(), True),
        (PermissionError(errno.EACCES, "denied"), False),
        (FileNotFoundError(errno.ENOENT, "no bucket"), False),
        (OSError(errno.ENOSPC, "disk full"), False),
        (OSError(errno.EROFS, "read-only fs"), False),
        (ValueError("bad"), False),
        (ReadOnlyStoreError("ro"), False),
        (RuntimeError("?"), False),
    ],
)
def test_is_transient_error(error: Exception, transient: bool) -> None:
    assert is_transient_error(error) is transient


def test_is_transient_error_for_network_libraries() -> None:
    for error, transient in _aiohttp_errors():
        assert is_transient_error(error) is transient, error


# ---------------------------------------------------------------------------------------------
# Bounded memory, soak, pickling, atomic local writes
# ---------------------------------------------------------------------------------------------


async def test_backpressure_bounds_the_buffer() -> None:
    inner = MemoryStore()
    store = BufferedStore(LatencyStore(inner, set_latency=0.004), max_buffer_mb=64 / 1024)
    limit, size = store.max_buffer_bytes, 10 * 1024
    for i in range(60):
        await store.set(f"c/{i}", buf(bytes([i]) * size))
        assert store.stats.buffered_bytes <= limit
    await store.flush()
    stats = store.stats
    assert stats.peak_buffered_bytes <= limit
    assert stats.bytes_written == stats.bytes_queued == 60 * size
    assert all(inner_bytes(inner, f"c/{i}") == bytes([i]) * size for i in range(60))


async def test_set_waits_while_the_buffer_is_full() -> None:
    inner = MemoryStore()
    gate = GateStore(inner)
    store = BufferedStore(gate, max_buffer_mb=64 / 1024)
    limit, size = store.max_buffer_bytes, 10 * 1024

    async def produce() -> None:
        for i in range(20):
            await store.set(f"c/{i}", buf(bytes([i]) * size))

    producer = asyncio.ensure_future(produce())
    await eventually(lambda: store.stats.buffered_bytes > limit - size, "the buffer is full")
    await asyncio.sleep(0.02)
    assert not producer.done()  # blocked: nothing can be written while the gate is closed
    assert store.stats.buffered_bytes <= limit
    gate.gate.set()
    await producer
    await store.flush()
    assert store.stats.peak_buffered_bytes <= limit
    assert all(inner_bytes(inner, f"c/{i}") == bytes([i]) * size for i in range(20))


async def test_value_larger_than_the_buffer_is_admitted_alone() -> None:
    inner = MemoryStore()
    store = BufferedStore(LatencyStore(inner, set_latency=0.005), max_buffer_mb=16 / 1024)
    big = 100 * 1024
    for i in range(3):
        await store.set(f"big/{i}", buf(b"%d" % i * big))
        assert store.stats.buffered_bytes <= big
    await store.flush()
    assert store.stats.peak_buffered_bytes <= store.max_buffer_bytes + big
    assert len(inner._store_dict) == 3


async def test_soak_1000_steps_without_growth() -> None:
    inner = MemoryStore()
    store = BufferedStore(
        LatencyStore(inner, set_latency=0.0005), max_buffer_mb=32 / 1024, concurrency=4
    )
    baseline_threads = threading.active_count()
    baseline_tasks = await io_loop_tasks(store)
    peak_threads = baseline_threads
    sets = 0
    for step in range(1000):
        await store.set(f"ring/{step % 50}", buf(b"%06d" % step * 100))
        await store.set(f"step/{step}", buf(b"s%d" % step))
        sets += 2
        if step % 100 == 99:
            await store.flush(strict=True)
            stats = store.stats
            assert stats.buffered_bytes == 0
            assert stats.pending_keys == 0
            peak_threads = max(peak_threads, threading.active_count())
    stats = store.stats
    assert stats.failures == stats.retries == 0
    assert stats.puts + stats.coalesced == sets
    assert stats.peak_buffered_bytes <= store.max_buffer_bytes + 600
    assert peak_threads == baseline_threads
    assert await io_loop_tasks(store) <= baseline_tasks
    core = store._core
    assert not core._queued
    assert not core._inflight
    assert not core._space_waiters
    assert not core._progress_waiters
    assert len(inner._store_dict) == 1050
    assert inner_bytes(inner, "ring/49") == b"%06d" % 999 * 100


def test_pickle_round_trip_flushes_and_keeps_configuration(tmp_path: Path) -> None:
    store = BufferedStore(str(tmp_path), max_buffer_mb=2, concurrency=3, retries=1)
    sync(store.set("a/zarr.json", buf(b"{}")))
    clone = pickle.loads(pickle.dumps(store))
    assert (tmp_path / "a" / "zarr.json").read_bytes() == b"{}"  # flushed before pickling
    assert clone == store
    assert clone is not store
    assert (clone.max_buffer_bytes, clone.concurrency) == (2 * 2**20, 3)
    assert clone.stats == BufferedStoreStats(0, 0, 0, 0, 0, 0, 0, 0, 0, 0)
    assert clone.write_through
    assert not store.write_through
    assert "write_through=True" in repr(clone)
    sync(clone.set("b", buf(b"from the copy")))
    assert (tmp_path / "b").read_bytes() == b"from the copy"  # durable when set returns
    clone.close()
    store.close()


async def test_write_through_raises_its_own_failure() -> None:
    inner, faulty = faulty_memory(permanent_keys=("bad/*",))
    store = BufferedStore(GateStore(faulty), write_through=True)
    store._store.gate.set()
    await store.set("ok", buf(b"1"))
    assert inner_bytes(inner, "ok") == b"1"
    with pytest.raises(WriteFailedError, match="bad/1"):
        await store.set("bad/1", buf(b"2"))
    await store.delete("ok")
    assert inner_bytes(inner, "ok") is None


def test_atomic_local_writes(tmp_path: Path) -> None:
    root = tmp_path / "atomic"
    store = BufferedStore(str(root), concurrency=8, max_buffer_mb=4)
    rng = np.random.default_rng(0)
    expected = {f"v/c/{i}": rng.bytes(100_000 + i) for i in range(40)}
    sync(store._set_many([(k, buf(v)) for k, v in expected.items()]))
    # LocalStore's temporary files (as while a write is running) are never listed as keys
    (root / "v" / "c").mkdir(parents=True, exist_ok=True)
    partial = root / "v" / "c" / f"0.{uuid.uuid4().hex}.partial"
    partial.write_bytes(b"half a chunk")
    listed = sync(_collect_aiterator(store.list()))
    assert sorted(listed) == sorted(expected)
    partial.unlink()
    store.close()
    files = {p.relative_to(root).as_posix(): p for p in root.rglob("*") if p.is_file()}
    assert sorted(files) == sorted(expected)
    assert all(files[k].read_bytes() == v for k, v in expected.items())


# ---------------------------------------------------------------------------------------------
# xarray
# ---------------------------------------------------------------------------------------------


def sample_dataset() -> xr.Dataset:
    rng = np.random.default_rng(42)
    temp = rng.standard_normal((12, 10, 8)).astype("float32")
    temp[0, 0, :3] = np.nan
    return xr.Dataset(
        {
            "temp": (("time", "y", "x"), temp, {"units": "K"}),
            "count": (("time",), np.arange(12, dtype="int16")),
        },
        coords={
            "time": np.arange("2020-01-01", "2020-01-13", dtype="datetime64[D]").astype(
                "datetime64[ns]"
            ),
            "y": np.linspace(0, 1, 10),
        },
    )


def assert_bitwise_equal(actual: xr.Dataset, expected: xr.Dataset) -> None:
    xr.testing.assert_identical(actual, expected)
    for name, var in expected.variables.items():
        assert actual[name].values.tobytes() == var.values.tobytes(), name


@pytest.mark.parametrize("use_dask", [False, True])
def test_xarray_round_trip(use_dask: bool) -> None:
    ds = sample_dataset()
    source = ds.chunk({"time": 3}) if use_dask else ds
    inner = MemoryStore()
    store = BufferedStore(LatencyStore(inner, set_latency=0.002), max_buffer_mb=0.25)
    source.to_zarr(store, zarr_format=3, encoding={"temp": {"chunks": (3, 5, 8)}})
    # read-your-writes through xarray, before anything is known to be durable
    assert_bitwise_equal(xr.open_zarr(store).load(), ds)
    store.close()
    assert store.stats.failures == 0
    assert_bitwise_equal(xr.open_zarr(inner.with_read_only(True)).load(), ds)


# ---------------------------------------------------------------------------------------------
# S3 (moto_server on 127.0.0.1)
# ---------------------------------------------------------------------------------------------


def write_and_close(ds: xr.Dataset, store: BufferedStore, **kwargs: Any) -> None:
    ds.to_zarr(store, zarr_format=3, **kwargs)
    store.close()


@pytest.mark.s3
def test_s3_round_trip(s3_url: str, s3_storage_options: dict[str, Any]) -> None:
    ds = sample_dataset()
    store = BufferedStore(s3_url, storage_options=s3_storage_options, max_buffer_mb=0.5)
    ds.to_zarr(store, zarr_format=3, encoding={"temp": {"chunks": (2, 5, 8)}})
    store.close()
    plain = FsspecStore.from_url(s3_url, storage_options=s3_storage_options, read_only=True)
    assert_bitwise_equal(xr.open_zarr(plain).load(), ds)


@pytest.mark.s3
def test_s3_transient_faults_all_data_arrives(
    s3_url: str, s3_storage_options: dict[str, Any]
) -> None:
    ds = sample_dataset()
    s3 = FsspecStore.from_url(s3_url, storage_options=s3_storage_options)
    faulty = FaultyStore(s3, rate=0.1, seed=7, ops=("set", "delete"))
    store = BufferedStore(faulty, retries=10, retry_backoff=0.001)
    ds.to_zarr(store, zarr_format=3, encoding={"temp": {"chunks": (1, 5, 8)}})
    store.close()
    assert faulty.faults_injected > 0
    assert store.stats.retries == faulty.faults_injected
    plain = FsspecStore.from_url(s3_url, storage_options=s3_storage_options, read_only=True)
    assert_bitwise_equal(xr.open_zarr(plain).load(), ds)


@pytest.mark.s3
def test_s3_permanent_failure_surfaces(s3_url: str, s3_storage_options: dict[str, Any]) -> None:
    ds = sample_dataset()
    s3 = FsspecStore.from_url(s3_url, storage_options=s3_storage_options)
    store = BufferedStore(FaultyStore(s3, rate=0, permanent_keys=("count/c/1",)))
    with pytest.raises(WriteFailedError, match=re.escape("'count/c/1'")):
        write_and_close(ds, store, encoding={"count": {"chunks": (4,)}})
    store.close()  # reported once; nothing else failed
    assert store.failed_keys == ("count/c/1",)
    plain = FsspecStore.from_url(s3_url, storage_options=s3_storage_options, read_only=True)
    assert not sync(plain.exists("count/c/1"))
    assert sync(plain.exists("count/c/0"))


# ---------------------------------------------------------------------------------------------
# FaultyStore
# ---------------------------------------------------------------------------------------------


def _fault_pattern(store: FaultyStore, n: int) -> list[str]:
    outcomes = []
    for i in range(n):
        try:
            sync(store.set(f"k{i}", buf(b"v")))
        except Exception as exc:  # noqa: BLE001
            outcomes.append(type(exc).__name__)
        else:
            outcomes.append("ok")
    return outcomes


def test_faulty_store_is_seeded_and_counts() -> None:
    a = FaultyStore(MemoryStore(), rate=0.3, seed=11, ops=("set",))
    b = FaultyStore(MemoryStore(), rate=0.3, seed=11, ops=("set",))
    pattern = _fault_pattern(a, 100)
    assert pattern == _fault_pattern(b, 100)
    assert 10 < a.faults_injected == 100 - pattern.count("ok")
    assert a.calls == 100
    assert a.fault_counts["set"] == a.faults_injected
    assert set(pattern) == {"ok", "OSError", "ConnectionResetError", "TimeoutError"}


def test_faulty_store_timeout_happens_after_the_write() -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, rate=1.0, kinds=("timeout",), ops=("set",))
    with pytest.raises(TimeoutError, match="the call itself ran"):
        sync(store.set("k", buf(b"landed")))
    assert inner_bytes(inner, "k") == b"landed"


def test_faulty_store_permanent_keys_and_limits() -> None:
    inner = MemoryStore()
    store = FaultyStore(inner, rate=1.0, kinds=("error",), permanent_keys=("p/*",), max_faults=2)
    with pytest.raises(PermissionError, match="injected permanent failure of set 'p/1'"):
        sync(store.set("p/1", buf(b"x")))
    assert _fault_pattern(store, 4) == ["OSError", "OSError", "ok", "ok"]
    assert store.permanent_faults_injected == 1
    assert inner_bytes(inner, "k3") == b"v"
    assert sync(store.exists("k3"))  # "exists" is not in ops


def test_faulty_store_validates_and_pickles() -> None:
    with pytest.raises(ValueError, match="rate must be"):
        FaultyStore(MemoryStore(), rate=1.5)
    with pytest.raises(ValueError, match="ops must be"):
        FaultyStore(MemoryStore(), ops=("put",))  # type: ignore[arg-type]
    store = FaultyStore(MemoryStore(), rate=0.2, seed=3, permanent_keys=("x",))
    clone = pickle.loads(pickle.dumps(store))
    assert clone == store
    reader = store.with_read_only(True)
    assert isinstance(reader, FaultyStore)
    assert reader.read_only
    assert (reader.rate, reader.permanent_keys) == (0.2, ("x",))
