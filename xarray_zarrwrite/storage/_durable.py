"""Owned writes through a :class:`~xarray_zarrwrite.BufferedStore`: one queue, own outcomes.

A :class:`~xarray_zarrwrite.StreamWriter` over a ``BufferedStore`` puts through this view. Its
``set``/``delete`` go through the buffer's one queue (the same order, coalescing, concurrency,
byte budget and retries as every other write through that buffer) and return only once the
write is durable in the wrapped store, raising that write's own failure. So a writer's
"committed" means "in the target", a failed key fails exactly the write that put it, and the
buffer does not report that failure again to whoever flushes it next. Reads, listings and
``delete_dir`` are the buffered store's (they see queued writes).
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING

from .._compat import Buffer, WrapperStore

if TYPE_CHECKING:
    from collections.abc import Iterable

    from ._buffered import BufferedStore

__all__ = ["DurablePuts"]


class DurablePuts(WrapperStore["BufferedStore"]):
    """A view of a BufferedStore whose writes wait until durable and raise their own failure.

    Parameters
    ----------
    store
        The buffered store whose queue the writes go through. The view does not own it:
        closing the view leaves the buffered store open.
    """

    def _with_store(self, store: BufferedStore) -> DurablePuts:
        return type(self)(store)

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        if not isinstance(value, Buffer):
            raise TypeError(f"DurablePuts.set(): `value` must be a Buffer, got {type(value)}")
        await self._store._core.run(self._put, key, value)

    async def delete(self, key: str) -> None:
        # docstring inherited
        await self._store._core.run(self._put, key, None)

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited
        if not await self.exists(key):
            await self.set(key, value)

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        await asyncio.gather(*(self.set(key, value) for key, value in values))

    async def _put(self, key: str, value: Buffer | None) -> None:
        buffered = self._store
        buffered._check_writable()
        inner = buffered._store
        if not inner._is_open:
            await inner._ensure_open()
        await buffered._core.put_and_wait(key, value, inner)

    def close(self) -> None:
        """Do nothing: the buffered store belongs to the caller, who closes it."""
