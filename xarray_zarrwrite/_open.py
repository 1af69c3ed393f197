"""Reading a template back: what region writes need to know, cached per process.

Every region write needs the template's arrays (shape, chunks, encoding) and its coordinate
labels. Reading all coordinates on every call is what makes xarray's ``region="auto"`` slow;
here they are read once per process and reused while the store's freshness token (the root
metadata document plus a digest of the stored labels) is unchanged: one round of small
concurrent reads per call checks that. Planning then reads nothing from the store.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import warnings
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr import AsyncArray
from zarr.abc.store import RangeByteRequest, SuffixByteRequest
from zarr.storage import StorePath

from ._compat import (
    ArrayConfigParams,
    ArrayMetadata,
    async_array,
    default_buffer_prototype,
    sync,
    with_config,
)
from ._empty import TEMPLATE_DEFAULT_ATTR
from ._encoding import ZarrFormat, cf_encoding
from ._grid import ChunkGrid
from ._growth import EXACT, Growth, Layout, growth, layout_of
from ._runtime import runtime
from ._store import store_key
from .errors import TemplateNotFoundError

if TYPE_CHECKING:
    from zarr.abc.store import Store

__all__ = ["ArrayInfo", "TemplateInfo", "load_template"]

_ROOT_KEYS = ("zarr.json", ".zmetadata", ".zgroup")


@dataclass(frozen=True)
class ArrayInfo:
    """One array of a template, as a region write sees it."""

    name: str
    dims: tuple[str, ...]
    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    dtype: np.dtype[Any]  # decoded (what users hand us)
    stored_dtype: np.dtype[Any]  # encoded (what the zarr array holds)
    encoding: Mapping[str, Any]  # CF encoding pinned by the template
    attrs: Mapping[str, Any]
    is_coord: bool


#: Non-index coordinates up to this many values are read with the template, so that planning
#: can skip rewriting one the template already holds; larger ones are always written.
STORED_COORD_LIMIT = 1_000_000


@dataclass(frozen=True)
class TemplateInfo:
    """Everything a region write needs from the template, read once."""

    key: str
    zarr_format: ZarrFormat
    arrays: Mapping[str, ArrayInfo]
    indexes: Mapping[str, pd.Index]
    sizes: Mapping[str, int]
    zarr_arrays: Mapping[str, zarr.Array[Any]] = field(repr=False)
    #: decoded values of the non-index coordinates (up to :data:`STORED_COORD_LIMIT` values)
    #: as the store held them when the template was read
    stored_coords: Mapping[str, xr.Variable] = field(default_factory=dict, repr=False)
    #: coordinates of ``stored_coords`` a plan of this process has written since (shared by
    #: every copy bound from one cache entry): their snapshot is no longer the store's
    rewritten: set[str] = field(default_factory=set, repr=False, compare=False)
    #: the template's default ``write_empty_chunks`` (``to_template(write_empty_chunks=)``),
    #: the runtime config its arrays are bound with
    write_empty_chunks: bool = True

    def holds_coordinate(self, name: str, var: xr.Variable) -> bool:
        """Whether the template's stored coordinate ``name`` equals ``var`` (decoded values,
        NaN/NaT equal), from the snapshot read with the template: no store read.

        A ``False`` answer means the caller writes ``var``: the snapshot of ``name`` is then
        stale, so this process never again skips it on the snapshot's word (a later write of
        the snapshot's values must still overwrite the values written in between).
        """
        stored = self.stored_coords.get(name)
        same = False
        if stored is not None and stored.shape == var.shape:
            same = bool(stored.equals(var))  # type: ignore[no-untyped-call]
        with runtime.lock:
            if same and name not in self.rewritten:
                return True
            self.rewritten.add(name)
        return False


#: The cache (``runtime.templates``) maps a store key to the freshness token, the
#: template with no arrays and the metadata of its arrays (it holds no store; :func:`_bind`
#: binds the arrays to the caller's).
_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


async def _root_document_async(store: Store) -> bytes:
    """The freshness token: the root document (with consolidated metadata, every array's)."""
    proto = default_buffer_prototype()
    for key in _ROOT_KEYS:
        buf = await store.get(key, prototype=proto)
        if buf is not None:
            token = key.encode() + b"\0" + buf.to_bytes()
            if key == ".zgroup":  # v2 unconsolidated: root attributes live in .zattrs
                attrs = await store.get(".zattrs", prototype=proto)
                token += b"\0" + (attrs.to_bytes() if attrs is not None else b"")
            return token
    raise TemplateNotFoundError(
        f"no Zarr template at {store}; create one first with ds.fastzarr.to_template(store)"
    )


#: The freshness token is the root document, then this marker, the keys of the stored objects
#: holding the template's labels (newline-separated) and a digest of their bytes: a template
#: replaced by one with identical metadata but other labels (pinned units, same length, other
#: start) changes the token too. The digest takes the first ``_LABEL_HEAD`` and the last
#: ``_LABEL_TAIL`` bytes of the first and last stored object of every index coordinate: every
#: byte of a small coordinate, and the start, step and end of a large one, in a few small
#: reads made concurrently with the root document's (one round trip per check).
_LABELS = b"\0labels\0"
_LABEL_HEAD = 1 << 16
_LABEL_TAIL = 1 << 12


async def _token_async(store: Store, label_keys: Sequence[str]) -> bytes:
    """The freshness token of ``store``, with the labels held under ``label_keys``."""
    reads = [_head_and_tail(store, k) for k in label_keys]
    root, parts = await asyncio.gather(_root_document_async(store), asyncio.gather(*reads))
    digest = hashlib.sha256()
    for part in parts:
        digest.update(
            b"-" if part is None else b"".join(len(p).to_bytes(8, "little") + p for p in part)
        )
    return root + _LABELS + "\n".join(label_keys).encode() + b"\0" + digest.digest()


async def _head_and_tail(store: Store, key: str) -> tuple[bytes, bytes] | None:
    """The first ``_LABEL_HEAD`` and last ``_LABEL_TAIL`` bytes of object ``key`` (``None``
    if there is none): two range reads, or one whole read where the store refuses a range
    past the object's end (icechunk). Both give the same bytes."""
    proto = default_buffer_prototype()
    ranges = (RangeByteRequest(0, _LABEL_HEAD), SuffixByteRequest(_LABEL_TAIL))
    got = await asyncio.gather(
        *(store.get(key, prototype=proto, byte_range=r) for r in ranges), return_exceptions=True
    )
    if not any(isinstance(g, BaseException) for g in got):
        head, tail = got
        if head is None or tail is None:
            return None
        return head.to_bytes(), tail.to_bytes()  # type: ignore[union-attr]
    whole = await store.get(key, prototype=proto)
    if whole is None:
        return None
    data = whole.to_bytes()
    return data[:_LABEL_HEAD], data[-_LABEL_TAIL:]


def _label_keys_of(token: bytes) -> tuple[str, ...]:
    """The label keys recorded in a freshness token."""
    _, sep, tail = token.rpartition(_LABELS)
    keys = tail[: -hashlib.sha256().digest_size - 1].decode() if sep else ""
    return tuple(keys.split("\n")) if keys else ()


def _label_keys(info: TemplateInfo) -> tuple[str, ...]:
    """Keys of the first and last stored object of every index coordinate of ``info``."""
    keys: list[str] = []
    for name in sorted(info.indexes):
        arr = info.zarr_arrays.get(name)
        if arr is None:
            continue
        grid = ChunkGrid.from_array(arr)
        ends = {(0,) * grid.ndim, tuple(n - 1 for n in grid.grid_shape)}
        keys += [grid.path(async_array(arr), c).path for c in sorted(ends)]
    return tuple(keys)


def load_template(store: Store) -> TemplateInfo:
    """Return the :class:`TemplateInfo` of the template in ``store`` (cached per process).

    Raises
    ------
    TemplateNotFoundError
        The store holds no Zarr group.
    """
    return load_template_with_root(store)[0]


def load_template_with_root(store: Store) -> tuple[TemplateInfo, bytes]:
    """:func:`load_template`, plus the freshness token the template was read under.

    The token is the root document plus a digest of the stored labels (see ``_LABELS``): a
    writer that planned with this template checks, before its first put, that the store's
    token is still this one.
    """
    key = store_key(store)
    with runtime.lock:
        hit = runtime.templates.get(key)
    keys = _label_keys_of(hit[0]) if hit is not None else ()
    # read before the template: a replacement while it is read shows as a stale token later
    token = sync(_token_async(store, keys))
    if hit is not None and hit[0] == token:
        return _bind(hit[1], hit[2], store), token
    info = _read_template(store, key)
    if _label_keys(info) != keys:  # first read, or other metadata: the labels as of now
        # (the root document stays the one read before the template, as above)
        labels = sync(_token_async(store, _label_keys(info))).rpartition(_LABELS)
        token = token.rpartition(_LABELS)[0] + labels[1] + labels[2]
    unbound, metas = _unbind(info)
    with runtime.lock:
        runtime.templates[key] = (token, unbound, metas)
    _remember_layout(token, layout_of(unbound, metas))
    return info, token


#: Layouts (see :mod:`._growth`) of the templates this process read, by freshness token: what
#: a gate compares a changed template with. The last few are kept.
_LAYOUTS_KEPT = 32


def _remember_layout(token: bytes, layout: Layout) -> None:
    layouts: dict[bytes, Layout] = runtime.slot("layouts", dict)
    with runtime.lock:
        layouts.pop(token, None)
        layouts[token] = layout
        while len(layouts) > _LAYOUTS_KEPT:
            del layouts[next(iter(layouts))]


def layout_for(token: bytes) -> Layout | None:
    """The :class:`~._growth.Layout` of the template this process read under ``token``."""
    layouts: dict[bytes, Layout] = runtime.slot("layouts", dict)
    with runtime.lock:
        return layouts.get(token)


def grown_since(store: Store, root: bytes, layout: Layout | None = None) -> Growth | None:
    """How the template now in ``store`` grew from the one of token ``root`` (with layout
    ``layout``, or the one this process remembers), or ``None`` if it was replaced (or the
    old layout is unknown here). Reads the template again when it changed (then cached)."""
    layout = layout if layout is not None else layout_for(root)
    if layout is None:
        return None
    for pause in _SETTLE_S:
        try:
            found = _growth_now(store, root, layout)
        except (ValueError, KeyError):  # arrays of conflicting sizes: an extend under way
            found = None
        if found is not None:
            return found
        time.sleep(pause)  # an extend in progress may settle (or it was a replacement)
    return None


#: Pauses before the gate reads a changed template again when it looked neither unchanged
#: nor grown (a template without consolidated metadata shows an extend's steps one by one).
_SETTLE_S = (0.05, 0.2, 0.0)


def _growth_now(store: Store, root: bytes, layout: Layout) -> Growth | None:
    info, now = load_template_with_root(store)
    if now == root:
        return EXACT
    memo: dict[tuple[bytes, bytes], Growth | None] = runtime.slot("growths", dict)
    with runtime.lock:
        if (root, now) in memo:
            return memo[(root, now)]
    metas = {name: z.metadata for name, z in info.zarr_arrays.items()}
    found = growth(layout, info, metas)
    with runtime.lock:
        if len(memo) >= _LAYOUTS_KEPT:
            memo.clear()
        memo[(root, now)] = found
    return found


def template_for_root(store: Store, root: bytes, layout: Layout | None = None) -> TemplateInfo:
    """The template of ``store`` as it was under the freshness token ``root``, or as it is
    now if it only grew since (see :func:`grown_since`; the caller's writes then go through
    :meth:`Verifier.check`, which refuses those that are no longer safe).

    A worker of a long-lived cluster may hold a cache entry from an older template: the entry
    is used only if it was read under ``root``, else the template is read again, and if the
    store no longer holds ``root`` the caller's plan is stale.

    Raises
    ------
    StaleTemplateError
        The template in ``store`` is no longer the one of ``root``, nor that one grown.
    """
    key = store_key(store)
    with runtime.lock:
        hit = runtime.templates.get(key)
    if hit is not None and hit[0] == root:
        return _bind(hit[1], hit[2], store)
    info, now = load_template_with_root(store)
    if now != root and grown_since(store, root, layout) is None:
        raise StaleTemplateError(key)
    return info


class Verifier:
    """The template-freshness gate of a plan made under the freshness token ``root``.

    Called with no argument, it is the strict gate: a coroutine that raises
    :class:`StaleTemplateError` unless the store's token is still ``root`` (an error found
    while planning must not come from a stale template). :meth:`check` with the writes about
    to be put also accepts the template grown since (``extend``: same start, chunking,
    shards and encodings, larger shape, same labels over the old extent) when every write
    lies in write units that were whole in the old extent.
    """

    def __init__(self, store: Store, root: bytes, layout: Layout | None = None) -> None:
        self.store = store
        self.root = root
        self.layout = layout
        self._keys = _label_keys_of(root)

    def __call__(self) -> Coroutine[Any, Any, None]:
        return self._strict()

    async def _strict(self) -> None:
        await self.check(None)

    async def check(self, writes: Sequence[tuple[str, tuple[slice, ...]]] | None) -> Growth:
        """Raise :class:`StaleTemplateError` unless ``writes`` (name, selection) are still
        safe (with ``None``: unless the template is unchanged); return how it grew."""
        if await _token_async(self.store, self._keys) == self.root:
            return EXACT
        if writes is not None:
            grown = await asyncio.to_thread(grown_since, self.store, self.root, self.layout)
            if grown is not None and all(grown.allows(n, sel) for n, sel in writes):
                return grown
        raise StaleTemplateError(store_key(self.store))


def verifier(store: Store, root: bytes, layout: Layout | None = None) -> Verifier:
    """The freshness gate (a :class:`Verifier`) of a plan made under token ``root``."""
    return Verifier(store, root, layout)


class StaleTemplateError(Exception):
    """The template changed since it was cached (internal: the caller reloads and re-plans)."""


def load_template_optimistic(
    store: Store,
) -> tuple[TemplateInfo, Callable[[], Coroutine[Any, Any, None]] | None]:
    """The cached template (if any) at once, plus a coroutine function that verifies it.

    Region writes plan and encode with the cached template while the verification read runs;
    no chunk is stored before it succeeds. On a change it raises :class:`StaleTemplateError`
    and the caller starts over with :func:`load_template`, so a replaced template is never
    written with stale metadata, and an unchanged one costs no extra round trip.
    """
    info, _, verify = load_template_gated(store)
    return info, verify


def load_template_gated(
    store: Store,
) -> tuple[TemplateInfo, bytes, Callable[[], Coroutine[Any, Any, None]] | None]:
    """:func:`load_template_optimistic`, plus the root document the template belongs to."""
    key = store_key(store)
    with runtime.lock:
        hit = runtime.templates.get(key)
    if hit is None:
        info, root = load_template_with_root(store)
        return info, root, None
    root, info, metas = hit
    return _bind(info, metas, store), root, verifier(store, root, layout_for(root))


def _unbind(info: TemplateInfo) -> tuple[TemplateInfo, dict[str, ArrayMetadata]]:
    """The template with its arrays bound to no store (for the cache), and their metadata."""
    metas = {name: z.metadata for name, z in info.zarr_arrays.items()}
    return replace(info, zarr_arrays={}), metas


def _bind(info: TemplateInfo, metas: Mapping[str, ArrayMetadata], store: Store) -> TemplateInfo:
    """The template with the arrays of ``metas`` bound to ``store``.

    Two Store objects can point at the same place with different settings (credentials,
    latency, fault injection): writes must always go through the caller's own store.
    """
    bound: dict[str, zarr.Array[Any]] = {}
    for name, meta in metas.items():
        # v2 or v3 metadata: one of AsyncArray's two overloads, hence the declared type
        config: ArrayConfigParams = {"write_empty_chunks": info.write_empty_chunks}
        arr: AsyncArray[Any] = AsyncArray(meta, StorePath(store, name), config=config)
        bound[name] = zarr.Array(arr)
    return replace(info, zarr_arrays=bound)


def _read_template(store: Store, key: str) -> TemplateInfo:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        # templates written with consolidated=False: reading them without is expected
        warnings.filterwarnings("ignore", message="Failed to open Zarr store with consolidated")
        ds = xr.open_zarr(store, consolidated=None, chunks=None)
        # a read-only store (check() on a read-only Icechunk session) is opened read-only
        if store.read_only:
            group = zarr.open_group(store, mode="r", use_consolidated=None)
        else:
            group = zarr.open_group(store, mode="r+", use_consolidated=None)
    arrays: dict[str, ArrayInfo] = {}
    zarrs: dict[str, zarr.Array[Any]] = {}
    stored: dict[str, xr.Variable] = {}
    # write_empty_chunks=False only when the template says so (see _empty.py)
    write_empty = ds.attrs.get(TEMPLATE_DEFAULT_ATTR) is not False
    for name, var in ds.variables.items():
        name = str(name)
        z = group[name]
        assert isinstance(z, zarr.Array)
        # every chunk we write is stored, even if all fill value, so a chunk object exists
        # exactly where data was written: that is what makes completeness checks exact
        # (with write_empty_chunks=False, units of only fill value are recorded instead)
        z = with_config(z, {"write_empty_chunks": write_empty})
        zarrs[name] = z
        arrays[name] = ArrayInfo(
            name=name,
            dims=tuple(map(str, var.dims)),
            shape=tuple(z.shape),
            chunks=tuple(z.chunks),
            dtype=var.dtype,
            stored_dtype=np.dtype(z.dtype),
            encoding=cf_encoding(var.encoding),
            attrs=dict(var.attrs),
            is_coord=name in ds.coords,
        )
        if name in ds.coords and name not in ds.indexes and var.size <= STORED_COORD_LIMIT:
            stored[name] = var.load()
    return TemplateInfo(
        key=key,
        zarr_format=group.metadata.zarr_format,
        arrays=arrays,
        indexes={str(d): ds.indexes[d] for d in ds.indexes},
        sizes={str(d): int(n) for d, n in ds.sizes.items()},
        zarr_arrays=zarrs,
        stored_coords=stored,
        write_empty_chunks=write_empty,
    )
