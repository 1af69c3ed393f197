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
A finite value ``x`` gets the code ``q = trunc((x - offset) * (1 / scale))`` with
``offset = reference - scale / 2`` (IEEE float64, each operation rounded separately; the
division ``(x - offset) / scale`` replaces the product when ``1 / scale`` overflows), that is
``x`` rounded to the nearest step, and decodes to
``float64(q) * scale + reference``, rounded once to the array's dtype (float16 through
float32). ``reference`` is the chunk's finite minimum, so codes are never negative, and codes
never exceed the code of the finite maximum, so nothing wraps around. NaN, +inf and -inf,
when present in a chunk, take the top codes ``2**nbits - 1``, ``2**nbits - 2``, ... in that
order (only the ones present are reserved).
"""

from __future__ import annotations

import functools
import math
import struct
import sys
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, Literal

import numpy as np

from xarray_zarrwrite.errors import CodecError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

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
_DTYPE_CODES: Final[dict[np.dtype, int]] = {
    np.dtype("float16"): 1,
    np.dtype("float32"): 2,
    np.dtype("float64"): 3,
}
_CODE_DTYPES: Final[dict[int, np.dtype]] = {v: k for k, v in _DTYPE_CODES.items()}

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
    return bits, max_error, infinities, layout


# --------------------------------------------------------------------------------------------
# bit packing
# --------------------------------------------------------------------------------------------


@functools.cache
def _layout(
    nbits: int,
) -> tuple[int, int, tuple[tuple[int, int, tuple[tuple[int, int], ...]], ...]]:
    """Byte-group plan of a generic width.

    ``k`` consecutive values fill exactly ``B`` bytes (``B <= 8`` where possible). The group is
    written as little-endian words of 8/4/2/1 bytes at fixed byte offsets; each word is the OR
    of the shifted slots overlapping it. Returns ``(B, k, words)`` with ``words`` a tuple of
    ``(offset, size, ((slot, shift), ...))``; a positive shift is a left shift of the slot
    into the word, a negative one a right shift.
    """
    b0 = math.lcm(nbits, 8) // 8
    k0 = b0 * 8 // nbits
    mult = max(1, 8 // b0)
    nbytes, k = b0 * mult, k0 * mult
    words = []
    o = 0
    while o < nbytes:
        size = next(z for z in (8, 4, 2, 1) if nbytes - o >= z)
        lo, hi = 8 * o, 8 * (o + size)
        slots = tuple(
            (j, j * nbits - lo) for j in range(k) if j * nbits < hi and (j + 1) * nbits > lo
        )
        words.append((o, size, slots))
        o += size
    return nbytes, k, tuple(words)


_WORD_DTYPES: Final[dict[int, np.dtype]] = {
    1: np.dtype("u1"),
    2: np.dtype("<u2"),
    4: np.dtype("<u4"),
    8: np.dtype("<u8"),
}


def _word_view(
    buf: NDArray[np.uint8], offset: int, size: int, stride: int, n: int
) -> NDArray[np.unsignedinteger]:
    """Strided (possibly unaligned) view of ``n`` little-endian words inside ``buf``."""
    return np.ndarray((n,), dtype=_WORD_DTYPES[size], buffer=buf, offset=offset, strides=(stride,))


def _pack_groups(codes: NDArray[np.uint32], nbits: int, out: NDArray[np.uint8]) -> None:
    """Pack ``codes`` (a whole number of groups) into ``out`` (exactly their bytes)."""
    nbytes, k, words = _layout(nbits)
    ng = codes.size // k
    if ng == 0:
        return
    acc = np.empty(ng, dtype=np.uint64)
    tmp = np.empty(ng, dtype=np.uint64)
    for offset, size, slots in words:
        for i, (j, shift) in enumerate(slots):
            dst = acc if i == 0 else tmp
            src = codes[j::k]
            if shift > 0:
                np.left_shift(src, shift, out=dst, dtype=np.uint64)
            elif shift < 0:
                np.right_shift(src, -shift, out=dst, dtype=np.uint64)
            else:
                np.copyto(dst, src)
            if i:
                np.bitwise_or(acc, tmp, out=acc)
        np.copyto(_word_view(out, offset, size, nbytes, ng), acc, casting="unsafe")


def _unpack_groups(
    buf: NDArray[np.uint8], nbits: int, ng: int, sink: Callable[[int, NDArray[np.uint64]], None]
) -> None:
    """Inverse of :func:`_pack_groups`: ``sink(j, values)`` receives slot ``j`` of all groups."""
    nbytes, k, words = _layout(nbits)
    if ng == 0:
        return
    loaded = [
        (np.asarray(_word_view(buf, offset, size, nbytes, ng), dtype=np.uint64), size, slots)
        for offset, size, slots in words
    ]
    parts: dict[int, list[tuple[NDArray[np.uint64], int]]] = {}
    for word, _, slots in loaded:
        for j, shift in slots:
            parts.setdefault(j, []).append((word, shift))
    mask = np.uint64((1 << nbits) - 1)
    val = np.empty(ng, dtype=np.uint64)
    tmp = np.empty(ng, dtype=np.uint64)
    for j in range(k):
        for i, (word, shift) in enumerate(parts[j]):
            dst = val if i == 0 else tmp
            if shift > 0:
                np.right_shift(word, shift, out=dst)
            elif shift < 0:
                np.left_shift(word, -shift, out=dst)
            else:
                np.copyto(dst, word)
            if i:
                np.bitwise_or(val, tmp, out=val)
        np.bitwise_and(val, mask, out=val)
        sink(j, val.view(np.int64))  # < 2**32: int64 converts to float faster than uint64


def _packed_nbytes(count: int, nbits: int) -> int:
    return (count * nbits + 7) // 8


def _pack_into(codes: NDArray[np.unsignedinteger], nbits: int, out: NDArray[np.uint8]) -> None:
    """Pack valid codes into ``out`` (exactly ``ceil(codes.size * nbits / 8)`` bytes)."""
    n = codes.size
    if nbits == 0 or n == 0:
        return
    if nbits in (8, 16, 32):
        np.copyto(out.view(_WORD_DTYPES[nbits // 8]), codes, casting="unsafe")
        return
    nbytes, k, _ = _layout(nbits)
    codes = np.asarray(codes, dtype=np.uint32)
    full = n - n % k
    nb = full // k * nbytes
    _pack_groups(codes[:full], nbits, out[:nb])
    if full < n:
        tail = np.zeros(k, dtype=np.uint32)
        tail[: n - full] = codes[full:]
        group = np.zeros(nbytes, dtype=np.uint8)
        _pack_groups(tail, nbits, group)
        out[nb:] = group[: out.size - nb]


def _unpack_into(
    buf: NDArray[np.uint8], nbits: int, count: int, sink: Callable[[slice, NDArray[Any]], None]
) -> None:
    """Unpack ``count`` codes from exactly their bytes; ``sink(index, codes)`` receives them
    in pieces (``index`` a slice, possibly strided, of ``range(count)``)."""
    if count == 0:
        return
    if nbits == 0:
        sink(slice(0, count), np.zeros(count, dtype=np.uint8))
        return
    if nbits in (8, 16, 32):
        sink(slice(0, count), buf.view(_WORD_DTYPES[nbits // 8]))
        return
    nbytes, k, _ = _layout(nbits)
    full = count - count % k
    ng = full // k
    _unpack_groups(buf, nbits, ng, lambda j, v: sink(slice(j, full, k), v))
    if full < count:
        group = np.zeros(nbytes, dtype=np.uint8)
        group[: buf.size - ng * nbytes] = buf[ng * nbytes :]
        tail = np.empty(k, dtype=np.uint64)
        _unpack_groups(group, nbits, 1, lambda j, v: tail.__setitem__(j, v[0]))
        sink(slice(full, count), tail[: count - full])


def pack_bits(codes: ArrayLike, nbits: int) -> NDArray[np.uint8]:
    """Pack unsigned integer codes densely, ``nbits`` bits each.

    Parameters
    ----------
    codes : array_like of unsigned int
        Codes, flattened in C order; bits above the lowest ``nbits`` are ignored.
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
    if c.dtype.itemsize * 8 > nbits:
        c = c & c.dtype.type((1 << nbits) - 1)
    out = np.empty(_packed_nbytes(c.size, nbits), dtype=np.uint8)
    for s in range(0, c.size, BLOCK_SIZE):
        block = c[s : s + BLOCK_SIZE]
        b0 = s * nbits // 8
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
        dst = out[s : s + n]
        _unpack_into(b[b0 : b0 + _packed_nbytes(n, nbits)], nbits, n, dst.__setitem__)
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

    @property
    def offset(self) -> float:
        """``reference - scale / 2``: truncating ``(x - offset) / scale`` rounds to nearest."""
        return self.reference - 0.5 * self.scale

    def code_of(self, value: float) -> int:
        """Code of one finite value, with exactly the operations of the array kernels."""
        if self.scale == 0:
            return 0
        d = value - self.offset
        return int(d / self.scale if self.use_division else d * self.inverse)


