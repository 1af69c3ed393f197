"""CuPy kernels of the bitpack codec: the same chunk bytes as the CPU encoder, made on a GPU.

CuPy is imported lazily, on the first call. The quantisation runs as separate CuPy array
operations, one IEEE float64 operation per kernel, exactly as the NumPy kernels do, so no
fused multiply-add can change a rounding; the width/scale choice is the same host-side
:func:`~xarray_zarrwrite.codecs._quant.plan_quantisation`, including the ``max_error``
verification. Only the bit packing is a hand-written kernel (integer arithmetic, exact), one
thread per output 32-bit word for packing and one per value for unpacking.

The rule, tested in ``tests/test_bitpack_gpu.py``: ``encode_chunk_gpu(x).get().tobytes() ==
encode_chunk(x.get())`` for every input and option.
"""

from __future__ import annotations

import functools
import math
from typing import TYPE_CHECKING, Any

import numpy as np

from xarray_zarrwrite.codecs._format import (
    FLAG_NAN,
    FLAG_NEGINF,
    FLAG_POSINF,
    HEADER_SIZE,
    BitpackHeader,
    Infinities,
    Layout,
    check_expected,
    pack_header,
    parse_header,
    parse_options,
)
from xarray_zarrwrite.codecs._quant import QuantPlan, plan_quantisation, special_flags
from xarray_zarrwrite.errors import CodecError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import DTypeLike

__all__ = ["decode_chunk_gpu", "encode_chunk_gpu"]

_THREADS = 256

_SOURCE = r"""
extern "C" __global__ void xzbp_pack(const unsigned int* codes, const unsigned long long n,
                                     const int nbits, unsigned int* words,
                                     const unsigned long long nwords) {
    const unsigned long long w = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (w >= nwords) return;
    const unsigned long long bit0 = w * 32ULL;
    const unsigned long long first = bit0 / (unsigned long long)nbits;
    unsigned long long last = (bit0 + 31ULL) / (unsigned long long)nbits;
    if (last >= n) last = n - 1ULL;
    const unsigned long long mask = (nbits == 32) ? 0xFFFFFFFFULL : ((1ULL << nbits) - 1ULL);
    unsigned int acc = 0u;
    for (unsigned long long i = first; i <= last; ++i) {
        const unsigned long long v = (unsigned long long)codes[i] & mask;
        const long long off = (long long)(i * (unsigned long long)nbits) - (long long)bit0;
        if (off >= 0) {
            acc |= (unsigned int)((v << off) & 0xFFFFFFFFULL);
        } else {
            acc |= (unsigned int)((v >> (-off)) & 0xFFFFFFFFULL);
        }
    }
    words[w] = acc;
}

extern "C" __global__ void xzbp_unpack(const unsigned char* buf, const unsigned long long nbytes,
                                       const unsigned long long n, const int nbits,
                                       unsigned int* codes) {
    const unsigned long long i = (unsigned long long)blockIdx.x * blockDim.x + threadIdx.x;
    if (i >= n) return;
    const unsigned long long bit = i * (unsigned long long)nbits;
    const unsigned long long byte = bit >> 3;
    const int shift = (int)(bit & 7ULL);
    unsigned long long v = 0ULL;
    for (int k = 0; k < 5; ++k) {
        const unsigned long long b = byte + (unsigned long long)k;
        if (b < nbytes) v |= ((unsigned long long)buf[b]) << (8 * k);
    }
    v >>= shift;
    const unsigned long long mask = (nbits == 32) ? 0xFFFFFFFFULL : ((1ULL << nbits) - 1ULL);
    codes[i] = (unsigned int)(v & mask);
}
"""


def _cupy() -> Any:
    try:
        import cupy
    except ImportError as e:  # pragma: no cover - exercised only without CuPy
        raise ImportError(
            "the GPU bitpack kernels need CuPy: pip install 'xarray_zarrwrite[gpu]'"
        ) from e
    return cupy


@functools.cache
def _kernels() -> tuple[Any, Any]:
    cp = _cupy()
    module = cp.RawModule(code=_SOURCE, options=("--std=c++11",))
    return module.get_function("xzbp_pack"), module.get_function("xzbp_unpack")


