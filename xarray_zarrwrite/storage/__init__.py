"""Zarr stores: :class:`BufferedStore`, a write-behind buffer over fsspec or any zarr Store."""

from ._buffered import BufferedStore as BufferedStore
from ._buffered import BufferedStoreStats as BufferedStoreStats
from ._buffered import is_transient_error as is_transient_error

__all__ = ["BufferedStore", "BufferedStoreStats", "is_transient_error"]
