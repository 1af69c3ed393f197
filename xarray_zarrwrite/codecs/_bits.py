"""Dense n-bit packing of unsigned integer codes (the payload of the bitpack ``dense`` layout).

Part of the bitpack kernels (:mod:`~xarray_zarrwrite.codecs._kernels` assembles them).

Bit order
---------
:func:`pack_bits` writes value ``i`` to the bits ``[i * nbits, (i + 1) * nbits)`` of one
little-endian bit stream: bit ``b`` of value ``i`` is stream bit ``k = i * nbits + b``, and
stream bit ``k`` is bit ``k % 8`` (least significant first) of byte ``k // 8``. Equivalently,
the packed bytes are the little-endian encoding of the integer ``sum(code[i] << (i * nbits))``.
The last byte is padded with zero bits; nothing is rounded to whole bytes per value.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any, Final

import numpy as np

from xarray_zarrwrite.errors import CodecError

if TYPE_CHECKING:
    from collections.abc import Callable

    from numpy.typing import ArrayLike, NDArray

__all__ = ["BLOCK_SIZE", "pack_bits", "unpack_bits"]

#: Values processed per step of the block loops (multiple of 32; ~2 MiB float64 temporaries).
BLOCK_SIZE: Final = 1 << 18


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
