"""Library-wide defaults, read once through donfig.

Values can be set with environment variables (``XARRAY_ZARRWRITE_CONCURRENCY=32``) or
temporarily with ``xarray_zarrwrite.config.set({"concurrency": 32})`` used as a context manager.
Functions read the values once, at their boundary, into frozen objects; nothing deep in the
pipeline reaches back into the global config.
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
            # Target uncompressed chunk size for chunks="auto", in MiB.
            "target_chunk_mb": 8.0,
            # Compressor used by compression="default".
            "default_compression": "blosc:zstd:3:shuffle",
        }
    ],
)
