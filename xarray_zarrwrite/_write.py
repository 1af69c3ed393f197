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

from ._compat import chunk_path, chunk_spec, encode_chunks
from ._encoding import ZarrFormat, encode_variable
from ._open import StaleTemplateError
from ._region import chunk_blocks
from .codecs.cf import check_packed_range
from .config import config
from .errors import RegionError, WriteFailedError
from .storage._buffered import is_transient_error

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

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
    zarr_format: ZarrFormat,
    on_out_of_range: OnOutOfRange = "raise",
) -> Any:
    """CF-encode ``var`` with the template's pinned encoding; returns NumPy or dask data."""
    var = var.copy(deep=False)
    var.attrs = {}
    var.encoding = dict(target.encoding)
    var = check_packed_range(name, var, target, on_out_of_range)
    if _is_identity(var, target):
        return var.data  # nothing to encode: no copy (the common float case)
    try:
        encoded = encode_variable(var, name, zarr_format)
    except (ValueError, TypeError, OverflowError) as e:
        raise RegionError(f"cannot encode {name!r} with the template's encoding: {e}") from e
    data = encoded.data
    if data.dtype != target.stored_dtype:
        data = data.astype(target.stored_dtype)
    return data


def _is_identity(var: xr.Variable, target: ArrayInfo) -> bool:
    """True when CF encoding would return the values unchanged (floats stored as themselves)."""
    enc = target.encoding
    fill = enc.get("_FillValue")
    return (
        var.dtype.kind == "f"
        and var.dtype == target.stored_dtype
        and "scale_factor" not in enc
        and "add_offset" not in enc
        and "missing_value" not in enc
        and (fill is None or (isinstance(fill, float | np.floating) and np.isnan(fill)))
    )


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
    writes: list[EncodedWrite],
    arrays: Mapping[str, AsyncArray[Any]],
    verify: Callable[[], Awaitable[None]] | None = None,
) -> tuple[int, int]:
    """Encode and write every chunk of every variable concurrently; returns (nchunks, nbytes).

    Whole chunks (the array's edge chunks included) go through the array's own codec pipeline
    and then straight to the store, all variables at once, with only the store puts under the
    process-wide limit: twenty variables of four chunks cost one round trip of store latency.
    Partial chunks (``safe_chunks=False``) take zarr's read-modify-write path. ``verify``, if
    given, runs alongside encoding, and no chunk is stored unless it succeeds.

    Raises
    ------
    WriteFailedError
        A chunk write failed (after retries for transient errors); names the variable and the
        chunk's selection.
    """
    limit = _limit()
    retries, backoff = int(config.get("retries")), float(config.get("retry_backoff"))
    gate = asyncio.ensure_future(verify()) if verify is not None else None

    async def retrying(w: EncodedWrite, block: tuple[slice, ...], put: Any) -> None:
        async with limit:
            for attempt in range(retries + 1):
                try:
                    await put()
                    return
                except Exception as e:
                    if isinstance(e, StaleTemplateError):
                        raise
                    if attempt < retries and is_transient_error(e):
                        await asyncio.sleep(backoff * 2**attempt * (0.5 + random.random()))
                        continue
                    tries = f" after {attempt + 1} attempts" if attempt else ""
                    raise WriteFailedError(
                        f"writing {w.name!r} at {_fmt(block)} failed{tries}: "
                        f"{type(e).__name__}: {e}"
                    ) from e

    async def one_variable(w: EncodedWrite) -> int:
        arr = arrays[w.name]
        # (block, its selection in w.data, its chunk coordinates)
        whole: list[tuple[tuple[slice, ...], tuple[slice, ...], tuple[int, ...]]] = []
        partial: list[tuple[tuple[slice, ...], tuple[slice, ...], tuple[int, ...]]] = []
        for block in chunk_blocks(w.selection, w.chunks):
            local = tuple(
                slice(b.start - s.start, b.stop - s.start)
                for b, s in zip(block, w.selection, strict=True)
            )
            coords = tuple(b.start // c for b, c in zip(block, w.chunks, strict=True))
            edge = tuple(
                min((i + 1) * c, n) for i, c, n in zip(coords, w.chunks, arr.shape, strict=True)
            )
            aligned = all(
                b.start == i * c and b.stop == e
                for b, i, c, e in zip(block, coords, w.chunks, edge, strict=True)
            )
            (whole if aligned else partial).append((block, local, coords))
        jobs = []
        if gate is not None and not whole:
            await gate
        if whole:
            spec = chunk_spec(arr, whole[0][2])
            items = [(_chunk_buffer(w.data[local], spec), spec) for _, local, _ in whole]
            try:
                encoded = await encode_chunks(arr, items)
            except Exception as e:
                raise WriteFailedError(
                    f"encoding {w.name!r} failed: {type(e).__name__}: {e}"
                ) from e
            for (block, _, coords), buf in zip(whole, encoded, strict=True):
                path = chunk_path(arr, coords)
                jobs.append(retrying(w, block, lambda path=path, buf=buf: path.set(buf)))
        for block, local, _ in partial:
            data = w.data[local]
            jobs.append(retrying(w, block, lambda b=block, d=data: arr.setitem(b, d)))
        await _gather(jobs)
        return len(jobs)

    try:
        counts = await _gather([one_variable(w) for w in writes])
    finally:
        if gate is not None and not gate.done():
            gate.cancel()
    return sum(counts), sum(w.data.nbytes for w in writes)


async def _gather(jobs: list[Any]) -> list[Any]:
    """Run all jobs to the end; raise the first error (noting how many others failed)."""
    results = await asyncio.gather(*jobs, return_exceptions=True)
    errors = [r for r in results if isinstance(r, BaseException)]
    if errors:
        if len(errors) > 1:
            errors[0].add_note(f"{len(errors) - 1} more chunk write(s) of this region failed")
        raise errors[0]
    return results


def _chunk_buffer(block: np.ndarray, spec: Any) -> Any:
    """A full chunk for the codec pipeline: edge chunks are padded with the fill value."""
    shape = tuple(spec.shape)
    if block.shape != shape:
        fill = spec.fill_value
        full = np.full(shape, fill if fill is not None else 0, dtype=block.dtype)
        full[tuple(slice(0, n) for n in block.shape)] = block
        block = full
    return spec.prototype.nd_buffer.from_numpy_array(np.ascontiguousarray(block))


def _fmt(block: tuple[slice, ...]) -> str:
    return "[" + ", ".join(f"{s.start}:{s.stop}" for s in block) + "]"