def _half_ulp(dtype: type[np.floating], value: float) -> float:
    """Half the spacing of ``dtype`` at ``value`` (its largest finite spacing beyond range)."""
    finfo = np.finfo(dtype)
    v = dtype(min(value, float(np.nextafter(finfo.max, 0, dtype=dtype))))
    return float(np.spacing(v)) / 2


def _ceil_log2(n: int) -> int:
    return (n - 1).bit_length() if n > 1 else 0


def _check_arithmetic(plan: QuantPlan, vmax: float) -> QuantPlan:
    """Reject plans whose float64 code arithmetic would overflow (ranges near 1.8e308)."""
    d = vmax - plan.offset
    t = d / plan.scale if plan.use_division else d * plan.inverse
    if not (math.isfinite(d) and math.isfinite(t)):
        raise CodecError(
            f"the chunk's range ends at {vmax!r}, too close to the float64 limit for bitpack's "
            "arithmetic; use lossless compression for such data"
        )
    return plan


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
    if max_error is not None:
        flags |= FLAG_MAX_ERROR
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
        plan = _check_arithmetic(QuantPlan(flags, nbits, vmin, scale), vmax)
        for i in range(64):  # float rounding: never spill into the reserved codes
            if plan.code_of(vmax) <= top:
                break
            scale = math.nextafter(scale, math.inf) if i < 8 else scale * (1 + 2.0**-40)
            plan = _check_arithmetic(QuantPlan(flags, nbits, vmin, scale), vmax)
        return plan
    assert max_error is not None
    dt = np.dtype(dtype)
    maxabs = max(abs(vmin), abs(vmax))
    minabs = 0.0 if vmin <= 0 <= vmax else min(abs(vmin), abs(vmax))
    ceiling = maxabs + max_error  # no decoded magnitude exceeds this
    # E, the float64 error of code * scale + reference, is at most scale / 2 + margin. Each
    # final rounding to a narrower type either adds half an ulp or, x itself being
    # representable there, at most doubles the error; and when E is below a quarter of the
    # spacing at x, the rounding returns x itself. Pick the best provable step.
    margin = 8 * _EPS64 * (span + maxabs + max_error)
    snap = 1 - 2.0**-10  # strictly inside, so no rounding tie can go the wrong way
    if dt == np.float64:
        options = [max_error]
    elif dt == np.float32:
        hu32 = _half_ulp(np.float32, ceiling)
        options = [max_error - hu32, max_error / 2, _half_ulp(np.float32, minabs) / 2 * snap]
    else:  # float16 decodes through float32
        hu32, hu16 = _half_ulp(np.float32, ceiling), _half_ulp(np.float16, ceiling)
        options = [
            max_error - hu32 - hu16,
            max_error / 2 - hu32,
            max_error / 4,
            _half_ulp(np.float16, minabs) / 4 * snap,
        ]
    half = max(options) - margin
    if half <= 0:
        if span / (2 * max_error) >= 2**32:
            raise CodecError(
                f"max_error={max_error!r} is too small for a chunk spanning [{vmin!r}, "
                f"{vmax!r}]: it needs more than 32 bits per value (at most 32); use a larger "
                "max_error or smaller chunks"
            )
        raise CodecError(
            f"max_error={max_error!r} is below the float64 arithmetic resolution of values near "
            f"{maxabs!r}; use a larger max_error or lossless compression"
        )
    scale = 2 * half / (1 << shrink)
    plan = _check_arithmetic(QuantPlan(flags, 0, vmin, scale), vmax)
    nbits = _ceil_log2(plan.code_of(vmax) + 1 + nres)
    if nbits > 32:
        raise CodecError(
            f"max_error={max_error!r} is too small for a chunk spanning [{vmin!r}, {vmax!r}]: "
            f"it needs {nbits} bits per value (at most 32); use a larger max_error or smaller "
            "chunks"
        )
    return QuantPlan(flags, nbits, vmin, scale)


