"""Key helpers of the store overlay: byte ranges of queued values, prefixes, target resolution."""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any, Final

from zarr.abc.store import OffsetByteRequest, RangeByteRequest, Store, SuffixByteRequest
from zarr.storage import FsspecStore, LocalStore

from .._store import resolve_store
from ..errors import InputError

if TYPE_CHECKING:
    from collections.abc import Mapping

    from zarr.abc.store import ByteRequest

    from .._compat import Buffer
    from .._store import StoreLike

# zarr's LocalStore writes ``<key-without-suffix>.<uuid4 hex>.partial`` and renames it into place;
# such temporary files must never be listed as keys.
_PARTIAL_FILE: Final = re.compile(r"\.[0-9a-f]{32}\.partial$")


def _slice(value: Buffer, byte_range: ByteRequest | None) -> Buffer:
    """The part of a queued value asked for by ``byte_range`` (zarr's ByteRequest semantics)."""
    if byte_range is None:
        return value
    n = len(value)
    if isinstance(byte_range, RangeByteRequest):
        start, stop = byte_range.start, byte_range.end
    elif isinstance(byte_range, OffsetByteRequest):
        start, stop = byte_range.offset, n
    elif isinstance(byte_range, SuffixByteRequest):
        start, stop = max(0, n - byte_range.suffix), n
    else:
        raise TypeError(f"Unexpected byte_range, got {byte_range}.")
    return value[start:stop]


def _dir_prefix(prefix: str) -> str:
    """``"foo"`` and ``"foo/"`` -> ``"foo/"``; ``""`` and ``"/"`` -> ``""``."""
    prefix = prefix.strip("/")
    return f"{prefix}/" if prefix else ""


def _resolve_target(
    target: StoreLike, storage_options: Mapping[str, Any] | None, read_only: bool
) -> Store:
    if isinstance(target, Store):
        if storage_options:
            raise InputError(
                f"storage_options cannot be used when target is a zarr Store (got "
                f"{type(target).__name__} with storage_options={dict(storage_options)!r}); "
                "configure the Store itself, or pass a URL instead"
            )
        store = target.with_read_only(True) if read_only and not target.read_only else target
    else:
        store = resolve_store(target, storage_options=storage_options, read_only=read_only)
    if isinstance(store, FsspecStore):
        # fsspec's local filesystem writes files in place (a reader can see half a chunk);
        # zarr's LocalStore writes a temporary file and renames it.
        from fsspec.implementations.local import LocalFileSystem

        if isinstance(getattr(store.fs, "sync_fs", store.fs), LocalFileSystem):
            store = LocalStore(store.path, read_only=store.read_only)
    return store