def _launch(kernel: Any, n: int, args: tuple[Any, ...]) -> None:
    if n:
        kernel(((n + _THREADS - 1) // _THREADS,), (_THREADS,), args)


def pack_bits_gpu(codes: Any, nbits: int) -> Any:
    """Pack uint32 CuPy ``codes`` densely (same bytes as :func:`~._kernels.pack_bits`).

    Parameters
    ----------
    codes : cupy.ndarray
        Codes; bits above the lowest ``nbits`` are ignored.
    nbits : int
        Width, 0 to 32.

    Returns
    -------
    cupy.ndarray of uint8
    """
    cp = _cupy()
    c = cp.ascontiguousarray(codes.reshape(-1), dtype=cp.uint32)
    n = int(c.size)
    nbytes = (n * nbits + 7) // 8
    if nbits == 0 or n == 0:
        return cp.zeros(nbytes, dtype=cp.uint8)
    nwords = (nbytes + 3) // 4
    words = cp.empty(nwords, dtype=cp.uint32)
    pack, _ = _kernels()
    _launch(pack, nwords, (c, np.uint64(n), np.int32(nbits), words, np.uint64(nwords)))
    return words.view(cp.uint8)[:nbytes]


def unpack_bits_gpu(buf: Any, nbits: int, count: int) -> Any:
    """Unpack ``count`` codes of ``nbits`` bits from a uint8 CuPy buffer.

    Parameters
    ----------
    buf : cupy.ndarray of uint8
        At least ``ceil(count * nbits / 8)`` bytes.
    nbits : int
        Width, 0 to 32.
    count : int
        Number of codes.

    Returns
    -------
    cupy.ndarray of uint32
    """
    cp = _cupy()
    b = cp.ascontiguousarray(buf.reshape(-1)).view(cp.uint8)
    need = (count * nbits + 7) // 8
    if b.size < need:
        raise CodecError(f"packed buffer too short: need {need} bytes, got {b.size}")
    out = cp.zeros(count, dtype=cp.uint32)
    if nbits == 0 or count == 0:
        return out
    _, unpack = _kernels()
    _launch(unpack, count, (b, np.uint64(need), np.uint64(count), np.int32(nbits), out))
    return out


def _scan(x: Any, infinities: Infinities) -> tuple[float, float, int]:
    cp = _cupy()
    if x.size == 0:
        return math.nan, math.nan, 0
    nan = bool(cp.isnan(x).any())
    posinf = bool(cp.isposinf(x).any())
    neginf = bool(cp.isneginf(x).any())
    flags = special_flags(nan, posinf, neginf, infinities)
    finite = x[cp.isfinite(x)] if flags else x
    if finite.size == 0:
        return math.nan, math.nan, flags
    return float(finite.min()), float(finite.max()), flags


def _quantise(x: Any, plan: QuantPlan) -> Any:
    """uint32 codes, with the operations (and roundings) of ``_quant._quantise_block``."""
    cp = _cupy()
    if plan.scale == 0:
        t = cp.zeros(x.size, dtype=cp.float64)
    else:
        t = x.astype(cp.float64)
        t -= plan.offset
        if plan.use_division:
            t /= plan.scale
        else:
            t *= plan.inverse
    for code, value in plan.specials:
        mask = cp.isnan(x) if math.isnan(value) else (x == value)
        t[mask] = float(code)
    return t.astype(cp.uint32)


def _dequantise(
    codes: Any, nbits: int, reference: float, scale: float, specials: Any, dtype: np.dtype
) -> Any:
    """Float values of ``codes`` (same operations as ``_quant._finish_block``)."""
    cp = _cupy()
    t = codes.astype(cp.float64)
    t *= scale
    t += reference
    fmax = float(np.finfo(dtype).max)
    if reference + ((1 << nbits) - 1) * scale > fmax or reference < -fmax:
        cp.clip(t, -fmax, fmax, out=t)
    y = t.astype(cp.float32).astype(dtype) if dtype == np.float16 else t.astype(dtype)
    for code, value in specials:
        y[codes == code] = value
    return y


def _verified(x: Any, codes: Any, plan: QuantPlan, max_error: float) -> bool:
    cp = _cupy()
    y = _dequantise(codes, plan.nbits, plan.reference, plan.scale, (), x.dtype)
    d = cp.abs(y.astype(cp.float64) - x.astype(cp.float64))
    if plan.flags & (FLAG_NAN | FLAG_POSINF | FLAG_NEGINF):
        d[~cp.isfinite(x)] = 0.0
    return bool(d.max() <= max_error) if d.size else True


def encode_chunk_gpu(
    arr: Any,
    *,
    bits: int | None = None,
    max_error: float | None = None,
    infinities: Infinities = "preserve",
    layout: Layout = "dense",
) -> Any:
    """Encode a CuPy float array into the bytes :func:`~._kernels.encode_chunk` produces.

    Parameters
    ----------
    arr : cupy.ndarray of float16, float32 or float64
        The chunk, flattened in C order.
    bits, max_error, infinities, layout
        As for :func:`~xarray_zarrwrite.codecs._kernels.encode_chunk`.

    Returns
    -------
    cupy.ndarray of uint8
        Header and payload, on the device.

    Raises
    ------
    CodecError
        As :func:`~xarray_zarrwrite.codecs._kernels.encode_chunk`.
    """
    cp = _cupy()
    bits, max_error, infinities, layout = parse_options(bits, max_error, infinities, layout)
    x = cp.ascontiguousarray(arr).reshape(-1)
    if x.dtype.kind != "f" or x.dtype.itemsize not in (2, 4, 8):
        raise CodecError(f"bitpack encodes float16/float32/float64 data; got dtype {x.dtype}")
    vmin, vmax, flags = _scan(x, infinities)
    n = int(x.size)
    for shrink in range(4):
        plan = plan_quantisation(
            vmin, vmax, flags=flags, dtype=x.dtype, bits=bits, max_error=max_error, shrink=shrink
        )
        codes = _quantise(x, plan)
        if max_error is not None and not _verified(x, codes, plan, max_error):
            continue
        if layout == "dense":
            head = pack_header(plan, x.dtype, n, "dense")
            payload = pack_bits_gpu(codes, plan.nbits)
        else:
            anchor = int(codes[0]) if n else 0
            z = _zigzag_delta(codes, anchor)
            zmax = int(z.max()) if n else 0
            width = (zmax.bit_length() + 7) // 8
            head = pack_header(plan, x.dtype, n, "delta", width, anchor)
            payload = cp.empty(n * width, dtype=cp.uint8)
            for k in range(width):
                payload[k * n : (k + 1) * n] = ((z >> (8 * k)) & 0xFF).astype(cp.uint8)
        out = cp.empty(HEADER_SIZE + payload.size, dtype=cp.uint8)
        out[:HEADER_SIZE] = cp.asarray(np.frombuffer(head, dtype=np.uint8))
        out[HEADER_SIZE:] = payload
        return out
    raise CodecError(  # pragma: no cover
        f"could not meet max_error={max_error!r}; please report this as a bug"
    )


def _zigzag_delta(q: Any, anchor: int) -> Any:
    cp = _cupy()
    d = cp.empty_like(q)
    if q.size:
        d[0] = (int(q[0]) - anchor) & 0xFFFFFFFF
        d[1:] = q[1:] - q[:-1]  # uint32 arithmetic wraps
    sign = (d.view(cp.int32) >> 31).view(cp.uint32)
    return (d << 1) ^ sign


def decode_chunk_gpu(
    payload: Any,
    dtype: DTypeLike | None = None,
    shape: Sequence[int] | int | None = None,
) -> Any:
    """Decode a chunk (a uint8 CuPy array) on the device.

    Parameters
    ----------
    payload : cupy.ndarray of uint8
        The encoded chunk.
    dtype : dtype, optional
        Expected dtype.
    shape : tuple of int, optional
        Expected shape (see :func:`~xarray_zarrwrite.codecs._kernels.decode_chunk`).

    Returns
    -------
    cupy.ndarray
        Native byte order (CuPy has no other).

    Raises
    ------
    CodecError
        If the payload is malformed, truncated or does not match ``dtype``/``shape``.
    """
    cp = _cupy()
    b = cp.ascontiguousarray(payload.reshape(-1)).view(cp.uint8)
    header: BitpackHeader = parse_header(b[:HEADER_SIZE].get().tobytes(), int(b.size))
    shape_t = check_expected(header, dtype, shape)
    body = b[HEADER_SIZE:]
    n = header.count
    if header.layout == "dense":
        codes = unpack_bits_gpu(body, header.nbits, n)
    else:
        z = cp.zeros(n, dtype=cp.uint32)
        for k in range(header.width):
            z |= body[k * n : (k + 1) * n].astype(cp.uint32) << (8 * k)
        d = (z >> 1) ^ (cp.uint32(0) - (z & 1))
        codes = cp.cumsum(d, dtype=cp.uint32) + cp.uint32(header.anchor)
        codes = codes.astype(cp.uint32)
        if n and header.nbits < 32 and int(codes.max()) >= (1 << header.nbits):
            raise CodecError(
                f"corrupted bitpack chunk: delta-decoded code exceeds 2**{header.nbits} - 1"
            )
    y = _dequantise(
        codes, header.nbits, header.reference, header.scale, header.specials, header.dtype
    )
    return y.reshape(shape_t) if shape_t is not None else y