# --------------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------------


def special_flags(nan: bool, posinf: bool, neginf: bool, infinities: Infinities) -> int:
    """Header flags of the special values present; raise if infinities are rejected."""
    if infinities == "reject" and (posinf or neginf):
        raise CodecError(
            "chunk contains infinite values and the codec was built with infinities='reject'; "
            "use infinities='preserve' or replace them first"
        )
    return (
        (FLAG_NAN if nan else 0) | (FLAG_POSINF if posinf else 0) | (FLAG_NEGINF if neginf else 0)
    )


def _scan(x: NDArray[np.floating], infinities: Infinities) -> tuple[float, float, int]:
    """Finite min/max and special-value flags of a flat float array."""
    if x.size == 0:
        return math.nan, math.nan, 0
    vmin, vmax = float(np.min(x)), float(np.max(x))
    if math.isfinite(vmin) and math.isfinite(vmax):
        return vmin, vmax, 0
    flags = special_flags(
        bool(np.isnan(x).any()), bool(np.isposinf(x).any()), bool(np.isneginf(x).any()), infinities
    )
    finite = x[np.isfinite(x)]
    if finite.size == 0:
        return math.nan, math.nan, flags
    return float(np.min(finite)), float(np.max(finite)), flags


class _Scratch(threading.local):
    """Per-thread block temporaries, reused across calls (fresh ones would page-fault)."""

    def __init__(self) -> None:
        self.t = np.empty(BLOCK_SIZE, dtype=np.float64)
        self.u = np.empty(BLOCK_SIZE, dtype=np.float64)
        self.y = np.empty(BLOCK_SIZE, dtype=np.float64)
        self.codes = np.empty(BLOCK_SIZE, dtype=np.uint32)


