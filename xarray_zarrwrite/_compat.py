"""Every zarr-python and xarray internal this package touches, in one place.

Supported: zarr-python 3.1 through the newest 3.x (3.4 when written) and xarray 2025.6 on.
Nothing else in the package imports from ``zarr.core``, ``zarr.registry``, ``xarray.backends``
or ``xarray.conventions``; where releases differ, the branch is guarded here by
:data:`ZARR_VERSION`, never in the modules that use the item.

What each item stands in for:

=============================  ===================================================================
``sync``                       zarr's sync facade (``zarr.core.sync.sync``): no public "run this
                               coroutine on zarr's IO loop"; we use zarr's loop so that its async
                               stores (fsspec/aiobotocore sessions) stay on the loop they belong
                               to. Same in 3.1-3.4.
``io_loop``                    ``zarr.core.sync._get_loop``: zarr's IO loop, started on demand.
``running_io_loop``            ``zarr.core.sync.loop[0]``: that loop if started, else ``None``.
``default_buffer_prototype``   public as ``zarr.buffer.default_buffer_prototype`` (3.1 on).
``Buffer``                     the abstract buffer ``zarr.abc.store.Store.set`` takes
                               (``zarr.core.buffer.Buffer``; not re-exported publicly).
``WrapperStore``               zarr's ``WrapperStore``, made uniform across 3.1-3.4 (see there).
``parse_named_configuration``  the codec-metadata parser every zarr codec uses (no public twin).
``register_codec``             ``zarr.registry.register_codec`` (documented in zarr's guide to
                               extending, in a module not re-exported).
``ArraySpec`` ... ``ZDType``   typing only: the codec ABC's signatures (``zarr.abc.codec``).
``ArrayConfigParams``          typing only: the ``config=`` dict of ``AsyncArray`` and
                               ``Array.with_config``.
``ArrayMetadata``              typing only: ``Array.metadata`` (v2 or v3 array metadata).
``encode_zarr_variable``       the per-variable encoding half of ``Dataset.to_zarr``: xarray has
``encode_zarr_attr_value``     no public "encode as to_zarr would"; templates and region writes
``FillValueCoder``             must encode exactly like it so plain ``xr.open_zarr`` reads them.
``encode_dataset_coordinates`` the CF ``coordinates`` attribute half of ``Dataset.to_zarr``.
``memory_store_at``            a MemoryStore rooted at a group of another (``group=``): uses
                               ``MemoryStore._store_dict`` (private; same in 3.1-3.4).
=============================  ===================================================================
"""

from __future__ import annotations

import asyncio
import inspect
import os
import weakref
from collections.abc import Coroutine, Iterator, MutableMapping
from typing import Any, Final, Literal, Self, TypeVar, cast

import xarray as xr
import zarr
from packaging.version import Version
from xarray.backends.zarr import FillValueCoder, encode_zarr_attr_value
from xarray.backends.zarr import encode_zarr_variable as _encode_zarr_variable
from xarray.coding.times import (
    decode_cf_datetime,  # CFDatetimeCoder's transform (convert's fast scan; 2025.6-2026.9)
)
from xarray.conventions import (
    decode_cf_variables,  # open_dataset's CF decoding (convert's h5py scan; 2025.6-2026.9)
    encode_dataset_coordinates,
)
from zarr.abc.store import ByteRequest, Store
from zarr.buffer import default_buffer_prototype
from zarr.core.array_spec import ArrayConfigParams, ArraySpec
from zarr.core.buffer import Buffer, BufferPrototype, NDBuffer
from zarr.core.chunk_grids import ChunkGrid
from zarr.core.common import JSON, parse_named_configuration
from zarr.core.dtype.wrapper import TBaseDType, TBaseScalar, ZDType
from zarr.core.metadata import ArrayMetadata
from zarr.registry import register_codec
from zarr.storage import MemoryStore, StorePath
from zarr.storage import WrapperStore as _ZarrWrapperStore

__all__ = [
    "JSON",
    "ZARR_FULL_SHARD_WRITES",
    "ZARR_SHARDS_DROP_EMPTY_INNER",
    "ZARR_VERSION",
    "ArrayConfigParams",
    "ArrayMetadata",
    "ArraySpec",
    "Buffer",
    "BufferPrototype",
    "ChunkGrid",
    "FillValueCoder",
    "NDBuffer",
    "TBaseDType",
    "TBaseScalar",
    "ZDType",
    "WrapperStore",
    "async_array",
    "with_config",
    "writes_empty_chunks",
    "chunk_path",
    "chunk_spec",
    "default_buffer_prototype",
    "encode_chunks",
    "regular_chunk_shape",
    "memory_store_at",
    "decode_cf_datetime",
    "decode_cf_variables",
    "encode_dataset_coordinates",
    "encode_zarr_attr_value",
    "encode_zarr_variable",
    "io_loop",
    "parse_named_configuration",
    "register_codec",
    "running_io_loop",
    "sync",
]

