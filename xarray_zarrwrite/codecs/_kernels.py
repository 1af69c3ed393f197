"""Pure NumPy kernels of the bitpack codecs: encoding and decoding whole chunks.

Everything here works on plain NumPy arrays and ``bytes``; the Zarr v3 codec
(:mod:`~xarray_zarrwrite.codecs.bitpack`), the numcodecs twin
(:mod:`~xarray_zarrwrite.codecs.bitpack_v2`) and the CuPy kernels
(:mod:`~xarray_zarrwrite.codecs._gpu`) only adapt these functions. The kernels are split by
concept, and this module assembles them (and re-exports their public names):

- :mod:`~xarray_zarrwrite.codecs._bits`: dense n-bit packing of codes (the bit order);
- :mod:`~xarray_zarrwrite.codecs._format`: the options, the 40-byte chunk header (the chunk
  layout), its parsing and the checks against the expected dtype and shape;
- :mod:`~xarray_zarrwrite.codecs._quant`: the quantisation plan of a chunk (width, reference,
  scale, the ``max_error`` proof) and the block kernels that quantise, dequantise and verify;
- this module: :func:`encode_chunk` / :func:`decode_chunk` for the ``dense`` and ``delta``
  payload layouts.
"""

from __future__ import annotations

import sys
from typing import TYPE_CHECKING, Any

import numpy as np

from xarray_zarrwrite.codecs._bits import (
    BLOCK_SIZE,
    _as_u8,
    _pack_into,
    _packed_nbytes,
    _unpack_into,
    pack_bits,
    unpack_bits,
)
from xarray_zarrwrite.codecs._format import (
    _HEADER,  # noqa: F401 - the header struct, for tests
    FLAG_BIG_ENDIAN,
    HEADER_SIZE,
    INFINITIES,
    LAYOUTS,
    MAGIC,
    MAX_UNSHAPED_COUNT,
    VERSION,
    BitpackHeader,
    Infinities,
    Layout,
    check_expected,
    pack_header,
    parse_options,
    read_header,
)
from xarray_zarrwrite.codecs._quant import (
    QuantPlan,
    _dequantise_block,
    _finish_block,
    _quantise_block,
    _scan,
    _scratch,
    _verify_block,
    plan_quantisation,
)
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


# --------------------------------------------------------------------------------------------
# encode
# --------------------------------------------------------------------------------------------


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
