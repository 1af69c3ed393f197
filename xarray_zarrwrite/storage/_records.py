"""Plain records of the write-behind engine: configuration, counters, queued ops, failures."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final, cast

import numpy as np

from .._compat import Buffer
from ..config import config
from ..errors import InputError, WriteFailedError

if TYPE_CHECKING:
    import asyncio

    from zarr.abc.store import Store

__all__ = ["BufferedStoreStats"]

_MIB: Final = 1 << 20
_MAX_KEYS_IN_MESSAGE: Final = 10


def _owned(value: Buffer) -> Buffer:
    """Return ``value``, or a private copy of it when its memory could change after ``set``.

    zarr never reuses a Buffer it hands to ``Store.set``, but the Buffer does not always own its
    memory: for an uncompressed complete chunk (no compressor, only the ``bytes`` codec) it is a
    view of the array the caller passed to ``Array.__setitem__``, which the caller is free to
    modify as soon as the write returns, while the value is still queued here. Buffers backed by
    an immutable ``bytes`` object (the output of every compressor and all metadata documents)
    cannot change and are queued without a copy; anything else is copied once.
    """
    data = value.as_array_like()
    if isinstance(data, np.ndarray):
        base: object = data
        while isinstance(base, np.ndarray):
            base = base.base
        if isinstance(base, bytes):
            return value
    return type(value).from_array_like(cast("Any", data).copy())  # a cupy array stays on device


# --------------------------------------------------------------------------------------------
# Configuration, stats, bookkeeping records
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _BufferConfig:
    max_buffer_bytes: int
    concurrency: int
    retries: int
    retry_backoff: float


def _parse_config(
    max_buffer_mb: float | None,
    concurrency: int | None,
    retries: int | None,
    retry_backoff: float | None,
) -> _BufferConfig:
    """Validate the options of a buffer; those not given are read from the config, now.

    Raises :class:`InputError` (a ``ValueError``) naming the option, the value received and
    where it came from; ``TypeError`` for a ``max_buffer_mb`` that is not a number.
    """
    given = {
        "max_buffer_mb": max_buffer_mb,
        "concurrency": concurrency,
        "retries": retries,
        "retry_backoff": retry_backoff,
    }
    values = {k: config.get(k) if v is None else v for k, v in given.items()}

    def bad(key: str, expected: str) -> InputError:
        origin = (
            f"the argument {key}="
            if given[key] is not None
            else f"the config key {key!r} (xarray_zarrwrite.config or "
            f"XARRAY_ZARRWRITE_{key.upper()})"
        )
        return InputError(
            f"{key} must be {expected}, got {values[key]!r} from {origin}; pass a valid value"
        )

    mb, conc, retr, back = values.values()
    if isinstance(mb, bool) or not isinstance(mb, int | float):
        raise TypeError(f"max_buffer_mb must be a number of MiB, got {mb!r}")
    if not mb > 0 or not math.isfinite(mb):
        raise bad("max_buffer_mb", "a positive number of MiB")
    if isinstance(conc, bool) or not isinstance(conc, int) or conc < 1:
        raise bad("concurrency", "an integer >= 1")
    if isinstance(retr, bool) or not isinstance(retr, int) or retr < 0:
        raise bad("retries", "an integer >= 0")
    if isinstance(back, bool) or not isinstance(back, int | float) or not 0 <= back < math.inf:
        raise bad("retry_backoff", "a number of seconds >= 0")
    return _BufferConfig(
        max_buffer_bytes=max(1, int(mb * _MIB)),
        concurrency=conc,
        retries=retr,
        retry_backoff=float(back),
    )


@dataclass(frozen=True, slots=True)
class BufferedStoreStats:
    """A snapshot of a :class:`BufferedStore`'s counters (shared by all its views).

    Attributes
    ----------
    bytes_queued
        Bytes accepted by ``set`` since creation.
    bytes_written
        Bytes written to the wrapped store (less than ``bytes_queued`` when writes of the same key
        were coalesced or failed).
    puts
        Successful ``set`` calls on the wrapped store.
    deletes
        Successful ``delete`` calls on the wrapped store.
    coalesced
        Queued writes superseded before being written (by a newer write of the same key, or
        by ``delete_dir``/``clear``).
    retries
        Retried operations on the wrapped store (transient errors).
    failures
        Operations that failed for good (permanent error, or transient after all retries).
    buffered_bytes
        Bytes held right now (queued or being written).
    peak_buffered_bytes
        Largest ``buffered_bytes`` seen.
    pending_keys
        Keys queued or being written right now.
    """

    bytes_queued: int
    bytes_written: int
    puts: int
    deletes: int
    coalesced: int
    retries: int
    failures: int
    buffered_bytes: int
    peak_buffered_bytes: int
    pending_keys: int


@dataclass(slots=True, eq=False)
class _Op:
    """A queued write (``value``) or delete (``value is None``) of one key."""

    value: Buffer | None
    nbytes: int
    first_seq: int  # sequence number of the oldest write coalesced into this one
    store: Store  # the wrapped store to write through (the view's, which is writable)
    # owners waiting for this op (or for the op it superseded) to be durable: they get its
    # outcome; `unowned` when a coalesced put had no owner (its failure is the buffer's to report)
    waiters: list[asyncio.Future[None]] = field(default_factory=list)
    unowned: bool = True


_GONE: Final = _Op(None, 0, 0, cast("Store", None))  # "deleted", for keys under a delete_dir


@dataclass(frozen=True, slots=True)
class _Failure:
    key: str
    action: str
    error: BaseException
    attempts: int


def _failure_error(failures: list[_Failure], where: str) -> WriteFailedError:
    keys = [f.key for f in failures]
    shown = ", ".join(repr(k) for k in keys[:_MAX_KEYS_IN_MESSAGE])
    if len(keys) > _MAX_KEYS_IN_MESSAGE:
        shown += f" and {len(keys) - _MAX_KEYS_IN_MESSAGE} more"
    first = failures[0]
    err = WriteFailedError(
        f"{len(failures)} buffered write(s) to {where} failed and were NOT stored: {shown}. "
        f"First error ({first.action} of {first.key!r}, {first.attempts} attempt(s)): "
        f"{type(first.error).__name__}: {first.error}. Write these keys again (for example "
        "re-run the affected region write); BufferedStore.failed_keys lists every key whose "
        "latest write is not durable."
    )
    if len(failures) == 1:
        err.__cause__ = first.error
    else:
        err.__cause__ = BaseExceptionGroup(
            "errors of the failed background writes", [f.error for f in failures]
        )
    return err
