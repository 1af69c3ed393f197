"""Pure NumPy kernels of the bitpack codecs: dense n-bit packing and linear quantisation.

Everything here works on plain NumPy arrays and ``bytes``; the Zarr v3 codec
(:mod:`~xarray_zarrwrite.codecs.bitpack`), the numcodecs twin
(:mod:`~xarray_zarrwrite.codecs.bitpack_v2`) and the CuPy kernels
(:mod:`~xarray_zarrwrite.codecs._gpu`) only adapt these functions.

Bit order
---------
:func:`pack_bits` writes value ``i`` to the bits ``[i * nbits, (i + 1) * nbits)`` of one
little-endian bit stream: bit ``b`` of value ``i`` is stream bit ``k = i * nbits + b``, and
stream bit ``k`` is bit ``k % 8`` (least significant first) of byte ``k // 8``. Equivalently,
the packed bytes are the little-endian encoding of the integer ``sum(code[i] << (i * nbits))``.
The last byte is padded with zero bits; nothing is rounded to whole bytes per value.

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

Quantisation
------------
A finite value ``x`` gets the code ``q = trunc((x - reference) * (1 / scale) + 0.5)``
(IEEE float64, each operation rounded separately; the division ``(x - reference) / scale``
replaces the product when ``1 / scale`` overflows) and decodes to
``float64(q) * scale + reference``, rounded once to the array's dtype (float16 through
float32). ``reference`` is the chunk's finite minimum, so codes are never negative, and codes
never exceed the code of the finite maximum, so nothing wraps around. NaN, +inf and -inf,
when present in a chunk, take the top codes ``2**nbits - 1``, ``2**nbits - 2``, ... in that
order (only the ones present are reserved).
"""

from __future__ import annotations

import math
import struct
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal

import numpy as np

from xarray_zarrwrite.errors import CodecError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import ArrayLike, DTypeLike, NDArray

