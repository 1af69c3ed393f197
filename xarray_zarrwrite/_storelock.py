"""Advisory locks kept as objects in the store itself, for writers in different processes.

A lock is an object created with the store's ``set_if_not_exists`` (an exclusive create:
``O_EXCL`` on local disks, atomic in memory) holding a random token, then read back: the holder
is whoever's token is there. It is deleted on release. A lock older than ``stale_after``
seconds is taken to be left by a crashed process and broken.

Fallback: stores whose ``set_if_not_exists`` is not atomic (object stores through fsspec
check, then put) make the lock best effort: the read-back narrows the race to the moment two
processes create the same lock object, but does not close it. There, run extends of one
archive from one process at a time (appends of different write units never need the lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket
import time
import uuid
from collections.abc import AsyncIterator, Sequence
from typing import TYPE_CHECKING

from ._compat import default_buffer_prototype
from .errors import WriteFailedError

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["acquire_locks", "lock_key", "release_locks", "store_locks", "unit_of_lock"]


def lock_key(array_path: str, name: str) -> str:
    """The key of lock ``name`` of the array at ``array_path``.

    Lock objects live inside an array's folder, named so that no chunk key parser matches
    them: zarr never lists an array's folder for members, so readers never see them.
    """
    return f"{array_path}/{_LOCK_NAME}{name.replace('/', _SLASH)}"


def unit_of_lock(key: str) -> tuple[str, str]:
    """``(array path, name)`` of a key made by :func:`lock_key`."""
    array, _, name = key.rpartition(f"/{_LOCK_NAME}")
    return array, name.replace(_SLASH, "/")


_LOCK_NAME = ".xarray_zarrwrite-lock-"
_SLASH = "~"


async def _try_acquire(store: Store, key: str, stale_after: float) -> str | None:
    """Our token if we now hold ``key``, else None (after breaking the lock if it is stale)."""
    token = uuid.uuid4().hex
    body = {"token": token, "pid": os.getpid(), "host": socket.gethostname(), "time": time.time()}
    proto = default_buffer_prototype()
    await store.set_if_not_exists(key, proto.buffer.from_bytes(json.dumps(body).encode()))
    buf = await store.get(key, prototype=proto)
    if buf is None:
        return None  # released between our create and our read: try again
    try:
        held = json.loads(buf.to_bytes())
    except ValueError:
        held = {}
    if held.get("token") == token:
        return token
    if time.time() - float(held.get("time", 0.0)) > stale_after:
        await store.delete(key)  # left by a crashed process
    return None


async def acquire_locks(
    store: Store,
    keys: Sequence[str],
    *,
    timeout: float = 120.0,
    stale_after: float = 600.0,
) -> list[str]:
    """Take the locks ``keys`` in sorted order (two holders never deadlock); return them.

    Raises
    ------
    WriteFailedError
        A lock could not be taken within ``timeout`` seconds (those taken are released).
    """
    held: list[str] = []
    try:
        for key in sorted(set(keys)):
            deadline = time.monotonic() + timeout
            delay = 0.005
            while await _try_acquire(store, key, stale_after) is None:
                if time.monotonic() > deadline:
                    raise WriteFailedError(
                        f"could not take the lock {key!r} in {store} within {timeout:g} s: "
                        "another writer holds it. If no writer is running, a crashed one left "
                        f"it: delete the object {key!r} (it is broken after {stale_after:g} s)"
                    )
                await asyncio.sleep(delay)
                delay = min(delay * 2, 0.2)
            held.append(key)
    except BaseException:
        await release_locks(store, held)
        raise
    return held


async def release_locks(store: Store, held: Sequence[str]) -> None:
    """Release locks taken by :func:`acquire_locks`."""
    for key in reversed(held):
        await store.delete(key)


@contextlib.asynccontextmanager
async def store_locks(store: Store, keys: Sequence[str]) -> AsyncIterator[None]:
    """Hold the locks ``keys`` for the duration of an ``async with`` block."""
    held = await acquire_locks(store, keys)
    try:
        yield
    finally:
        await release_locks(store, held)