_scratch = _Scratch()


def _quantise_block(
    xb: NDArray[np.floating], plan: QuantPlan, t: NDArray[np.float64]
) -> NDArray[np.float64]:
    """Return the (float64, integral) codes of one block, specials included."""
    t = t[: xb.size]
    if plan.scale == 0:
        t[...] = 0.0
    else:
        np.subtract(xb, plan.offset, out=t, dtype=np.float64)
        if plan.use_division:
            np.divide(t, plan.scale, out=t)
        else:
            np.multiply(t, plan.inverse, out=t)
    specials = plan.specials
    if specials:
        for code, value in specials:
            mask = np.isnan(xb) if math.isnan(value) else (xb == value)
            np.copyto(t, float(code), where=mask)
    return t


def _dequantise_block(
    codes: NDArray[np.unsignedinteger],
    nbits: int,
    reference: float,
    scale: float,
    specials: Sequence[tuple[int, float]],
    out: NDArray[np.floating],
    t: NDArray[np.float64],
) -> None:
    """``out[...] = codes * scale + reference`` rounded once to ``out.dtype``; specials set."""
    t = t[: codes.size]
    with np.errstate(over="ignore"):
        np.multiply(codes, scale, out=t)
    _finish_block(t, nbits, reference, scale, specials, codes, out)


