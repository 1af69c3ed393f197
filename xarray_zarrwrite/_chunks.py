"""Chunk planning: ``chunks=`` specifications turned into one chunk size per dimension.

``chunks="auto"`` is deterministic and never exceeds a dimension. It fills a byte budget
(``target_chunk_mb`` of uncompressed data for the widest data type) in an order set by the
access pattern:

``"temporal"``
    reading long time series at few points is fast: the time dimension gets as much of the
    budget as it can use, then the remaining dimensions share what is left equally.
``"spatial"``
    reading whole maps at few times is fast: the non-time dimensions are kept whole (from the
    last dimension backwards) as long as they fit, and time gets what is left.
``"balanced"``
    every dimension is split into about the same number of pieces.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Final, Literal

from .errors import ChunkSpecError

__all__ = ["ACCESS_PATTERNS", "AccessPattern", "plan_chunks", "plan_shards"]

AccessPattern = Literal["temporal", "spatial", "balanced"]
ACCESS_PATTERNS: Final = ("temporal", "spatial", "balanced")


def plan_chunks(
    sizes: Mapping[str, int],
    chunks: Mapping[str, int | None] | str | None,
    *,
    itemsize: int,
    time_dim: str | None,
    access_pattern: str = "balanced",
    target_bytes: int,
) -> dict[str, int]:
    """Return ``{dim: chunk_size}`` for every dimension in ``sizes``.

    Parameters
    ----------
    sizes
        Full size of every dimension, in the order the data variables use them.
    chunks
        ``"auto"`` or ``None`` to plan every dimension; a mapping fixes some dimensions
        (``-1`` or ``None`` meaning the whole dimension) and plans the others.
    itemsize
        Bytes per element of the widest data variable.
    time_dim
        The dimension treated as time by the access patterns.
    access_pattern
        One of ``"temporal"``, ``"spatial"``, ``"balanced"``.
    target_bytes
        Uncompressed bytes a chunk should hold.

    Raises
    ------
    ChunkSpecError
        Unknown dimension, a size that is not a positive integer, or an unknown pattern.
    """
    if access_pattern not in ACCESS_PATTERNS:
        raise ChunkSpecError(
            f"access_pattern must be one of {list(ACCESS_PATTERNS)}, got {access_pattern!r}"
        )
    if not (isinstance(target_bytes, int | float) and target_bytes > 0):
        raise ChunkSpecError(f"target_chunk_mb must be a positive number, got {target_bytes!r}")
    fixed: dict[str, int] = {}
    if chunks is None or (isinstance(chunks, str) and chunks == "auto"):
        pass
    elif isinstance(chunks, Mapping):
        for dim, size in chunks.items():
            if dim not in sizes:
                raise ChunkSpecError(
                    f"chunks names dimension {dim!r}, which is not a dimension of the data "
                    f"(dimensions: {list(sizes)})"
                )
            if size is None or (
                isinstance(size, int) and not isinstance(size, bool) and size == -1
            ):
                fixed[dim] = max(sizes[dim], 1)
            elif isinstance(size, int) and not isinstance(size, bool) and size > 0:
                fixed[dim] = min(size, max(sizes[dim], 1))
            else:
                raise ChunkSpecError(
                    f"chunk size for dimension {dim!r} must be a positive integer, -1 or None, "
                    f"got {size!r}"
                )
    else:
        raise ChunkSpecError(
            f"chunks must be None, 'auto' or a mapping of dimension to size, got {chunks!r}"
        )

    free = [d for d in sizes if d not in fixed]
    budget = max(1, int(target_bytes // max(itemsize, 1)))
    for size in fixed.values():
        budget = max(1, budget // size)
    planned = _plan_free({d: max(sizes[d], 1) for d in free}, budget, time_dim, access_pattern)
    return {d: fixed.get(d, planned.get(d, 1)) for d in sizes}


def _plan_free(
    sizes: dict[str, int], budget: int, time_dim: str | None, pattern: str
) -> dict[str, int]:
    if not sizes:
        return {}
    if pattern == "temporal" and time_dim in sizes:
        t = min(sizes[time_dim], budget)
        rest = {d: n for d, n in sizes.items() if d != time_dim}
        return {time_dim: t, **_balanced(rest, max(1, budget // t))}
    if pattern == "spatial":
        out: dict[str, int] = {}
        others = [d for d in sizes if d != time_dim]
        for d in reversed(others):
            out[d] = min(sizes[d], budget)
            budget = max(1, budget // out[d])
        if time_dim in sizes:
            out[time_dim] = min(sizes[time_dim], budget)
        return out
    return _balanced(sizes, budget)


def _balanced(sizes: dict[str, int], budget: int) -> dict[str, int]:
    """Split every dimension into about ``k`` pieces, ``k`` the smallest that fits ``budget``."""
    if not sizes:
        return {}
    if math.prod(sizes.values()) <= budget:
        return dict(sizes)

    def chunk_for(k: int) -> dict[str, int]:
        return {d: max(1, math.ceil(n / k)) for d, n in sizes.items()}

    lo, hi = 1, max(sizes.values())
    while lo < hi:  # smallest k whose chunks fit the budget
        mid = (lo + hi) // 2
        if math.prod(chunk_for(mid).values()) <= budget:
            hi = mid
        else:
            lo = mid + 1
    return chunk_for(lo)


def plan_shards(
    sizes: Mapping[str, int],
    chunks: Mapping[str, int],
    shards: Mapping[str, int | None] | str | None,
    *,
    itemsize: int,
    time_dim: str | None,
    access_pattern: str = "balanced",
    target_bytes: int,
) -> dict[str, int] | None:
    """Return ``{dim: shard_size}`` (each a multiple of the chunk size), or None (unsharded).

    ``shards="auto"`` groups chunks into shards of about ``target_bytes`` uncompressed, the
    chunks of a shard laid out by ``access_pattern`` exactly as :func:`plan_chunks` lays out
    elements in a chunk. A mapping fixes some dimensions (``-1``/None: the whole dimension,
    rounded up to whole chunks); a dimension left out gets shards one chunk wide.

    Raises
    ------
    ChunkSpecError
        Unknown dimension, a size that is not a positive multiple of the chunk size, or a bad
        ``shards`` type.
    """
    if shards is None:
        return None
    nchunks = {d: max(1, math.ceil(max(n, 1) / chunks[d])) for d, n in sizes.items()}
    if isinstance(shards, str) and shards == "auto":
        chunk_bytes = math.prod(chunks.values()) * max(itemsize, 1)
        per_shard = plan_chunks(
            nchunks,
            None,
            itemsize=1,
            time_dim=time_dim,
            access_pattern=access_pattern,
            target_bytes=max(1, int(target_bytes // chunk_bytes)),
        )
        return {d: per_shard[d] * chunks[d] for d in sizes}
    if not isinstance(shards, Mapping):
        raise ChunkSpecError(
            f"shards must be None, 'auto' or a mapping of dimension to size, got {shards!r}"
        )
    out = dict(chunks)
    for dim, size in shards.items():
        if dim not in sizes:
            raise ChunkSpecError(
                f"shards names dimension {dim!r}, which is not a dimension of the data "
                f"(dimensions: {list(sizes)})"
            )
        whole = size is None or (type(size) is int and size == -1)
        if whole:
            out[dim] = nchunks[dim] * chunks[dim]
        elif type(size) is int and size > 0 and size % chunks[dim] == 0:
            out[dim] = min(size, nchunks[dim] * chunks[dim])
        else:
            raise ChunkSpecError(
                f"shard size for dimension {dim!r} must be a positive multiple of its chunk "
                f"size {chunks[dim]} (or -1/None for the whole dimension), got {size!r}; "
                "choose chunks= that divide the shards"
            )
    return out
