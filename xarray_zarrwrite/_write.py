"""Executing a region plan: encode, then write every chunk of every variable concurrently.

One async implementation serves blocking and non-blocking callers. All chunk writes of a
process share one in-flight limit (``config["concurrency"]``), so twenty variables of four
chunks each cost one round trip of store latency, not twenty.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr

from ._encoding import encode_variable
from ._region import chunk_blocks
from .codecs.cf import check_packed_range
from .config import config
from .errors import RegionError, WriteFailedError
from .storage._buffered import is_transient_error

if TYPE_CHECKING:
    from zarr import AsyncArray

    from ._open import ArrayInfo, TemplateInfo
    from ._region import RegionPlan
    from .codecs.cf import OnOutOfRange

__all__ = ["EncodedWrite", "RegionWriteResult", "encode_plan", "write_encoded"]


@dataclass(frozen=True)
class RegionWriteResult:
    """What a region write did.

    Attributes
    ----------
    region
        ``{dim: slice}`` of the template that was written.
    variables
        Names of the variables written.
    nchunks
        Chunk writes issued.
    nbytes
        Uncompressed bytes written.
    seconds
        Wall time of the write (zero for deferred writes until computed).
    """

    region: Mapping[str, slice]
    variables: tuple[str, ...]
    nchunks: int
    nbytes: int
    seconds: float = 0.0


@dataclass(frozen=True)
class EncodedWrite:
    """A variable of a plan, CF-encoded into the template's stored dtype (NumPy)."""

    name: str
    data: np.ndarray
    selection: tuple[slice, ...]
    chunks: tuple[int, ...]


def encode_for_template(
    name: str,
    var: xr.Variable,
    target: ArrayInfo,
    zarr_format: int,
    on_out_of_range: OnOutOfRange = "raise",
) -> Any:
    """CF-encode ``var`` with the template's pinned encoding; returns NumPy or dask data."""
    var = var.copy(deep=False)
    var.attrs = {}
    var.encoding = dict(target.encoding)
    var = check_packed_range(name, var, target, on_out_of_range)
    try:
        encoded = encode_variable(var, name, zarr_format)
    except (ValueError, TypeError, OverflowError) as e:
        raise RegionError(f"cannot encode {name!r} with the template's encoding: {e}") from e
    data = encoded.data
    if data.dtype != target.stored_dtype:
        data = data.astype(target.stored_dtype)
    return data


def encode_plan(
    plan: RegionPlan, info: TemplateInfo, on_out_of_range: OnOutOfRange = "raise"
) -> list[EncodedWrite]:
    """Encode every NumPy-backed variable of ``plan`` (validation errors surface here)."""
    out = []
    for w in plan.writes:
        target = info.arrays[w.name]
        data = encode_for_template(w.name, w.variable, target, info.zarr_format, on_out_of_range)
        out.append(EncodedWrite(w.name, np.asarray(data), w.selection, w.chunks))
    return out


_limits: dict[int, asyncio.Semaphore] = {}


def _limit() -> asyncio.Semaphore:
    """The process-wide in-flight limit of the running event loop."""
    loop = asyncio.get_running_loop()
    sem = _limits.get(id(loop))
    if sem is None:
        sem = _limits[id(loop)] = asyncio.Semaphore(int(config.get("concurrency")))
    return sem


async def write_encoded(
    writes: list[EncodedWrite], arrays: Mapping[str, AsyncArray[Any]]
) -> tuple[int, int]:
    """Write every chunk of every encoded variable concurrently; returns (nchunks, nbytes).

    Raises
    ------
    WriteFailedError
        A chunk write failed; names the variable and the chunk's selection.
    """
    limit = _limit()
    retries, backoff = int(config.get("retries")), float(config.get("retry_backoff"))

    async def put(w: EncodedWrite, block: tuple[slice, ...]) -> None:
        local = tuple(
            slice(b.start - s.start, b.stop - s.start)
            for b, s in zip(block, w.selection, strict=True)
        )
        async with limit:
            for attempt in range(retries + 1):
                try:
                    await arrays[w.name].setitem(block, w.data[local])
                    return
                except Exception as e:
                    if attempt < retries and is_transient_error(e):
                        await asyncio.sleep(backoff * 2**attempt * (0.5 + random.random()))
                        continue
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise WriteFailedError(
                        f"writing {w.name!r} at {_fmt(block)} failed{tries}: "
                        f"{type(e).__name__}: {e}"
                    ) from e

    jobs = [put(w, b) for w in writes for b in chunk_blocks(w.selection, w.chunks)]
    results = await asyncio.gather(*jobs, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        if len(errors) > 1:
            errors[0].add_note(f"{len(errors) - 1} more chunk write(s) of this region failed")
        raise errors[0]
    return len(jobs), sum(w.data.nbytes for w in writes)


def _fmt(block: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in block) + "]"
