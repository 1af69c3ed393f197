"""Publishing a staged template: marker first, arrays, root documents, group document last.

A failure before publishing writes nothing; a crash while publishing never leaves a root that
claims arrays which are not there, and its leftovers (recognised by the publish marker) are
cleared by the next ``to_template(mode="w-")``.
"""

from __future__ import annotations

import asyncio
import re
import warnings
from typing import TYPE_CHECKING

import zarr.api.asynchronous as zasync

from ._compat import default_buffer_prototype
from .config import config
from .errors import StoreExistsError

if TYPE_CHECKING:
    from zarr.abc.store import Store
    from zarr.storage import MemoryStore

__all__ = ["PUBLISH_MARKER", "publish"]


_ROOT_DOCS = frozenset({"zarr.json", ".zgroup", ".zattrs", ".zmetadata", ".zarray"})
_GROUP_DOCS = ("zarr.json", ".zgroup")  # the documents that make a group: written last
_ARRAY_KEY = re.compile(r"^[^/]+/(zarr\.json|\.zarray|\.zattrs|c/[0-9/]+|[0-9.]+)$")
#: Written before anything else when publishing, removed last: leftovers are ours only with it.
PUBLISH_MARKER = ".xarray_zarrwrite-publishing"
_MARKER_BODY = b'{"xarray_zarrwrite": "template publish in progress"}\n'


async def _interrupted_publish(target: Store) -> list[str] | None:
    """The keys an interrupted publish of ours left, or None when the target is not that.

    Ours means: the publish marker is there, no group document is (the group document is
    the last thing a publish writes, so a root means a finished template), and every other
    key is an array document or chunk, as a publish writes them. Anything else is kept.
    """
    keys = [k async for k in target.list()]
    if PUBLISH_MARKER not in keys or any(k in keys for k in _GROUP_DOCS):
        return None
    rest = [k for k in keys if k != PUBLISH_MARKER]
    if all(k in _ROOT_DOCS or _ARRAY_KEY.match(k) for k in rest):
        return rest
    return None


async def _clear(target: Store, mode: str) -> None:
    """Make room for the publish: refuse (``"w-"``) unless what is there is ours."""
    if await target.is_empty(""):
        return
    if mode == "w":
        await target.delete_dir("")
        return
    leftovers = await _interrupted_publish(target)
    if leftovers is None:
        raise StoreExistsError(
            f"the target {target} already holds data; nothing was changed. Pass mode='w' to "
            "replace it, or choose an empty location"
        )
    # the marker stays: a crash while clearing still leaves leftovers that are ours
    limit = asyncio.Semaphore(int(config.get("concurrency")))

    async def delete(key: str) -> None:
        async with limit:
            await target.delete(key)

    await asyncio.gather(*(delete(k) for k in leftovers))


async def publish(
    staged: MemoryStore, target: Store, mode: str, *, consolidated: bool = True
) -> None:
    """Copy ``staged`` to ``target``: marker first, arrays, root documents, group document
    last, then remove the marker. ``consolidated``: add consolidated metadata first."""
    await _clear(target, mode)
    if consolidated:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
            await zasync.consolidate_metadata(staged)
    proto = default_buffer_prototype()
    await target.set(PUBLISH_MARKER, proto.buffer.from_bytes(_MARKER_BODY))
    keys = [k async for k in staged.list()]
    roots = {"zarr.json", ".zgroup", ".zattrs", ".zmetadata"}
    limit = asyncio.Semaphore(int(config.get("concurrency")))

    async def copy(key: str) -> None:
        async with limit:
            buf = await staged.get(key, prototype=proto)
            assert buf is not None
            await target.set(key, buf)

    await asyncio.gather(*(copy(k) for k in keys if k not in roots))
    await asyncio.gather(*(copy(k) for k in keys if k in roots and k not in _GROUP_DOCS))
    await asyncio.gather(*(copy(k) for k in keys if k in _GROUP_DOCS))  # publishes the rest
    await target.delete(PUBLISH_MARKER)
