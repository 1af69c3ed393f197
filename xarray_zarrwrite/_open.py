"""Reading a template back: what region writes need to know, cached per process.

Every region write needs the template's arrays (shape, chunks, encoding) and its coordinate
labels. Reading all coordinates on every call is what makes xarray's ``region="auto"`` slow;
here they are read once per process and reused while the store's root metadata document is
unchanged (one small read per call checks that).
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Coroutine, Mapping
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
import xarray as xr
import zarr
from zarr import AsyncArray
from zarr.storage import StorePath

from ._compat import ArrayConfigParams, ArrayMetadata, default_buffer_prototype, sync, with_config
from ._encoding import ZarrFormat, cf_encoding
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


@dataclass(frozen=True)
class TemplateInfo:
    """Everything a region write needs from the template, read once."""

    key: str
    zarr_format: ZarrFormat
    arrays: Mapping[str, ArrayInfo]
    indexes: Mapping[str, pd.Index]
    sizes: Mapping[str, int]
    zarr_arrays: Mapping[str, zarr.Array[Any]] = field(repr=False)


#: The cache (``runtime.templates``) maps a store key to the root metadata document, the
#: template with no arrays and the metadata of its arrays (it holds no store; :func:`_bind`
#: binds the arrays to the caller's).
_WRITE_CONFIG: ArrayConfigParams = {"write_empty_chunks": True}


async def _root_document_async(store: Store) -> bytes:
    """The freshness token: the root document (with consolidated metadata, every array's)."""
    proto = default_buffer_prototype()
    for key in _ROOT_KEYS:
        buf = await store.get(key, prototype=proto)
        if buf is not None:
            return key.encode() + b"\0" + buf.to_bytes()
    raise TemplateNotFoundError(
        f"no Zarr template at {store}; create one first with ds.fastzarr.to_template(store)"
    )


def _root_document(store: Store) -> bytes:
    return sync(_root_document_async(store))


def load_template(store: Store) -> TemplateInfo:
    """Return the :class:`TemplateInfo` of the template in ``store`` (cached per process).

    Raises
    ------
    TemplateNotFoundError
        The store holds no Zarr group.
    """
    return load_template_with_root(store)[0]


def load_template_with_root(store: Store) -> tuple[TemplateInfo, bytes]:
    """:func:`load_template`, plus the root document the template was read under.

    The root document is the template's freshness token: a writer that planned with this
    template checks, before its first put, that the store's root document is still this one.
    """
    key = store_key(store)
    root = _root_document(store)
    with runtime.lock:
        hit = runtime.templates.get(key)
    if hit is not None and hit[0] == root:
        return _bind(hit[1], hit[2], store), root
    info = _read_template(store, key)
    with runtime.lock:
        runtime.templates[key] = (root, *_unbind(info))
    return info, root


def template_for_root(store: Store, root: bytes) -> TemplateInfo:
    """The template of ``store`` as it was under the root document ``root``.

    A worker of a long-lived cluster may hold a cache entry from an older template: the entry
    is used only if it was read under ``root``, else the template is read again, and if the
    store no longer holds ``root`` the caller's plan is stale.

    Raises
    ------
    StaleTemplateError
        The template in ``store`` is no longer the one of ``root``.
    """
    key = store_key(store)
    with runtime.lock:
        hit = runtime.templates.get(key)
    if hit is not None and hit[0] == root:
        return _bind(hit[1], hit[2], store)
    info, now = load_template_with_root(store)
    if now != root:
        raise StaleTemplateError(key)
    return info


def verifier(store: Store, root: bytes) -> Callable[[], Coroutine[Any, Any, None]]:
    """A coroutine function that raises :class:`StaleTemplateError` unless the store's root
    document is still ``root`` (the freshness gate run before the first put)."""

    async def verify() -> None:
        if await _root_document_async(store) != root:
            raise StaleTemplateError(store_key(store))

    return verify


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
    return _bind(info, metas, store), root, verifier(store, root)


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
        arr: AsyncArray[Any] = AsyncArray(meta, StorePath(store, name), config=_WRITE_CONFIG)
        bound[name] = zarr.Array(arr)
    return replace(info, zarr_arrays=bound)


def _read_template(store: Store, key: str) -> TemplateInfo:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        ds = xr.open_zarr(store, consolidated=None, chunks=None)
        group = zarr.open_group(store, mode="r+", use_consolidated=None)
    arrays: dict[str, ArrayInfo] = {}
    zarrs: dict[str, zarr.Array[Any]] = {}
    for name, var in ds.variables.items():
        name = str(name)
        z = group[name]
        assert isinstance(z, zarr.Array)
        # every chunk we write is stored, even if all fill value, so a chunk object exists
        # exactly where data was written: that is what makes completeness checks exact
        z = with_config(z, _WRITE_CONFIG)
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
    return TemplateInfo(
        key=key,
        zarr_format=group.metadata.zarr_format,
        arrays=arrays,
        indexes={str(d): ds.indexes[d] for d in ds.indexes},
        sizes={str(d): int(n) for d, n in ds.sizes.items()},
        zarr_arrays=zarrs,
    )
