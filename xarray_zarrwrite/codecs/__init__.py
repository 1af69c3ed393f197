"""Zarr codecs shipped with xarray_zarrwrite.

``BitpackCodec`` is the Zarr v3 serializer, ``Bitpack`` its numcodecs twin for Zarr format 2;
both write the same per-chunk bytes (see ``docs/packing.md``). The CuPy kernels
(``encode_chunk_gpu``, ``decode_chunk_gpu``) are imported only on first access, so CuPy is
never needed to import this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from xarray_zarrwrite.codecs._format import read_header as read_header
from xarray_zarrwrite.codecs._kernels import decode_chunk as decode_chunk
from xarray_zarrwrite.codecs._kernels import encode_chunk as encode_chunk
from xarray_zarrwrite.codecs.bitpack import BitpackCodec as BitpackCodec
from xarray_zarrwrite.codecs.bitpack_v2 import Bitpack as Bitpack
from xarray_zarrwrite.codecs.partial import (
    requantises_on_partial_write as requantises_on_partial_write,
)

if TYPE_CHECKING:
    from xarray_zarrwrite.codecs._gpu import decode_chunk_gpu as decode_chunk_gpu
    from xarray_zarrwrite.codecs._gpu import encode_chunk_gpu as encode_chunk_gpu

__all__ = [
    "Bitpack",
    "BitpackCodec",
    "decode_chunk",
    "decode_chunk_gpu",
    "encode_chunk",
    "encode_chunk_gpu",
    "read_header",
    "requantises_on_partial_write",
]

_LAZY = {"encode_chunk_gpu", "decode_chunk_gpu"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        from xarray_zarrwrite.codecs import _gpu

        return getattr(_gpu, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