def _finish_block(
    t: NDArray[np.float64],
    nbits: int,
    reference: float,
    scale: float,
    specials: Sequence[tuple[int, float]],
    codes: NDArray[np.unsignedinteger] | None,
    out: NDArray[np.floating],
) -> None:
    """Second half of :func:`_dequantise_block`, given ``t = codes * scale``."""
    with np.errstate(over="ignore"):  # clipped below; reserved codes are overwritten
        np.add(t, reference, out=t)
    fmax = float(np.finfo(out.dtype).max)
    hi = reference + ((1 << nbits) - 1) * scale
    if hi > fmax or reference < -fmax:  # values just beyond the dtype's range: clamp, no inf
        np.clip(t, -fmax, fmax, out=t)
    if out.dtype == np.float16:
        np.copyto(out, t.astype(np.float32), casting="same_kind")
    else:
        np.copyto(out, t, casting="same_kind")
    for code, value in specials:
        np.copyto(out, value, where=codes == code)


def _dequantise_dense_block(
    buf: NDArray[np.uint8],
    header: BitpackHeader,
    count: int,
    out: NDArray[np.floating],
    t: NDArray[np.float64],
) -> None:
    """Decode ``count`` densely packed values from ``buf`` (their exact bytes) into ``out``."""
    nbits, specials, scale = header.nbits, header.specials, header.scale
    t = t[:count]
    natural = np.empty(count, dtype=np.uint32) if specials and nbits not in (8, 16, 32) else None
    direct: list[NDArray[Any]] = []

    def sink(index: slice, codes: NDArray[Any]) -> None:
        with np.errstate(over="ignore"):
            np.multiply(codes, scale, out=t[index])
        if natural is not None:
            natural[index] = codes
        elif specials:
            direct.append(codes)

    _unpack_into(buf, nbits, count, sink)
    codes = natural if natural is not None else (direct[0] if direct else None)
    _finish_block(t, nbits, header.reference, scale, specials, codes, out)


def _verify_block(
    xb: NDArray[np.floating],
    codes: NDArray[np.unsignedinteger],
    plan: QuantPlan,
    max_error: float,
    scratch: _Scratch,
) -> bool:
    """Whether every finite value of the block decodes within ``max_error``."""
    n = xb.size
    if n == 0:
        return True
    y = scratch.y.view(xb.dtype)[:n]
    _dequantise_block(codes, plan.nbits, plan.reference, plan.scale, (), y, scratch.u)
    nonfinite = ~np.isfinite(xb) if plan.flags & (FLAG_NAN | FLAG_POSINF | FLAG_NEGINF) else None
    if xb.dtype != np.float64:
        # cheap float32 check; its rounding can only hide an excess below 2**-22 relative
        d32 = scratch.u.view(np.float32)[:n]
        np.subtract(y, xb, out=d32, dtype=np.float32)
        np.abs(d32, out=d32)
        if nonfinite is not None:
            np.copyto(d32, 0.0, where=nonfinite)
        if float(np.max(d32)) <= max_error * (1 - 2.0**-22):
            return True
    d = scratch.u[:n]
    np.subtract(y, xb, out=d, dtype=np.float64)  # exact for float16/float32 operands
    np.abs(d, out=d)
    if nonfinite is not None:
        np.copyto(d, 0.0, where=nonfinite)
    return bool(np.max(d) <= max_error)


def _flatten(arr: ArrayLike) -> tuple[NDArray[np.floating], int]:
    a = np.asarray(arr)
    if a.dtype.kind != "f" or a.dtype.itemsize not in (2, 4, 8):
        raise CodecError(f"bitpack encodes float16/float32/float64 data; got dtype {a.dtype}")
    big = a.dtype.byteorder == ">" or (a.dtype.byteorder == "=" and sys.byteorder == "big")
    flags = FLAG_BIG_ENDIAN if big else 0
    if not a.dtype.isnative:
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


