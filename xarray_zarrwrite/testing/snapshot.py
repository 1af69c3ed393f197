"""Hash every object of a store, to prove that a failed call wrote nothing."""

from __future__ import annotations

import hashlib
import os
import pathlib

from zarr.abc.store import Store

from .._compat import default_buffer_prototype, sync

__all__ = ["snapshot"]


def snapshot(store: str | os.PathLike[str] | Store) -> dict[str, str]:
    """``{key: sha256}`` of every object in a local directory or a zarr Store."""
    if isinstance(store, Store):
        return sync(_snapshot_store(store))
    root = pathlib.Path(store)
    if not root.exists():
        return {}
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


async def _snapshot_store(store: Store) -> dict[str, str]:
    proto = default_buffer_prototype()
    out = {}
    async for key in store.list():
        buf = await store.get(key, prototype=proto)
        if buf is not None:
            out[key] = hashlib.sha256(buf.to_bytes()).hexdigest()
    return dict(sorted(out.items()))
