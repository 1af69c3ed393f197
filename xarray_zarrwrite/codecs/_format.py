"""The bitpack chunk format: options, header constants, header parsing and checks.

Part of the bitpack kernels (:mod:`~xarray_zarrwrite.codecs._kernels` assembles them).

Chunk layout
------------
An encoded chunk is a 40-byte little-endian header followed by the payload::

    offset size field
         0    4 magic      b"XZBP"
         4    1 version    1
         5    1 flags      bit0 NaN present, bit1 +inf present, bit2 -inf present,
                           bit3 max_error mode (informational), bit4 big-endian output,
                           bits 5-7 zero
         6    1 nbits      code width, 0..32
         7    1 dtype      1 float16, 2 float32, 3 float64
         8    1 layout     0 dense, 1 delta
         9    1 width      delta layout: bytes per residual (0..4); dense layout: 0
        10    2 reserved   zero
        12    4 anchor     delta layout: code preceding the first value; dense layout: 0
        16    8 count      number of values (u64)
        24    8 reference  float64, value of code 0
        32    8 scale      float64, quantisation step (0 for constant chunks)
        40    . payload    dense: ceil(count * nbits / 8) bytes of packed codes;
                           delta: ``width`` byte planes of ``count`` bytes each
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

from xarray_zarrwrite.codecs._bits import _as_u8, _packed_nbytes
from xarray_zarrwrite.errors import CodecError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike, DTypeLike

    from xarray_zarrwrite.codecs._quant import QuantPlan

__all__ = [
    "HEADER_SIZE",
    "INFINITIES",
    "LAYOUTS",
    "MAGIC",
    "MAX_UNSHAPED_COUNT",
    "VERSION",
    "BitpackHeader",
    "check_expected",
    "pack_header",
    "parse_header",
    "parse_options",
    "read_header",
]

Infinities = Literal["preserve", "reject"]
Layout = Literal["dense", "delta"]
INFINITIES: Final = ("preserve", "reject")
LAYOUTS: Final = ("dense", "delta")

MAGIC: Final = b"XZBP"
VERSION: Final = 1
_HEADER: Final = struct.Struct("<4sBBBBBBHIQdd")
HEADER_SIZE: Final = _HEADER.size  # 40

FLAG_NAN: Final = 0x01
FLAG_POSINF: Final = 0x02
FLAG_NEGINF: Final = 0x04
FLAG_MAX_ERROR: Final = 0x08
FLAG_BIG_ENDIAN: Final = 0x10
_KNOWN_FLAGS: Final = 0x1F

LAYOUT_CODES: Final = {"dense": 0, "delta": 1}
_DTYPE_CODES: Final[dict[np.dtype, int]] = {
    np.dtype("float16"): 1,
    np.dtype("float32"): 2,
    np.dtype("float64"): 3,
}
_CODE_DTYPES: Final[dict[int, np.dtype]] = {v: k for k, v in _DTYPE_CODES.items()}

#: Largest ``count`` accepted when a payload that costs 0 bytes per value (constant or all-NaN
#: chunk) is decoded without an expected shape (the numcodecs path): guards against a corrupted
#: header asking for an absurd allocation.
MAX_UNSHAPED_COUNT: Final = 1 << 27


# --------------------------------------------------------------------------------------------
# options
# --------------------------------------------------------------------------------------------


def parse_options(
    bits: object = None,
    max_error: object = None,
    infinities: object = "preserve",
    layout: object = "dense",
) -> tuple[int | None, float | None, Infinities, Layout]:
    """Validate and normalise the codec options.

    Parameters
    ----------
    bits : int or None
        Fixed code width, 1 to 32.
    max_error : float or None
        Maximum absolute error, finite and > 0. Exactly one of ``bits`` and ``max_error``.
    infinities : {"preserve", "reject"}
        What to do with +-inf.
    layout : {"dense", "delta"}
        Payload layout.

    Returns
    -------
    tuple
        ``(bits, max_error, infinities, layout)``.

    Raises
    ------
    CodecError
        If an option is invalid.
    """
    if (bits is None) == (max_error is None):
        raise CodecError(
            f"give exactly one of bits= and max_error=; got bits={bits!r}, max_error={max_error!r}"
        )
    if bits is not None:
        if isinstance(bits, bool) or not isinstance(bits, (int, np.integer)):
            raise CodecError(f"bits must be an integer from 1 to 32; got {bits!r}")
        bits = int(bits)
        if not 1 <= bits <= 32:
            raise CodecError(f"bits must be from 1 to 32; got {bits}")
    if max_error is not None:
        if isinstance(max_error, bool) or not isinstance(
            max_error, (int, float, np.integer, np.floating)
        ):
            raise CodecError(f"max_error must be a positive finite number; got {max_error!r}")
        max_error = float(max_error)
        if not (math.isfinite(max_error) and max_error > 0):
            raise CodecError(f"max_error must be a positive finite number; got {max_error!r}")
    if infinities not in INFINITIES:
        raise CodecError(f"infinities must be one of {list(INFINITIES)}; got {infinities!r}")
    if layout not in LAYOUTS:
        raise CodecError(f"layout must be one of {list(LAYOUTS)}; got {layout!r}")
    return bits, max_error, infinities, layout


# --------------------------------------------------------------------------------------------
# header
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class BitpackHeader:
    """Decoded, validated header of an encoded chunk (see the module docs for the layout).

    Attributes
    ----------
    flags, nbits, layout, width, anchor, count : int
        Raw header fields (``layout`` as its name).
    dtype : numpy.dtype
        Native float dtype of the decoded values.
    reference, scale : float
        Decoding is ``code * scale + reference``.
    """

    flags: int
    nbits: int
    dtype: np.dtype
    layout: Layout
    width: int
    anchor: int
    count: int
    reference: float
    scale: float

    @property
    def specials(self) -> tuple[tuple[int, float], ...]:
        """``(code, value)`` for each of NaN, +inf, -inf present in the chunk."""
        return _special_codes(self.flags, self.nbits)

    @property
    def payload_nbytes(self) -> int:
        """Length of the payload that must follow the header."""
        if self.layout == "dense":
            return _packed_nbytes(self.count, self.nbits)
        return self.count * self.width

    @property
    def output_dtype(self) -> np.dtype:
        """Dtype of the decoded array, with the byte order recorded at encode time."""
        return self.dtype.newbyteorder(">" if self.flags & FLAG_BIG_ENDIAN else "<")


def _special_codes(flags: int, nbits: int) -> tuple[tuple[int, float], ...]:
    top = (1 << nbits) - 1
    out: list[tuple[int, float]] = []
    for flag, value in ((FLAG_NAN, math.nan), (FLAG_POSINF, math.inf), (FLAG_NEGINF, -math.inf)):
        if flags & flag:
            out.append((top - len(out), value))
    return tuple(out)


def _n_specials(flags: int) -> int:
    return (flags & (FLAG_NAN | FLAG_POSINF | FLAG_NEGINF)).bit_count()


def read_header(payload: ArrayLike | bytes) -> BitpackHeader:
    """Parse and validate the header of an encoded chunk against the payload length.

    Parameters
    ----------
    payload : bytes-like
        A whole encoded chunk.

    Returns
    -------
    BitpackHeader

    Raises
    ------
    CodecError
        If the payload is truncated, has trailing bytes, or a header field is invalid.
    """
    b = _as_u8(payload)
    return parse_header(b[:HEADER_SIZE].tobytes(), b.size)


def parse_header(head: bytes, total_nbytes: int) -> BitpackHeader:
    """Parse the first bytes ``head`` of an encoded chunk of ``total_nbytes`` bytes.

    Parameters
    ----------
    head : bytes
        At least the header (extra bytes are ignored).
    total_nbytes : int
        Length of the whole encoded chunk, checked against the header.

    Returns
    -------
    BitpackHeader

    Raises
    ------
    CodecError
        If the chunk is truncated, has trailing bytes, or a header field is invalid.
    """
    if total_nbytes < HEADER_SIZE or len(head) < HEADER_SIZE:
        raise CodecError(
            f"bitpack chunk truncated: {total_nbytes} bytes is shorter than the "
            f"{HEADER_SIZE}-byte header"
        )
    (magic, version, flags, nbits, dtype_code, layout_code, width, reserved, anchor, count, ref,
     scale) = _HEADER.unpack(head[:HEADER_SIZE])  # fmt: skip
    if magic != MAGIC:
        raise CodecError(f"not a bitpack chunk: magic {magic!r}, expected {MAGIC!r}")
    if version != VERSION:
        raise CodecError(
            f"bitpack chunk version {version} is not supported (this library reads {VERSION}); "
            "upgrade xarray_zarrwrite"
        )
    if flags & ~_KNOWN_FLAGS or reserved:
        raise CodecError(f"corrupted bitpack header: unknown flags {flags:#04x} / {reserved:#x}")
    if nbits > 32:
        raise CodecError(f"corrupted bitpack header: nbits={nbits} > 32")
    if dtype_code not in _CODE_DTYPES:
        raise CodecError(f"corrupted bitpack header: unknown dtype code {dtype_code}")
    if layout_code not in (0, 1):
        raise CodecError(f"corrupted bitpack header: unknown layout code {layout_code}")
    layout: Layout = "dense" if layout_code == 0 else "delta"
    if (layout == "dense" and (width or anchor)) or width > 4:
        raise CodecError(f"corrupted bitpack header: width={width}, anchor={anchor}")
    if layout == "delta" and nbits < 32 and anchor >> nbits:
        raise CodecError(f"corrupted bitpack header: anchor {anchor} >= 2**{nbits}")
    if _n_specials(flags) > (1 << nbits):
        raise CodecError(
            f"corrupted bitpack header: flags {flags:#04x} need more than {nbits} bits"
        )
    if not (math.isfinite(ref) and math.isfinite(scale) and scale >= 0):
        raise CodecError(f"corrupted bitpack header: reference={ref!r}, scale={scale!r}")
    header = BitpackHeader(
        flags=flags,
        nbits=nbits,
        dtype=_CODE_DTYPES[dtype_code],
        layout=layout,
        width=width,
        anchor=anchor,
        count=count,
        reference=ref,
        scale=scale,
    )
    got = total_nbytes - HEADER_SIZE
    if got != header.payload_nbytes:
        raise CodecError(
            f"bitpack chunk of {count} values ({layout}, nbits={nbits}, width={width}) needs "
            f"{header.payload_nbytes} payload bytes, got {got}: truncated or corrupted"
        )
    return header


def pack_header(plan: QuantPlan, dtype: np.dtype, count: int, layout: Layout, width: int = 0,
            anchor: int = 0) -> bytes:  # fmt: skip
    return _HEADER.pack(
        MAGIC, VERSION, plan.flags, plan.nbits, _DTYPE_CODES[np.dtype(dtype)],
        LAYOUT_CODES[layout], width, 0, anchor, count, plan.reference, plan.scale,
    )  # fmt: skip


def check_expected(
    header: BitpackHeader, dtype: DTypeLike | None, shape: Sequence[int] | int | None
) -> tuple[int, ...] | None:
    """Check a parsed header against the expected dtype and shape before allocating.

    Parameters
    ----------
    header : BitpackHeader
        Parsed header.
    dtype : dtype or None
        Expected dtype (byte order ignored).
    shape : tuple of int, int or None
        Expected shape. Without one, a chunk costing 0 payload bytes per value may claim at
        most :data:`MAX_UNSHAPED_COUNT` values.

    Returns
    -------
    tuple of int or None
        The normalised shape.

    Raises
    ------
    CodecError
        On any mismatch.
    """
    if dtype is not None and np.dtype(dtype).newbyteorder("=") != header.dtype:
        raise CodecError(f"bitpack chunk holds {header.dtype}, but {np.dtype(dtype)} was expected")
    if shape is not None:
        shape = (int(shape),) if isinstance(shape, (int, np.integer)) else tuple(shape)
        if math.prod(shape) != header.count:
            raise CodecError(
                f"bitpack chunk holds {header.count} values, but shape {shape} was expected"
            )
        return shape
    if header.count > MAX_UNSHAPED_COUNT and header.payload_nbytes < header.count:
        raise CodecError(
            f"bitpack chunk claims {header.count} values in {header.payload_nbytes} payload "
            f"bytes without an expected shape (limit {MAX_UNSHAPED_COUNT}): corrupted?"
        )
    return None
