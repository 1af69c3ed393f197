"""Listing for :class:`~xarray_zarrwrite.BufferedStore`: the wrapped store's keys merged with
the queue's (queued writes listed, queued deletes and half-written temporaries hidden).

A mixin split out of :mod:`._buffered` (the Store overlay), which it shares the queue
(``_core``) and the wrapped store (``_store``) with.
"""

from __future__ import annotations

import builtins
from typing import TYPE_CHECKING

from ._keys import _PARTIAL_FILE, _dir_prefix

if TYPE_CHECKING:
    from collections.abc import AsyncIterator

    from zarr.abc.store import Store

    from ._engine import _WriteBehind

__all__: list[str] = []


class _Listing:
    """``list``, ``list_prefix`` and ``list_dir`` of a BufferedStore (read-your-writes)."""

    _core: _WriteBehind
    _store: Store

    # -- listing ------------------------------------------------------------------------------

    def _hidden(self, key: str) -> bool:
        """Keys of the wrapped store that a reader must not see right now."""
        if _PARTIAL_FILE.search(key):
            return True
        op = self._core.lookup(key)
        return op is not None and op.value is None

    async def _collect(self, iterator: AsyncIterator[str]) -> list[str]:
        return [key async for key in iterator]

    def _pending_writes(self, prefix: str) -> builtins.set[str]:  # `set` is a method here
        return {
            key
            for key, op in self._core.pending_items()
            if op.value is not None and key.startswith(prefix)
        }

    async def _list_prefix(self, prefix: str) -> list[str]:
        # Pending writes are taken before the listing as well as after it: one that lands in
        # the wrapped store while the listing runs may be missing from both otherwise.
        before = self._pending_writes(prefix)
        if prefix:
            found = await self._core.read(self._collect_prefix, prefix)
        else:
            found = await self._core.read(self._collect_all)
        keys = {key for key in found if not self._hidden(key)}
        keys.update(k for k in before if not self._hidden(k))
        keys.update(self._pending_writes(prefix))
        return sorted(keys)

    async def _collect_prefix(self, prefix: str) -> list[str]:
        return await self._collect(self._store.list_prefix(prefix))

    async def _collect_all(self) -> list[str]:
        return await self._collect(self._store.list())

    async def _collect_dir(self, prefix: str) -> list[str]:
        return await self._collect(self._store.list_dir(prefix))

    async def _list_dir(self, prefix: str) -> list[str]:
        base = _dir_prefix(prefix)
        before = self._pending_writes(base)  # see _list_prefix
        found = await self._core.read(self._collect_dir, prefix)
        names = set()
        for name in found:
            full = base + name
            if _PARTIAL_FILE.search(name) or self._core.is_fenced(full + "/"):
                continue
            op = self._core.lookup(full)
            if op is not None and op.value is None:
                continue
            names.add(name)
        for key in {k for k in before if not self._hidden(k)} | self._pending_writes(base):
            names.add(key[len(base) :].split("/", 1)[0])
        return sorted(names)

    async def list(self) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._core.run(self._list_prefix, ""):
            yield key

    async def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for key in await self._core.run(self._list_prefix, prefix):
            yield key

    async def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        for name in await self._core.run(self._list_dir, prefix):
            yield name
