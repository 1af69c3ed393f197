"""Executing a region plan: encode, then store every write unit of every variable concurrently.

The write unit is the shard when the template array is sharded, else the chunk; all grid
arithmetic is :class:`~xarray_zarrwrite._grid.ChunkGrid`'s. One async implementation serves
blocking and non-blocking callers. All unit writes of a process share one in-flight limit
(``config["concurrency"]``), so twenty variables of four chunks each cost one round trip of
store latency, not twenty.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Mapping
from dataclasses import dataclass
from functools import partial
from typing import TYPE_CHECKING, Any

import numpy as np
import xarray as xr
import zarr

from ._compat import (
    ZARR_SHARDS_DROP_EMPTY_INNER,
    async_array,
    chunk_spec,
    encode_chunks,
    with_config,
    writes_empty_chunks,
)
from ._empty import is_empty, record_empty
from ._encoding import ZarrFormat, encode_variable
from ._grid import ChunkGrid, UnitPiece
from ._open import StaleTemplateError, Verifier
from ._runtime import runtime
from .codecs.cf import check_packed_range
from .config import config
from .errors import RegionError, WriteFailedError
from .storage._retry import retry_call

if TYPE_CHECKING:
    from collections.abc import Awaitable, Callable

    from zarr import AsyncArray

    from ._compat import ArraySpec, NDBuffer
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
        Write units stored (shards when the template is sharded, else chunks).
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
    chunks: tuple[int, ...]  # the plan's write unit; the writer re-derives it from the array


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


def _limit() -> asyncio.Semaphore:
    """The process-wide in-flight limit of the running event loop, sized by the config now."""
    return runtime.limit(int(config.get("concurrency")))


async def write_encoded(
    writes: list[EncodedWrite],
    arrays: Mapping[str, AsyncArray[Any]],
    verify: Callable[[], Awaitable[None]] | None = None,
    retry: tuple[int, float] | None = None,
) -> tuple[int, int]:
    """Encode and store every write unit of every variable concurrently.

    ``retry`` (retries, backoff) overrides the config's policy: a StreamWriter over a
    :class:`~xarray_zarrwrite.BufferedStore` puts with that store's policy.

    Returns ``(units written, uncompressed bytes)``. The write unit is the shard when the
    array is sharded, else the chunk (see :class:`~xarray_zarrwrite._grid.ChunkGrid`). Whole
    units (the array's edge units included) go through the array's own codec pipeline (a
    shard's is the sharding codec) and then straight to the store, all variables at once,
    with only the store puts under the process-wide limit. Partial units (planned only with
    ``safe_chunks=False``) take zarr's read-modify-write path.

    ``verify``, if given, runs alongside encoding and every put waits for it: no unit is
    stored before the template is known unchanged, and a replaced template raises
    :class:`~xarray_zarrwrite._open.StaleTemplateError` with nothing written.

    Raises
    ------
    WriteFailedError
        A unit could not be encoded or stored; names the variable, the unit, its selection
        and how many attempts were made (transient errors are retried ``config["retries"]``
        times, other errors are not).
    """
    limit = _limit()
    retries, backoff = int(config.get("retries")), float(config.get("retry_backoff"))
    if retry is not None:
        retries, backoff = retry
    gate = asyncio.ensure_future(_gate(verify, writes)) if verify is not None else None

    async def put(w: EncodedWrite, grid: ChunkGrid, piece: UnitPiece, op: Any) -> None:
        if gate is not None:
            await gate  # the template-freshness gate: nothing is stored before it passes
        async with limit:
            await _with_retries(w.name, grid, piece, op, retries, backoff)

    async def one_variable(w: EncodedWrite) -> int:
        arr = arrays[w.name]
        grid = ChunkGrid.from_array(arr)
        pieces = grid.pieces(w.selection)
        # the array's config decides, as in zarr: False skips (and records) all-fill units
        keep_empty = writes_empty_chunks(arr)
        jobs = []
        items = _whole_items(w, arr, [p for p in pieces if p.whole], keep_empty)
        full = [(p, item) for p, item in items if item is not None]
        try:
            encoded = await encode_chunks(arr, [item for _, item in full]) if full else []
        except Exception as e:
            if gate is not None:
                await gate  # a replaced template explains the failure: re-plan instead
            raise WriteFailedError(f"encoding {w.name!r} failed: {type(e).__name__}: {e}") from e
        bufs = iter(encoded)
        empty: list[str] = []  # keys of the units written empty (write_empty_chunks=False)
        for p, item in items:
            buf = None if item is None else next(bufs)
            path = grid.path(arr, p.coords)
            # an encoder that returns nothing means "no object": delete, so an older unit
            # at this key cannot survive
            jobs.append(put(w, grid, p, path.delete if buf is None else partial(path.set, buf)))
            if buf is None and not keep_empty:
                empty.append(grid.key(p.coords))
        for p in pieces:
            if not p.whole:
                data = w.data[p.local]
                op = partial(_partial_unit, arr, grid, p, data, keep_empty, empty)
                jobs.append(put(w, grid, p, op))
        await _gather(jobs)
        if empty:  # once every unit is done: a crash before shows them missing, not written
            await put(w, grid, pieces[0], partial(record_empty, arr.store_path, empty))
        return len(jobs)

    try:
        counts = await _gather([one_variable(w) for w in writes])
    finally:
        if gate is not None:
            if not gate.done():
                gate.cancel()
            elif not gate.cancelled():
                gate.exception()  # retrieved: a stale template is re-raised by the puts
    return sum(counts), sum(w.data.nbytes for w in writes)


def _whole_items(
    w: EncodedWrite, arr: AsyncArray[Any], whole: list[UnitPiece], keep_empty: bool
) -> list[tuple[UnitPiece, tuple[NDBuffer, ArraySpec] | None]]:
    """The whole units of ``w`` as (buffer, spec) to encode; None for an all-fill unit that
    is not stored (``write_empty_chunks=False``)."""
    out: list[tuple[UnitPiece, tuple[NDBuffer, ArraySpec] | None]] = []
    coder = arr
    if not keep_empty and arr.shards is not None and not ZARR_SHARDS_DROP_EMPTY_INNER:
        # this zarr cannot leave a shard's empty inner chunks out: encode them (see _compat)
        coder = async_array(with_config(zarr.Array(arr), {"write_empty_chunks": True}))
    for p in whole:
        spec = chunk_spec(coder, p.coords)
        buf = _chunk_buffer(w.data[p.local], spec)
        out.append((p, None if not keep_empty and is_empty(buf, spec) else (buf, spec)))
    return out


async def _partial_unit(
    arr: AsyncArray[Any],
    grid: ChunkGrid,
    p: UnitPiece,
    data: np.ndarray,
    keep_empty: bool,
    empty: list[str],
) -> None:
    """Read-modify-write of part of a unit (``safe_chunks=False``). With
    ``write_empty_chunks=False`` zarr deletes the unit when the merged result is all fill:
    its key is then added to ``empty`` (the call's record)."""
    await arr.setitem(p.selection, data)
    key = grid.key(p.coords)
    if not keep_empty and key not in empty and not await grid.path(arr, p.coords).exists():
        empty.append(key)


async def _gate(verify: Callable[[], Awaitable[None]], writes: list[EncodedWrite]) -> None:
    """The freshness gate; a :class:`~._open.Verifier` is told the writes (a template that
    only grew since the plan still takes the writes inside its old extent)."""
    if isinstance(verify, Verifier):
        await verify.check([(w.name, w.selection) for w in writes])
    else:
        await verify()


_rng = random.Random()


async def _with_retries(
    name: str, grid: ChunkGrid, piece: UnitPiece, op: Any, retries: int, backoff: float
) -> None:
    """Run one store operation through the storage engine's one retry loop.

    Transient errors are retried ``retries`` times, every attempt counted once (an error a
    wrapped ``BufferedStore`` already retried is marked, and not retried again here).
    """
    error, attempts = await retry_call(op, retries, backoff, _rng, _no_op)
    if error is None:
        return
    if isinstance(error, StaleTemplateError):
        raise error
    why = "retries exhausted" if attempts > retries else "not retried: permanent error"
    plural = "attempt" if attempts == 1 else "attempts"
    raise WriteFailedError(
        f"writing {name!r} at {_fmt(piece.selection)} ({grid.unit_name} {piece.coords}) "
        f"failed after {attempts} {plural} ({why}): {type(error).__name__}: {error}"
    ) from error


def _no_op() -> None:
    pass


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
