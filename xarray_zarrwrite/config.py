"""Library-wide defaults, read through donfig.

Values can be set with environment variables (read when this module is imported) or
temporarily with ``xarray_zarrwrite.config.set(concurrency=32)`` (or
``config.set({"concurrency": 32})``) used as a context manager. Functions and constructors read
the values when they are called, at their boundary, into frozen objects; nothing deep in the
pipeline reaches back into the global config, and nothing reads it at import.

Every key, its default, its environment variable and its meaning are in :data:`SCHEMA` (the
documentation's configuration page is generated from it).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

from donfig import Config

__all__ = ["ENV_PREFIX", "SCHEMA", "ConfigKey", "config"]

#: Environment variables are ``XARRAY_ZARRWRITE_<KEY>`` (the key in upper case).
ENV_PREFIX: Final = "XARRAY_ZARRWRITE_"


@dataclass(frozen=True)
class ConfigKey:
    """One configuration key.

    Attributes
    ----------
    name
        The key, as given to ``config.get`` and ``config.set``.
    default
        Its value when neither the environment nor ``config.set`` sets it.
    doc
        What it controls, for people (reStructuredText).
    """

    name: str
    default: Any
    doc: str

    @property
    def env(self) -> str:
        """The environment variable that sets the key when the library is imported."""
        return ENV_PREFIX + self.name.upper()


#: Every key of :data:`config`.
SCHEMA: Final[tuple[ConfigKey, ...]] = (
    ConfigKey(
        "concurrency",
        128,
        "Chunk writes (encode + store put) in flight at once, across all variables and all "
        "concurrent region writes of this process; also the default ``concurrency`` of a "
        ":class:`~xarray_zarrwrite.BufferedStore` (writes of one buffer in flight at once).",
    ),
    ConfigKey(
        "retries",
        3,
        "Retries of a store operation that failed with a transient error (connection reset, "
        "timeout, 5xx, throttling): at most ``retries + 1`` attempts per key. Chunk writes are "
        "whole-object puts, so retrying is idempotent. Also ``BufferedStore``'s default.",
    ),
    ConfigKey(
        "retry_backoff",
        0.1,
        "First retry delay in seconds, doubled at each retry (with jitter). Also "
        "``BufferedStore``'s default.",
    ),
    ConfigKey(
        "max_buffer_mb",
        256,
        "Default bound, in MiB, of a ``BufferedStore``'s write-behind buffer.",
    ),
    ConfigKey(
        "target_chunk_mb",
        8.0,
        'Target uncompressed chunk size for ``chunks="auto"``, in MiB.',
    ),
    ConfigKey(
        "default_compression",
        "blosc:zstd:3:shuffle",
        'Compressor used by ``compression="default"``.',
    ),
)

config = Config("xarray_zarrwrite", defaults=[{key.name: key.default for key in SCHEMA}])