__all__ = [
    "BLOCK_SIZE",
    "HEADER_SIZE",
    "INFINITIES",
    "LAYOUTS",
    "MAGIC",
    "MAX_UNSHAPED_COUNT",
    "VERSION",
    "BitpackHeader",
    "decode_chunk",
    "encode_chunk",
    "encode_chunk_u8",
    "pack_bits",
    "parse_options",
    "plan_quantisation",
    "read_header",
    "unpack_bits",
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
_DTYPE_CODES: Final = {np.dtype("float16"): 1, np.dtype("float32"): 2, np.dtype("float64"): 3}
_CODE_DTYPES: Final = {v: k for k, v in _DTYPE_CODES.items()}

#: Values processed per step of the block loops (multiple of 32; ~2 MiB float64 temporaries).
BLOCK_SIZE: Final = 1 << 18
#: Largest ``count`` accepted when a payload that costs 0 bytes per value (constant or all-NaN
#: chunk) is decoded without an expected shape (the numcodecs path): guards against a corrupted
#: header asking for an absurd allocation.
MAX_UNSHAPED_COUNT: Final = 1 << 27

_EPS64: Final = 2.0**-53
_F64_MAX: Final = float(np.finfo(np.float64).max)


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
    return bits, max_error, infinities, layout  # type: ignore[return-value]


# --------------------------------------------------------------------------------------------
# bit packing
# --------------------------------------------------------------------------------------------


def _group(nbits: int) -> tuple[int, int]:
    """Return ``(values, words)`` of the smallest run of values filling whole uint32 words."""
    g = 32 // math.gcd(nbits, 32)
    return g, g * nbits // 32


def _pack_words(codes: NDArray[np.uint32], nbits: int) -> NDArray[np.uint32]:
    """Pack ``codes`` (length a multiple of the group size) into uint32 words."""
    g, w = _group(nbits)
    ng = codes.size // g
    cols = np.ascontiguousarray(codes.reshape(ng, g).T)  # (g, ng): contiguous per slot
    words = np.zeros((w, ng), dtype=np.uint32)
    tmp = np.empty(ng, dtype=np.uint32)
    for j in range(g):
        bit = j * nbits
        m, s = bit >> 5, bit & 31
        if s == 0:
            np.bitwise_or(words[m], cols[j], out=words[m])
        else:
            np.left_shift(cols[j], s, out=tmp)
            np.bitwise_or(words[m], tmp, out=words[m])
        if s + nbits > 32:
            np.right_shift(cols[j], 32 - s, out=tmp)
            np.bitwise_or(words[m + 1], tmp, out=words[m + 1])
    return np.ascontiguousarray(words.T).reshape(-1)


def _unpack_words(words: NDArray[np.uint32], nbits: int, out: NDArray[np.uint32]) -> None:
    """Inverse of :func:`_pack_words`; ``out.size`` is a multiple of the group size."""
    g, w = _group(nbits)
    ng = out.size // g
    rows = np.ascontiguousarray(words.reshape(ng, w).T)  # (w, ng)
    cols = np.empty((g, ng), dtype=np.uint32)
    tmp = np.empty(ng, dtype=np.uint32)
    mask = np.uint32((1 << nbits) - 1)
    for j in range(g):
        bit = j * nbits
        m, s = bit >> 5, bit & 31
        c = cols[j]
        np.right_shift(rows[m], s, out=c)
        if s + nbits > 32:
            np.left_shift(rows[m + 1], 32 - s, out=tmp)
            np.bitwise_or(c, tmp, out=c)
        if nbits < 32:
            np.bitwise_and(c, mask, out=c)
    out.reshape(ng, g)[...] = cols.T


def _packed_nbytes(count: int, nbits: int) -> int:
    return (count * nbits + 7) // 8


def _pack_into(codes: NDArray[np.unsignedinteger], nbits: int, out: NDArray[np.uint8]) -> None:
    """Pack ``codes`` into ``out`` (exactly ``ceil(codes.size * nbits / 8)`` bytes)."""
    n = codes.size
    if nbits == 0 or n == 0:
        return
    if nbits == 8:
        np.copyto(out, codes, casting="unsafe")
    elif nbits == 16:
        np.copyto(out.view("<u2"), codes, casting="unsafe")
    elif nbits == 32:
        np.copyto(out.view("<u4"), codes, casting="unsafe")
    elif nbits == 24:
        c = np.asarray(codes, dtype="<u4")
        out.reshape(n, 3)[...] = c.view(np.uint8).reshape(n, 4)[:, :3]
    else:
        g, _ = _group(nbits)
        full = n - n % g
        if full:
            nb = full * nbits // 8
            out[:nb] = _pack_words(np.asarray(codes[:full], dtype=np.uint32), nbits).view(np.uint8)
        if full < n:
            tail = np.zeros(g, dtype=np.uint32)
            tail[: n - full] = codes[full:]
            nb = full * nbits // 8
            out[nb:] = _pack_words(tail, nbits).view(np.uint8)[: out.size - nb]


def _unpack_block(
    buf: NDArray[np.uint8], nbits: int, count: int
) -> NDArray[np.uint8] | NDArray[np.uint16] | NDArray[np.uint32]:
    """Unpack ``count`` codes from exactly ``ceil(count * nbits / 8)`` bytes (fast paths kept
    in their narrow dtype; may return a read-only view of ``buf``)."""
    if nbits == 0:
        return np.zeros(count, dtype=np.uint8)
    if nbits == 8:
        return buf
    if nbits == 16:
        return buf.view("<u2")
    if nbits == 32:
        return buf.view("<u4")
    if nbits == 24:
        out32 = np.zeros((count, 4), dtype=np.uint8)
        out32[:, :3] = buf.reshape(count, 3)
        return out32.view("<u4").reshape(count)
    g, w = _group(nbits)
    ngroups = -(-count // g)
    words = np.zeros(ngroups * w * 4, dtype=np.uint8)
    words[: buf.size] = buf
    out = np.empty(ngroups * g, dtype=np.uint32)
    _unpack_words(words.view("<u4"), nbits, out)
    return out[:count]


def pack_bits(codes: ArrayLike, nbits: int) -> NDArray[np.uint8]:
    """Pack unsigned integer codes densely, ``nbits`` bits each.

    Parameters
    ----------
    codes : array_like of unsigned int
        Codes, each ``< 2**nbits``; flattened in C order. Higher bits are not checked: they
        are discarded for ``nbits`` not in (8, 16, 24, 32) and corrupt neighbours otherwise.
    nbits : int
        Width, 0 to 32.

    Returns
    -------
    numpy.ndarray of uint8
        ``ceil(codes.size * nbits / 8)`` bytes, little-endian bit order (see module docs).

    Raises
    ------
    CodecError
        If ``nbits`` is out of range or ``codes`` are not unsigned integers.

    Examples
    --------
    >>> pack_bits([1, 2, 3], 4).tolist()
    [33, 3]
    >>> unpack_bits(pack_bits([1, 2, 3], 4), 4, 3).tolist()
    [1, 2, 3]
    """
    c = np.asarray(codes).reshape(-1)
    if c.dtype.kind != "u":
        if c.dtype.kind == "i" and (c.size == 0 or c.min() >= 0):
            c = c.astype(np.uint64)
        else:
            raise CodecError(f"codes must be unsigned integers; got dtype {c.dtype}")
    if not (isinstance(nbits, (int, np.integer)) and 0 <= nbits <= 32):
        raise CodecError(f"nbits must be from 0 to 32; got {nbits!r}")
    nbits = int(nbits)
    if nbits < 32 and c.dtype.itemsize > 4:
        c = c & np.uint64((1 << nbits) - 1)
    out = np.empty(_packed_nbytes(c.size, nbits), dtype=np.uint8)
    for s in range(0, c.size, BLOCK_SIZE):
        block = c[s : s + BLOCK_SIZE]
        b0 = s * nbits // 8
        if nbits not in (8, 16, 24, 32) and block.dtype != np.uint32:
            block = (block & np.uint64((1 << nbits) - 1)).astype(np.uint32)
        _pack_into(block, nbits, out[b0 : b0 + _packed_nbytes(block.size, nbits)])
    return out


def unpack_bits(buf: ArrayLike | bytes, nbits: int, count: int) -> NDArray[np.uint32]:
    """Unpack ``count`` codes of ``nbits`` bits packed by :func:`pack_bits`.

    Parameters
    ----------
    buf : bytes-like or array_like of uint8
        At least ``ceil(count * nbits / 8)`` bytes; extra bytes are ignored.
    nbits : int
        Width, 0 to 32.
    count : int
        Number of codes.

    Returns
    -------
    numpy.ndarray of uint32

    Raises
    ------
    CodecError
        If ``buf`` is too short or an argument is out of range.
    """
    if not (isinstance(nbits, (int, np.integer)) and 0 <= nbits <= 32):
        raise CodecError(f"nbits must be from 0 to 32; got {nbits!r}")
    if not (isinstance(count, (int, np.integer)) and count >= 0):
        raise CodecError(f"count must be a non-negative integer; got {count!r}")
    nbits, count = int(nbits), int(count)
    b = _as_u8(buf)
    need = _packed_nbytes(count, nbits)
    if b.size < need:
        raise CodecError(
            f"packed buffer too short: {count} codes of {nbits} bits need {need} bytes, "
            f"got {b.size}"
        )
    out = np.empty(count, dtype=np.uint32)
    for s in range(0, count, BLOCK_SIZE):
        n = min(BLOCK_SIZE, count - s)
        b0 = s * nbits // 8
        out[s : s + n] = _unpack_block(b[b0 : b0 + _packed_nbytes(n, nbits)], nbits, n)
    return out


def _as_u8(buf: object) -> NDArray[np.uint8]:
    if isinstance(buf, np.ndarray):
        a = buf.reshape(-1) if buf.flags.c_contiguous else np.ascontiguousarray(buf).reshape(-1)
        return a.view(np.uint8)
    try:
        return np.frombuffer(memoryview(buf).cast("B"), dtype=np.uint8)  # type: ignore[arg-type]
    except TypeError as e:
        raise CodecError(f"expected a bytes-like payload; got {type(buf).__name__}") from e


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
    out = []
    for flag, value in ((FLAG_NAN, math.nan), (FLAG_POSINF, math.inf), (FLAG_NEGINF, -math.inf)):
        if flags & flag:
            out.append((top - len(out), value))
    return tuple(out)


def _n_specials(flags: int) -> int:
    return bin(flags & (FLAG_NAN | FLAG_POSINF | FLAG_NEGINF)).count("1")


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
    if b.size < HEADER_SIZE:
        raise CodecError(
            f"bitpack chunk truncated: {b.size} bytes is shorter than the {HEADER_SIZE}-byte header"
        )
    (magic, version, flags, nbits, dtype_code, layout_code, width, reserved, anchor, count, ref,
     scale) = _HEADER.unpack(b[:HEADER_SIZE].tobytes())  # fmt: skip
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
    if not math.isfinite(ref + ((1 << nbits) - 1) * scale):
        raise CodecError("corrupted bitpack header: reference + scale * max code overflows")
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
    got = b.size - HEADER_SIZE
    if got != header.payload_nbytes:
        raise CodecError(
            f"bitpack chunk of {count} values ({layout}, nbits={nbits}, width={width}) needs "
            f"{header.payload_nbytes} payload bytes, got {got}: truncated or corrupted"
        )
    return header


# --------------------------------------------------------------------------------------------
# quantisation plan
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class QuantPlan:
    """Parameters of one chunk's quantisation (shared by the CPU and GPU encoders)."""

    flags: int
    nbits: int
    reference: float
    scale: float

    @property
    def use_division(self) -> bool:
        """Whether ``1 / scale`` overflows, so codes use ``/ scale`` instead of ``* inv``."""
        return self.scale > 0 and not math.isfinite(1.0 / self.scale)

    @property
    def inverse(self) -> float:
        return 1.0 / self.scale if self.scale > 0 and not self.use_division else 0.0

    @property
    def specials(self) -> tuple[tuple[int, float], ...]:
        return _special_codes(self.flags, self.nbits)

    def code_of(self, value: float) -> int:
        """Code of one finite value, with exactly the operations of the array kernels."""
        if self.scale == 0:
            return 0
        d = value - self.reference
        t = (d / self.scale if self.use_division else d * self.inverse) + 0.5
        return int(t)


def _ceil_log2(n: int) -> int:
    return (n - 1).bit_length() if n > 1 else 0


def plan_quantisation(
    vmin: float,
    vmax: float,
    *,
    flags: int,
    dtype: DTypeLike,
    bits: int | None,
    max_error: float | None,
    shrink: int = 0,
) -> QuantPlan:
    """Choose width, reference and scale of a chunk from its finite range.

    Parameters
    ----------
    vmin, vmax : float
        Finite minimum and maximum (NaN when the chunk has no finite value).
    flags : int
        Header flags (which specials are present, mode, byte order).
    dtype : dtype
        The chunk's float dtype.
    bits, max_error : int or float or None
        Exactly one of them (see :func:`parse_options`).
    shrink : int
        ``max_error`` mode: halve the step this many times (used after a failed verification).

    Returns
    -------
    QuantPlan

    Raises
    ------
    CodecError
        If the finite range overflows float64 or ``max_error`` needs more than 32 bits.
    """
    nres = _n_specials(flags)
    if math.isnan(vmin):  # no finite value (or empty chunk)
        return QuantPlan(flags, _ceil_log2(nres), 0.0, 0.0)
    span = vmax - vmin
    if not math.isfinite(span):
        raise CodecError(
            f"the finite range [{vmin!r}, {vmax!r}] of the chunk overflows float64; bitpack "
            "cannot quantise it (use lossless compression for such data)"
        )
    if span == 0:
        return QuantPlan(flags, _ceil_log2(1 + nres), vmin, 0.0)
    if bits is not None:
        nbits = bits if (1 << bits) - nres >= 2 else _ceil_log2(2 + nres)
        top = (1 << nbits) - nres - 1  # highest finite code
        scale = max(span / top, 5e-324)
        plan = QuantPlan(flags, nbits, vmin, scale)
        while plan.code_of(vmax) > top:  # float rounding: never spill into reserved codes
            plan = QuantPlan(flags, nbits, vmin, math.nextafter(plan.scale, math.inf))
        return plan
    assert max_error is not None
    dt = np.dtype(dtype)
    finfo = np.finfo(dt)
    maxabs = max(abs(vmin), abs(vmax))
    with np.errstate(all="ignore"):
        ulp = float(np.spacing(dt.type(min(maxabs + max_error, float(finfo.max)))))
    if not math.isfinite(ulp):
        ulp = float(np.spacing(dt.type(finfo.max)))  # pragma: no cover
    # The decoded value is rounded once to dtype: either the error grows by at most half an
    # ulp, or (x being representable) it at most doubles. Keep a float64 arithmetic margin.
    margin = 8 * _EPS64 * (span + maxabs + max_error)
    if dt == np.float16:
        margin += 2.0**-24 * (maxabs + max_error)  # decoding rounds through float32
    half = max(max_error - ulp / 2, max_error / 2) - margin
    if half <= 0:
        raise CodecError(
            f"max_error={max_error!r} is below the floating-point resolution of values near "
            f"{maxabs!r}; use a larger max_error or lossless compression"
        )
    scale = 2 * half / (1 << shrink)
    plan = QuantPlan(flags | FLAG_MAX_ERROR, 0, vmin, scale)
    nbits = _ceil_log2(plan.code_of(vmax) + 1 + nres)
    if nbits > 32:
        raise CodecError(
            f"max_error={max_error!r} is too small for a chunk spanning [{vmin!r}, {vmax!r}]: "
            f"it needs {nbits} bits per value (at most 32); use a larger max_error or smaller "
            "chunks"
        )
    return QuantPlan(flags | FLAG_MAX_ERROR, nbits, vmin, scale)


# --------------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------------


def _scan(x: NDArray[np.floating], infinities: Infinities) -> tuple[float, float, int]:
    """Finite min/max and special-value flags of a flat float array."""
    if x.size == 0:
        return math.nan, math.nan, 0
    vmin, vmax = float(x.min()), float(x.max())
    if math.isfinite(vmin) and math.isfinite(vmax):
        return vmin, vmax, 0
    flags = 0
    if np.isnan(x).any():
        flags |= FLAG_NAN
    if np.isposinf(x).any():
        flags |= FLAG_POSINF
    if np.isneginf(x).any():
        flags |= FLAG_NEGINF
    if infinities == "reject" and flags & (FLAG_POSINF | FLAG_NEGINF):
        raise CodecError(
            "chunk contains infinite values and the codec was built with infinities='reject'; "
            "use infinities='preserve' or replace them first"
        )
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return math.nan, math.nan, flags
    return float(finite.min()), float(finite.max()), flags


class _Scratch:
    """Reusable block temporaries."""

    def __init__(self, n: int) -> None:
        self.t = np.empty(n, dtype=np.float64)
        self.u = np.empty(n, dtype=np.float64)
        self.codes = np.empty(n, dtype=np.uint32)


def _quantise_block(
    xb: NDArray[np.floating], plan: QuantPlan, t: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Return the (float64, integral) codes of one block, specials included."""
    t = t[: xb.size]
    if plan.scale == 0:
        t[...] = 0.0
    else:
        np.subtract(xb, plan.reference, out=t, dtype=np.float64)
        if plan.use_division:
            np.divide(t, plan.scale, out=t)
        else:
            np.multiply(t, plan.inverse, out=t)
        np.add(t, 0.5, out=t)
    specials = plan.specials
    if specials:
        for code, value in specials:
            mask = np.isnan(xb) if math.isnan(value) else (xb == value)
            np.copyto(t, float(code), where=mask)
    return t


def _dequantise_block(
    codes: NDArray[np.unsignedinteger],
    reference: float,
    scale: float,
    specials: Sequence[tuple[int, float]],
    out: NDArray[np.floating],
    t: NDArray[np.float64],
) -> None:
    """``out[...] = codes * scale + reference`` rounded once to ``out.dtype``; specials set."""
    t = t[: codes.size]
    np.multiply(codes, scale, out=t)
    np.add(t, reference, out=t)
    fmax = float(np.finfo(out.dtype).max)
    hi = reference + ((1 << 32) - 1) * scale
    if hi > fmax or reference < -fmax:  # values just beyond the dtype's range: clamp, no inf
        np.clip(t, -fmax, fmax, out=t)
    if out.dtype == np.float16:
        np.copyto(out, t.astype(np.float32), casting="same_kind")
    else:
        np.copyto(out, t, casting="same_kind")
    for code, value in specials:
        np.copyto(out, value, where=codes == code)


def _verify_block(
    xb: NDArray[np.floating],
    codes: NDArray[np.unsignedinteger],
    plan: QuantPlan,
    max_error: float,
    scratch: _Scratch,
) -> bool:
    """Whether every finite value of the block decodes within ``max_error``."""
    y = np.empty(xb.size, dtype=xb.dtype)
    _dequantise_block(codes, plan.reference, plan.scale, (), y, scratch.u)
    d = scratch.u[: xb.size]
    np.subtract(y, xb, out=d, dtype=np.float64)
    np.abs(d, out=d)
    if plan.flags & (FLAG_NAN | FLAG_POSINF | FLAG_NEGINF):
        np.copyto(d, 0.0, where=~np.isfinite(xb))
    return bool(d.max() <= max_error) if d.size else True


def _flatten(arr: ArrayLike) -> tuple[NDArray[np.floating], int]:
    a = np.asarray(arr)
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise CodecError(f"bitpack encodes float16/float32/float64 data; got dtype {a.dtype}")
    flags = 0
    if not a.dtype.isnative or (a.dtype.byteorder == "=" and sys.byteorder == "big"):
        flags |= FLAG_BIG_ENDIAN if a.dtype.byteorder == ">" or sys.byteorder == "big" else 0
        a = a.astype(a.dtype.newbyteorder("="))
    return np.ascontiguousarray(a).reshape(-1), flags


def encode_chunk_u8(
    arr: ArrayLike,
    *,
    bits: int | None = None,
    max_error: float | None = None,
    infinities: Infinities = "preserve",
    layout: Layout = "dense",
) -> NDArray[np.uint8]:
    """Encode a float array; like :func:`encode_chunk` but returns a uint8 array (no copy)."""
    bits, max_error, infinities, layout = parse_options(bits, max_error, infinities, layout)
    x, flags = _flatten(arr)
    vmin, vmax, special_flags = _scan(x, infinities)
    flags |= special_flags
    for shrink in range(4):
        plan = plan_quantisation(
            vmin, vmax, flags=flags, dtype=x.dtype, bits=bits, max_error=max_error, shrink=shrink
        )
        out = (_encode_dense if layout == "dense" else _encode_delta)(x, plan, max_error)
        if out is not None:
            return out
    raise CodecError(  # pragma: no cover - the margins of plan_quantisation make this unreachable
        f"could not meet max_error={max_error!r}; please report this as a bug"
    )


def _header(plan: QuantPlan, dtype: np.dtype, count: int, layout: Layout, width: int = 0,
            anchor: int = 0) -> bytes:  # fmt: skip
    return _HEADER.pack(
        MAGIC, VERSION, plan.flags, plan.nbits, _DTYPE_CODES[np.dtype(dtype)],
        LAYOUT_CODES[layout], width, 0, anchor, count, plan.reference, plan.scale,
    )  # fmt: skip


def _encode_dense(
    x: NDArray[np.floating], plan: QuantPlan, max_error: float | None
) -> NDArray[np.uint8] | None:
    n, nbits = x.size, plan.nbits
    out = np.empty(HEADER_SIZE + _packed_nbytes(n, nbits), dtype=np.uint8)
    out[:HEADER_SIZE] = np.frombuffer(_header(plan, x.dtype, n, "dense"), dtype=np.uint8)
    if nbits == 0:
        return out
    payload = out[HEADER_SIZE:]
    scratch = _Scratch(min(n, BLOCK_SIZE))
    direct = {8: payload, 16: payload.view("<u2"), 32: payload.view("<u4")}.get(nbits)
    for s in range(0, n, BLOCK_SIZE):
        xb = x[s : s + BLOCK_SIZE]
        t = _quantise_block(xb, plan, scratch.t)
        if direct is not None:
            codes = direct[s : s + xb.size]
            np.copyto(codes, t, casting="unsafe")
        else:
            codes = scratch.codes[: xb.size]
            np.copyto(codes, t, casting="unsafe")
            b0 = s * nbits // 8
            _pack_into(codes, nbits, payload[b0 : b0 + _packed_nbytes(xb.size, nbits)])
        if max_error is not None and not _verify_block(xb, codes, plan, max_error, scratch):
            return None
    return out


def _encode_delta(
    x: NDArray[np.floating], plan: QuantPlan, max_error: float | None
) -> NDArray[np.uint8] | None:
    n = x.size
    scratch = _Scratch(min(n, BLOCK_SIZE))
    q = np.empty(n, dtype=np.uint32)
    for s in range(0, n, BLOCK_SIZE):
        xb = x[s : s + BLOCK_SIZE]
        codes = q[s : s + xb.size]
        np.copyto(codes, _quantise_block(xb, plan, scratch.t), casting="unsafe")
        if max_error is not None and not _verify_block(xb, codes, plan, max_error, scratch):
            return None
    anchor = int(q[0]) if n else 0
    z = _zigzag_delta(q, anchor)
    zmax = int(z.max()) if n else 0
    width = (zmax.bit_length() + 7) // 8
    out = np.empty(HEADER_SIZE + n * width, dtype=np.uint8)
    out[:HEADER_SIZE] = np.frombuffer(
        _header(plan, x.dtype, n, "delta", width, anchor), dtype=np.uint8
    )
    planes = out[HEADER_SIZE:].reshape(width, n)
    for k in range(width):
        np.copyto(planes[k], z >> np.uint32(8 * k) if k else z, casting="unsafe")
    return out


def _zigzag_delta(q: NDArray[np.uint32], anchor: int) -> NDArray[np.uint32]:
    """``zigzag(q[i] - q[i-1])`` in wrapping 32-bit arithmetic, ``q[-1] = anchor``."""
    d = np.empty_like(q)
    if q.size:
        d[0] = np.uint32((int(q[0]) - anchor) & 0xFFFFFFFF)
        np.subtract(q[1:], q[:-1], out=d[1:])
    sign = d.view(np.int32) >> 31  # 0 or -1
    np.left_shift(d, 1, out=d)
    np.bitwise_xor(d, sign.view(np.uint32), out=d)
    return d


def _unzigzag_cumsum(z: NDArray[np.uint32], carry: int) -> NDArray[np.uint32]:
    d = (z >> np.uint32(1)) ^ np.negative(z & np.uint32(1))
    q = np.cumsum(d, dtype=np.uint32)
    q += np.uint32(carry)
    return q


def encode_chunk(
    arr: ArrayLike,
    *,
    bits: int | None = None,
    max_error: float | None = None,
    infinities: Infinities = "preserve",
    layout: Layout = "dense",
) -> bytes:
    """Quantise and pack a float array into one self-describing chunk.

    Parameters
    ----------
    arr : array_like of float16, float32 or float64
        The chunk, flattened in C order.
    bits : int, optional
        Fixed code width 1..32: the chunk's finite range is split into ``2**bits - 1 - nres``
        steps (``nres`` = number of kinds of NaN/+inf/-inf present).
    max_error : float, optional
        Maximum absolute error of every finite value; the width is chosen per chunk.
    infinities : {"preserve", "reject"}
        Keep +-inf exactly (reserved codes) or raise :class:`CodecError`.
    layout : {"dense", "delta"}
        ``"dense"`` packs the codes at ``nbits`` bits each. ``"delta"`` stores the zigzag
        differences of consecutive codes as byte planes: larger alone, but much smaller after
        a byte compressor (zstd) on smooth fields.

    Returns
    -------
    bytes
        Header and payload (see the module docs).

    Raises
    ------
    CodecError
        Invalid options, non-float data, infinities with ``infinities="reject"``, a range that
        overflows float64 or a ``max_error`` that needs more than 32 bits.

    Examples
    --------
    >>> import numpy as np
    >>> x = np.array([280.0, 280.5, np.nan, 281.0], dtype="float32")
    >>> blob = encode_chunk(x, max_error=0.01)
    >>> len(blob), read_header(blob).nbits
    (47, 7)
    >>> y = decode_chunk(blob, "float32", (4,))
    >>> bool(np.nanmax(np.abs(y - x)) <= 0.01), bool(np.isnan(y[2]))
    (True, True)
    """
    return encode_chunk_u8(
        arr, bits=bits, max_error=max_error, infinities=infinities, layout=layout
    ).tobytes()


# --------------------------------------------------------------------------------------------
# decode
# --------------------------------------------------------------------------------------------


def decode_chunk(
    payload: ArrayLike | bytes,
    dtype: DTypeLike | None = None,
    shape: Sequence[int] | int | None = None,
    *,
    out: NDArray[np.floating] | None = None,
) -> NDArray[np.floating]:
    """Decode a chunk written by :func:`encode_chunk`.

    Parameters
    ----------
    payload : bytes-like
        The encoded chunk.
    dtype : dtype, optional
        Expected dtype; checked against the header (byte order is ignored).
    shape : tuple of int, optional
        Expected shape; its size is checked against the header. Without it a 1-D array is
        returned, and a payload costing 0 bytes per value may claim at most
        :data:`MAX_UNSHAPED_COUNT` values.
    out : ndarray, optional
        Contiguous native array of the header's dtype and count to decode into.

    Returns
    -------
    numpy.ndarray

    Raises
    ------
    CodecError
        If the payload is malformed, truncated or does not match ``dtype``/``shape``.
    """
    header = read_header(payload)
    if dtype is not None and np.dtype(dtype).newbyteorder("=") != header.dtype:
        raise CodecError(f"bitpack chunk holds {header.dtype}, but {np.dtype(dtype)} was expected")
    if shape is not None:
        shape = (shape,) if isinstance(shape, (int, np.integer)) else tuple(shape)
        expected = math.prod(shape)
        if expected != header.count:
            raise CodecError(
                f"bitpack chunk holds {header.count} values, but shape {shape} was expected"
            )
    elif header.count > MAX_UNSHAPED_COUNT and header.payload_nbytes < header.count:
        raise CodecError(
            f"bitpack chunk claims {header.count} values in {header.payload_nbytes} payload "
            f"bytes without an expected shape (limit {MAX_UNSHAPED_COUNT}): corrupted?"
        )
    b = _as_u8(payload)[HEADER_SIZE:]
    n = header.count
    if out is None:
        res = np.empty(n, dtype=header.dtype)
    else:
        if out.dtype != header.dtype or out.size != n or not out.flags.c_contiguous:
            raise CodecError(
                f"out must be a contiguous {header.dtype} array of {n} values; got "
                f"{out.dtype} of shape {out.shape}"
            )
        res = out.reshape(-1)
    specials = header.specials
    t = np.empty(min(n, BLOCK_SIZE), dtype=np.float64)
    if header.layout == "dense":
        for s in range(0, n, BLOCK_SIZE):
            m = min(BLOCK_SIZE, n - s)
            b0 = s * header.nbits // 8
            codes = _unpack_block(b[b0 : b0 + _packed_nbytes(m, header.nbits)], header.nbits, m)
            _dequantise_block(codes, header.reference, header.scale, specials, res[s : s + m], t)
    else:
        planes = b.reshape(header.width, n)
        carry = header.anchor
        limit = 1 << header.nbits
        for s in range(0, n, BLOCK_SIZE):
            m = min(BLOCK_SIZE, n - s)
            z = np.zeros(m, dtype=np.uint32)
            for k in range(header.width):
                z |= planes[k, s : s + m].astype(np.uint32) << np.uint32(8 * k)
            codes = _unzigzag_cumsum(z, carry)
            carry = int(codes[-1])
            if header.nbits < 32 and int(codes.max()) >= limit:
                raise CodecError(
                    f"corrupted bitpack chunk: delta-decoded code exceeds 2**{header.nbits} - 1"
                )
            _dequantise_block(codes, header.reference, header.scale, specials, res[s : s + m], t)
    if header.flags & FLAG_BIG_ENDIAN and out is None:
        res = res.astype(header.output_dtype)
    if shape is not None:
        return res.reshape(shape)
    return res
