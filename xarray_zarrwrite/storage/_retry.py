"""Which store errors are worth retrying, and the one retry loop of the storage engine.

:func:`retry_call` is the only place a store operation of a ``BufferedStore`` is retried. An
error it gives up on is marked (:func:`mark_retried`), and :func:`is_transient_error` says
``False`` for a marked error: a caller with a retry loop of its own (a region write reading a
chunk to update it) does not retry again what was already retried here, so the attempts on one
key are counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import sys
from typing import TYPE_CHECKING, Any, Final, ParamSpec

from ..errors import ZarrWriteError

if TYPE_CHECKING:
    import random
    from collections.abc import Awaitable, Callable

__all__ = ["is_transient_error"]

logger = logging.getLogger(__name__)

P = ParamSpec("P")

# Attribute set on an exception that already went through retry_call's retries.
_RETRIED_ATTR: Final = "_xarray_zarrwrite_retried"

_MAX_BACKOFF_S: Final = 30.0
# OSError errnos for which retrying cannot help.
_PERMANENT_ERRNOS: Final = frozenset(
    {
        errno.EACCES,
        errno.EPERM,
        errno.EROFS,
        errno.ENOSPC,
        errno.EDQUOT,
        errno.ENAMETOOLONG,
        errno.EINVAL,
        errno.EEXIST,
        errno.ENOENT,
        errno.ENOTDIR,
        errno.EISDIR,
    }
)
# S3 error codes worth retrying (throttling and server-side trouble).
_TRANSIENT_S3_CODES: Final = frozenset(
    {
        "RequestTimeout",
        "RequestTimeTooSkewed",
        "SlowDown",
        "Throttling",
        "ThrottlingException",
        "TooManyRequestsException",
        "InternalError",
        "ServiceUnavailable",
        "503",
        "500",
        "502",
        "504",
    }
)


# --------------------------------------------------------------------------------------------
# Small pure helpers
# --------------------------------------------------------------------------------------------


def is_transient_error(exc: BaseException) -> bool:
    """Whether an error raised by a store operation is worth retrying.

    Transient: connection problems and timeouts (``ConnectionError``, ``TimeoutError``, which
    includes ``asyncio.TimeoutError``), botocore connection/HTTP errors and S3 throttling or 5xx
    responses, aiohttp connection/payload errors and 5xx/429 responses, and other ``OSError``
    (``EIO`` ...) unless the errno says retrying cannot help.

    Permanent: an error that :class:`BufferedStore` already retried, ``PermissionError``, ``FileNotFoundError`` (a missing bucket or vanished store
    root), ``FileExistsError``, ``IsADirectoryError``/``NotADirectoryError``, ``ENOSPC``/``EROFS``
    and friends, ``ValueError``/``TypeError`` (bad input, read-only store) and everything else.

    Parameters
    ----------
    exc
        The exception raised by the wrapped store.

    Returns
    -------
    bool
    """
    if getattr(exc, _RETRIED_ATTR, False):
        return False  # its retries are spent (see retry_call)
    if isinstance(
        exc,
        ZarrWriteError  # our own verdicts (a WriteFailedError already had its retries)
        | PermissionError
        | FileNotFoundError
        | FileExistsError
        | IsADirectoryError
        | NotADirectoryError,
    ):
        return False
    if isinstance(exc, ConnectionError | TimeoutError):
        return True
    # Only look at libraries that are already imported: if a module was never imported, no
    # exception of its types can exist.
    botocore_exc = sys.modules.get("botocore.exceptions")
    if botocore_exc is not None:
        if isinstance(exc, botocore_exc.ConnectionError | botocore_exc.HTTPClientError):
            return True
        if isinstance(exc, botocore_exc.ClientError):
            error = exc.response.get("Error", {})
            status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
            return str(error.get("Code", "")) in _TRANSIENT_S3_CODES or status >= 500
    aiohttp = sys.modules.get("aiohttp")
    if aiohttp is not None:
        if isinstance(exc, aiohttp.ClientConnectionError | aiohttp.ClientPayloadError):
            return True
        if isinstance(exc, aiohttp.ClientResponseError):
            return bool(exc.status >= 500 or exc.status == 429)
    if isinstance(exc, OSError):
        return exc.errno not in _PERMANENT_ERRNOS
    return False


def mark_retried(exc: BaseException) -> None:
    """Mark ``exc`` as having had its retries, so that no outer loop retries it again."""
    with contextlib.suppress(AttributeError, TypeError):  # a type without __dict__
        setattr(exc, _RETRIED_ATTR, True)


async def retry_call(
    fn: Callable[P, Awaitable[Any]],
    retries: int,
    backoff: float,
    rng: random.Random,
    on_retry: Callable[[], None],
    *args: P.args,
    **kwargs: P.kwargs,
) -> tuple[Exception | None, int]:
    """Call ``fn``, retrying transient errors; return ``(final error or None, attempts)``.

    At most ``retries + 1`` attempts; the delay before retry ``n`` (from 1) is
    ``backoff * 2 ** (n - 1)`` seconds, at most 30 s, with +-50 % jitter. ``on_retry`` is called
    before each retry. The final error, if any, is marked with :func:`mark_retried`.
    """
    attempt = 1
    while True:
        try:
            await fn(*args, **kwargs)
        except Exception as exc:  # noqa: BLE001 - classified below, returned to the caller
            if attempt > retries or not is_transient_error(exc):
                mark_retried(exc)
                return exc, attempt
            on_retry()
            delay = min(_MAX_BACKOFF_S, backoff * 2 ** (attempt - 1))
            logger.debug("retrying after %s (attempt %d): %r", fn, attempt, exc)
            await asyncio.sleep(delay * rng.uniform(0.5, 1.5))
            attempt += 1
        else:
            return None, attempt
