"""Which encodings cannot take a write of part of a chunk without changing other values."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from xarray_zarrwrite.codecs.bitpack import CODEC_NAME, BitpackCodec
from xarray_zarrwrite.codecs.bitpack_v2 import Bitpack

__all__ = ["requantises_on_partial_write"]

_KEYS = ("serializer", "filters", "compressors", "compressor", "codecs")


def requantises_on_partial_write(codecs: Any) -> bool:
    """True when writing part of a chunk would re-quantise the values already in it.

    Bitpack chunks (``bits=`` or ``max_error=``, Zarr v3 :class:`BitpackCodec` or v2
    :class:`Bitpack`) are quantised per chunk from the values they hold: a partial write reads
    the lossy values back, mixes in the new ones and quantises the whole chunk again, so the
    values already there drift by up to another quantum each time (``max_error`` no longer
    holds). Region writes into such arrays must cover whole chunks.

    ``codecs`` may be an encoding mapping (``serializer``/``filters``/``compressors``/
    ``compressor``/``codecs`` entries), a codec, its JSON configuration (``{"name": ...}`` or
    ``{"id": ...}``), a list of any of these, or a :class:`zarr.Array` (its metadata is read).
    """
    if isinstance(codecs, BitpackCodec | Bitpack):
        return True
    if isinstance(codecs, Mapping):
        if codecs.get("name") == CODEC_NAME or codecs.get("id") == CODEC_NAME:
            return True
        return any(requantises_on_partial_write(codecs[k]) for k in _KEYS if k in codecs)
    if isinstance(codecs, list | tuple):
        return any(requantises_on_partial_write(c) for c in codecs)
    metadata = getattr(codecs, "metadata", None)
    if metadata is not None and not isinstance(codecs, str):
        found = [getattr(metadata, k, None) for k in ("codecs", "filters", "compressor")]
        return any(requantises_on_partial_write(c) for c in found if c is not None)
    return False