#: The installed zarr-python release, for the version-guarded branches of this module.
ZARR_VERSION: Final = Version(zarr.__version__)
#: zarr >= 3.2 writes whole shards without reading them first (the "full-shard fast path").
ZARR_FULL_SHARD_WRITES: Final = Version("3.2") <= ZARR_VERSION
#: The sharding codec can encode a whole shard with ``write_empty_chunks=False`` (leaving its
#: all-fill inner chunks out): zarr 3.1.3's shard builder raises NotImplementedError on the
#: first one (``_ShardBuilder.__delitem__``); 3.4 does it. Releases between take the safe
#: path (inner chunks kept; values and stored objects are the same).
ZARR_SHARDS_DROP_EMPTY_INNER: Final = Version("3.4") <= ZARR_VERSION

T = TypeVar("T")
T_Store = TypeVar("T_Store", bound=Store)


def sync(coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
    """Run ``coro`` on zarr's IO loop from a synchronous caller and return its result."""
    from zarr.core.sync import sync as zarr_sync

    return zarr_sync(coro, timeout=timeout)


def io_loop() -> asyncio.AbstractEventLoop:
    """zarr's IO event loop, started on first use."""
    from zarr.core import sync as zsync

    return zsync._get_loop()


def running_io_loop() -> asyncio.AbstractEventLoop | None:
    """zarr's IO loop if it has been started in this process, else ``None`` (starts nothing)."""
    from zarr.core import sync as zsync

    loop: asyncio.AbstractEventLoop | None = zsync.loop[0]
    return loop


def async_array(arr: zarr.Array[Any]) -> zarr.AsyncArray[Any]:
    """The :class:`zarr.AsyncArray` behind ``arr``.

    Public as the ``Array.async_array`` property from zarr 3.1.1 on; 3.1.0 only has the field.
    """
    inner: zarr.AsyncArray[Any] = getattr(arr, "async_array", None) or arr._async_array
    return inner


def with_config(arr: zarr.Array[Any], config: ArrayConfigParams) -> zarr.Array[Any]:
    """``arr`` with runtime options replaced (e.g. ``write_empty_chunks``), nothing re-read.

    Public as ``Array.with_config`` from zarr 3.1.1 on; 3.1.0 builds the same array around the
    same metadata with ``AsyncArray(..., config=...)``.
    """
    if hasattr(arr, "with_config"):
        out: zarr.Array[Any] = arr.with_config(config)
        return out
    inner = async_array(arr)
    return zarr.Array(
        zarr.AsyncArray(metadata=inner.metadata, store_path=inner.store_path, config=config)
    )


def _array_config(arr: zarr.AsyncArray[Any]) -> Any:
    """The array's runtime config: ``AsyncArray.config`` from 3.1.1 on, ``_config`` in 3.1.0."""
    return getattr(arr, "config", None) or arr._config


def writes_empty_chunks(arr: zarr.AsyncArray[Any]) -> bool:
    """The array's runtime ``write_empty_chunks`` (its config: ``AsyncArray.config`` in newer
    zarr, only the private ``_config`` in 3.1.x)."""
    return bool(_array_config(arr).write_empty_chunks)


def chunk_spec(arr: zarr.AsyncArray[Any], coords: tuple[int, ...]) -> ArraySpec:
    """The codec-pipeline spec of the stored object at grid position ``coords``.

    Stands in for the spec zarr builds inside ``AsyncArray.setitem`` before encoding a whole
    chunk (or shard), which we call directly to encode many chunks in one pipeline call.
    zarr 3.1-3.3: ``metadata.get_chunk_spec``; zarr 3.4 moved it onto the array's ``ChunkGrid``
    (rectilinear grids), where the edge object's codec shape is still the declared chunk shape.
    """
    proto = default_buffer_prototype()
    getter = getattr(arr.metadata, "get_chunk_spec", None)
    if getter is not None and Version("3.4") > ZARR_VERSION:
        spec: ArraySpec = getter(coords, _array_config(arr), prototype=proto)
        return spec
    grid_spec = arr._chunk_grid[coords]
    if grid_spec is None:
        raise IndexError(f"chunk coordinates {coords} are outside the array's grid")
    return ArraySpec(
        shape=grid_spec.codec_shape,
        dtype=arr.metadata.dtype,
        fill_value=arr.metadata.fill_value,
        config=_array_config(arr),
        prototype=proto,
    )


async def encode_chunks(
    arr: zarr.AsyncArray[Any], items: list[tuple[NDBuffer, ArraySpec]]
) -> list[Buffer | None]:
    """Encode whole chunks with the array's own codec pipeline (what ``setitem`` does inside).

    At most one call per core runs at a time, in call order (more concurrent compressions only
    contend for the same cores, and finish every step late instead of the oldest first).
    """
    async with _encode_slots():
        return list(await arr.codec_pipeline.encode(items))


def _encode_slots() -> asyncio.Semaphore:
    # one encode per core on each event loop (a Semaphore belongs to one loop); reset at fork
    from ._runtime import runtime

    loop = asyncio.get_running_loop()
    with runtime.lock:
        slots = runtime.slots.setdefault("compat.encode_slots", weakref.WeakKeyDictionary())
        if loop not in slots:
            cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None
            slots[loop] = asyncio.Semaphore(cores or os.cpu_count() or 1)
        sem: asyncio.Semaphore = slots[loop]
        return sem


def chunk_path(arr: zarr.AsyncArray[Any], coords: tuple[int, ...]) -> StorePath:
    """Where the object at grid position ``coords`` lives (the metadata's key encoding)."""
    key: str = arr.metadata.encode_chunk_key(coords)
    return arr.store_path / key


def regular_chunk_shape(arr: zarr.AsyncArray[Any] | zarr.Array[Any]) -> tuple[int, ...]:
    """Shape of one stored object (the shard when sharded) on a regular chunk grid.

    Public equivalent: ``arr.shards or arr.chunks`` (zarr 3.1 on); kept here so that every
    grid question goes through one place.
    """
    shards = arr.shards
    return tuple(int(c) for c in (shards if shards is not None else arr.chunks))


class WrapperStore(_ZarrWrapperStore[T_Store]):
    """zarr's ``WrapperStore`` for our wrappers, whose behaviour lives in the async methods
    (write-behind buffering, fault injection), made to behave the same on zarr 3.1-3.4.

    * zarr >= 3.4 reads and writes through a store's ``get_sync``/``set_sync``/``delete_sync``
      when it offers them, and zarr's ``WrapperStore`` forwards those straight to the wrapped
      store, bypassing the wrapper (a buffered key would read as missing, an injected fault
      would never fire). We opt out of that fast path through zarr's ``_supports_sync_io``
      convention (private, 3.4) and make the sync methods run the async ones, so a direct
      caller still gets the wrapper's behaviour.
    * zarr < 3.1.6 has no generic ``WrapperStore.with_read_only``; ours is the one 3.1.6 added.
    """

    _supports_sync_io = False

    def with_read_only(self, read_only: bool = False) -> Self:
        return self._with_store(cast("T_Store", self._store.with_read_only(read_only)))

    def get_sync(
        self,
        key: str,
        *,
        prototype: BufferPrototype | None = None,
        byte_range: ByteRequest | None = None,
    ) -> Buffer | None:
        proto = prototype if prototype is not None else default_buffer_prototype()
        return sync(self.get(key, proto, byte_range))

    def set_sync(self, key: str, value: Buffer) -> None:
        sync(self.set(key, value))

    def delete_sync(self, key: str) -> None:
        sync(self.delete(key))


# xarray < 2025.7 (our floor is 2025.6) has no ``zarr_format`` keyword: its to_zarr encodes
# the same way for both formats, so neither do we.
_ENCODE_TAKES_FORMAT: Final = "zarr_format" in inspect.signature(_encode_zarr_variable).parameters


def encode_zarr_variable(var: xr.Variable, name: str, zarr_format: Literal[2, 3]) -> xr.Variable:
    """CF-encode ``var`` exactly as this xarray's ``Dataset.to_zarr`` would."""
    if _ENCODE_TAKES_FORMAT:
        out: xr.Variable = _encode_zarr_variable(
            var, needs_copy=False, name=name, zarr_format=zarr_format
        )
    else:
        out = _encode_zarr_variable(var, needs_copy=False, name=name)
    return out


class _Prefixed(MutableMapping[str, Any]):
    """The keys of ``data`` under ``prefix/``, without the prefix (a live view)."""

    def __init__(self, data: MutableMapping[str, Any], prefix: str) -> None:
        self._data, self._prefix = data, prefix + "/"

    def __getitem__(self, key: str) -> Any:
        return self._data[self._prefix + key]

    def __setitem__(self, key: str, value: Any) -> None:
        self._data[self._prefix + key] = value

    def __delitem__(self, key: str) -> None:
        del self._data[self._prefix + key]

    def __iter__(self) -> Iterator[str]:
        n = len(self._prefix)
        return iter([k[n:] for k in list(self._data) if k.startswith(self._prefix)])

    def __len__(self) -> int:
        return sum(1 for k in list(self._data) if k.startswith(self._prefix))


def memory_store_at(store: MemoryStore, path: str) -> MemoryStore:
    """A MemoryStore whose keys are those of ``store`` under ``path/`` (shared, live)."""
    data = store._store_dict
    return MemoryStore(_Prefixed(data, path), read_only=store.read_only)