def pack_header(plan: QuantPlan, dtype: np.dtype, count: int, layout: Layout, width: int = 0,
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
    out[:HEADER_SIZE] = np.frombuffer(pack_header(plan, x.dtype, n, "dense"), dtype=np.uint8)
    scratch = _scratch
    if nbits == 0:  # every value is code 0 (a chunk narrower than one step): still verified
        if max_error is not None and plan.scale > 0:
            zeros = np.zeros(min(n, BLOCK_SIZE), dtype=np.uint8)
            for s in range(0, n, BLOCK_SIZE):
                xb = x[s : s + BLOCK_SIZE]
                if not _verify_block(xb, zeros[: xb.size], plan, max_error, scratch):
                    return None
        return out
    payload = out[HEADER_SIZE:]
    direct = payload.view(f"<u{nbits // 8}") if nbits in (8, 16, 32) else None
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
    scratch = _scratch
    q = np.empty(n, dtype=np.uint32)
    for s in range(0, n, BLOCK_SIZE):
        xb = x[s : s + BLOCK_SIZE]
        codes = q[s : s + xb.size]
        np.copyto(codes, _quantise_block(xb, plan, scratch.t), casting="unsafe")
        if max_error is not None and not _verify_block(xb, codes, plan, max_error, scratch):
            return None
    anchor = int(q[0]) if n else 0
    z = _zigzag_delta(q, anchor)
    zmax = int(np.max(z)) if n else 0
    width = (zmax.bit_length() + 7) // 8
    out = np.empty(HEADER_SIZE + n * width, dtype=np.uint8)
    out[:HEADER_SIZE] = np.frombuffer(
        pack_header(plan, x.dtype, n, "delta", width, anchor), dtype=np.uint8
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
    """Inverse of :func:`_zigzag_delta` for one block (``z`` is consumed)."""
    d = np.right_shift(z, np.uint32(1))
    np.bitwise_and(z, np.uint32(1), out=z)
    np.negative(z, out=z)
    np.bitwise_xor(d, z, out=d)
    np.cumsum(d, dtype=np.uint32, out=d)
    d += np.uint32(carry)
    return d


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
    (43, 6)
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
    shape = check_expected(header, dtype, shape)
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
    t = _scratch.t
    if header.layout == "dense":
        for s in range(0, n, BLOCK_SIZE):
            m = min(BLOCK_SIZE, n - s)
            b0 = s * header.nbits // 8
            nb = _packed_nbytes(m, header.nbits)
            _dequantise_dense_block(b[b0 : b0 + nb], header, m, res[s : s + m], t)
    else:
        planes = b.reshape(header.width, n)
        carry = header.anchor
        limit = 1 << header.nbits
        for s in range(0, n, BLOCK_SIZE):
            m = min(BLOCK_SIZE, n - s)
            z = _scratch.codes[:m]
            z[...] = 0
            tmp = _scratch.y.view(np.uint32)[:m]
            for k in range(header.width):
                np.copyto(tmp, planes[k, s : s + m])
                if k:
                    np.left_shift(tmp, np.uint32(8 * k), out=tmp)
                np.bitwise_or(z, tmp, out=z)
            codes = _unzigzag_cumsum(z, carry)
            carry = int(codes[-1])
            if header.nbits < 32 and int(np.max(codes)) >= limit:
                raise CodecError(
                    f"corrupted bitpack chunk: delta-decoded code exceeds 2**{header.nbits} - 1"
                )
            _dequantise_block(
                codes, header.nbits, header.reference, header.scale, specials, res[s : s + m], t
            )
    if out is None and res.dtype != header.output_dtype:
        res = res.astype(header.output_dtype)
    if shape is not None:
        return res.reshape(shape)
    return res
