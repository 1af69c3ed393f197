"""Library-wide defaults, read through donfig.

Values can be set with environment variables (read when this module is imported) or
temporarily with ``xarray_zarrwrite.config.set(concurrency=32)`` (or
``config.set({"concurrency": 32})``) used as a context manager. Functions and constructors read
the values when they are called, at their boundary, into frozen objects; nothing deep in the
pipeline reaches back into the global config, and nothing reads it at import.

Keys (environment variable in brackets):

``concurrency`` (``XARRAY_ZARRWRITE_CONCURRENCY``, default 128)
    Chunk writes in flight at once, across all variables and region writes of this process;
    also the default ``concurrency`` of a :class:`~xarray_zarrwrite.BufferedStore` (writes of
    one buffer in flight at once).
``retries`` (``XARRAY_ZARRWRITE_RETRIES``, default 3)
    Retries of a store operation that failed with a transient error (connection reset, timeout,
    5xx, throttling): at most ``retries + 1`` attempts per key. Also ``BufferedStore``'s default.
``retry_backoff`` (``XARRAY_ZARRWRITE_RETRY_BACKOFF``, default 0.1)
    First retry delay in seconds, doubled at each retry (with jitter). Also ``BufferedStore``'s
    default.
``max_buffer_mb`` (``XARRAY_ZARRWRITE_MAX_BUFFER_MB``, default 256)
    Default bound, in MiB, of a ``BufferedStore``'s write-behind buffer.
``target_chunk_mb`` (``XARRAY_ZARRWRITE_TARGET_CHUNK_MB``, default 8.0)
    Target uncompressed chunk size for ``chunks="auto"``, in MiB.
``default_compression`` (``XARRAY_ZARRWRITE_DEFAULT_COMPRESSION``)
    Compressor used by ``compression="default"``.
"""

from __future__ import annotations

from donfig import Config

__all__ = ["config"]

config = Config(
    "xarray_zarrwrite",
    defaults=[
        {
            # Chunk writes (encode + store put) in flight at once, across all variables
            # and all concurrent region writes of this process.
            "concurrency": 128,
            # Retries of a chunk write that failed with a transient error (connection reset,
            # timeout, 5xx, throttling), with exponential backoff from retry_backoff seconds.
            # Chunk writes are whole-object puts, so retrying is idempotent.
            "retries": 3,
            "retry_backoff": 0.1,
            # Default bound of a BufferedStore's write-behind buffer, in MiB.
            "max_buffer_mb": 256,
            # Target uncompressed chunk size for chunks="auto", in MiB.
            "target_chunk_mb": 8.0,
            # Compressor used by compression="default".
            "default_compression": "blosc:zstd:3:shuffle",
        }
    ],
)
