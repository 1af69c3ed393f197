"""``compression=`` specifications turned into zarr codec objects."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final, Literal

import numcodecs
from zarr.abc.codec import BytesBytesCodec
from zarr.codecs import BloscCodec, GzipCodec, ZstdCodec

from .config import config
from .errors import CompressionError

__all__ = ["parse_compression"]

_NAMES: Final = ("blosc", "zstd", "gzip")
# typed as tuples of literals so that ``x in _BLOSC_CNAMES`` narrows a ``str`` for BloscCodec
_BLOSC_CNAMES: Final[tuple[Literal["zstd", "lz4", "lz4hc", "blosclz", "zlib"], ...]] = (
    "zstd",
    "lz4",
    "lz4hc",
    "blosclz",
    "zlib",
)
_SHUFFLES: Final[tuple[Literal["shuffle", "bitshuffle", "noshuffle"], ...]] = (
    "shuffle",
    "bitshuffle",
    "noshuffle",
)
_HELP = (
    "use None, 'default', a string such as 'blosc:zstd:3', 'blosc:lz4:5:bitshuffle', "
    "'zstd:3' or 'gzip:5', or zarr codec objects"
)


def parse_compression(spec: Any, zarr_format: int) -> tuple[Any, ...]:
    """Return the compressors for ``spec`` as a tuple of codec objects (maybe empty).

    Zarr format 3 gets :mod:`zarr.codecs` bytes-to-bytes codecs, format 2 gets
    :mod:`numcodecs` codecs, so the requested compressor really lands in the array metadata.

    Raises
    ------
    CompressionError
        The string is malformed, names an unknown codec, or an object is not a codec.
    """
    if spec is None:
        return ()
    if isinstance(spec, str):
        if spec == "default":
            spec = config.get("default_compression")
        return (_from_string(spec, zarr_format),)
    items = spec if isinstance(spec, Sequence) else (spec,)
    out = []
    for item in items:
        if isinstance(item, str):
            out.append(_from_string(item, zarr_format))
        elif (zarr_format == 3 and isinstance(item, BytesBytesCodec | numcodecs.abc.Codec)) or (
            zarr_format == 2 and isinstance(item, numcodecs.abc.Codec)
        ):
            out.append(item)
        else:
            want = "zarr.codecs bytes-to-bytes codecs" if zarr_format == 3 else "numcodecs codecs"
            raise CompressionError(
                f"compression for zarr_format={zarr_format} takes {want}; got {item!r}; {_HELP}"
            )
    return tuple(out)


def _from_string(spec: str, zarr_format: int) -> Any:
    parts = spec.lower().split(":")
    name, args = parts[0], parts[1:]
    if name not in _NAMES:
        raise CompressionError(f"unknown compressor {name!r} in {spec!r}; {_HELP}")
    try:
        if name == "blosc":
            cname = args[0] if args else "zstd"
            level = int(args[1]) if len(args) > 1 else 3
            shuffle = args[2] if len(args) > 2 else "shuffle"
            if cname not in _BLOSC_CNAMES or shuffle not in _SHUFFLES or len(args) > 3:
                raise ValueError
            _check_level(level, 0, 9)
            if zarr_format == 3:
                return BloscCodec(cname=cname, clevel=level, shuffle=shuffle)
            code = {"noshuffle": 0, "shuffle": 1, "bitshuffle": 2}[shuffle]
            return numcodecs.Blosc(cname=cname, clevel=level, shuffle=code)
        if len(args) > 1:
            raise ValueError
        if name == "zstd":
            level = int(args[0]) if args else 3
            _check_level(level, -131072, 22)
            return ZstdCodec(level=level) if zarr_format == 3 else numcodecs.Zstd(level=level)
        level = int(args[0]) if args else 5
        _check_level(level, 0, 9)
        return GzipCodec(level=level) if zarr_format == 3 else numcodecs.GZip(level=level)
    except (ValueError, IndexError) as e:
        raise CompressionError(
            f"cannot parse compression {spec!r}: blosc takes 'blosc:CNAME:LEVEL[:SHUFFLE]' with "
            f"CNAME in {list(_BLOSC_CNAMES)} and SHUFFLE in {list(_SHUFFLES)}; zstd and gzip take "
            f"'NAME:LEVEL'"
        ) from e


def _check_level(level: int, lo: int, hi: int) -> None:
    if not lo <= level <= hi:
        raise ValueError(f"level {level} outside [{lo}, {hi}]")
