"""Linear quantisation of a chunk: the plan (width, reference, scale) and the block kernels.

Part of the bitpack kernels (:mod:`~xarray_zarrwrite.codecs._kernels` assembles them).

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

import math
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

import numpy as np

from xarray_zarrwrite.codecs._bits import BLOCK_SIZE
from xarray_zarrwrite.codecs._format import (
    FLAG_MAX_ERROR,
    FLAG_NAN,
    FLAG_NEGINF,
    FLAG_POSINF,
    Infinities,
    _n_specials,
    _special_codes,
)
from xarray_zarrwrite.errors import CodecError

if TYPE_CHECKING:
    from collections.abc import Sequence

    from numpy.typing import DTypeLike, NDArray

__all__ = ["QuantPlan", "plan_quantisation", "special_flags"]

_EPS64: Final = 2.0**-53


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
        return _plan_bits(vmin, vmax, flags, nres, bits)
    assert max_error is not None
    half = _half_step(vmin, vmax, np.dtype(dtype), max_error)
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


def _plan_bits(vmin: float, vmax: float, flags: int, nres: int, bits: int) -> QuantPlan:
    """The plan of a fixed width ``bits``: the finite range split into equal steps."""
    span = vmax - vmin
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


def _half_step(vmin: float, vmax: float, dt: np.dtype, max_error: float) -> float:
    """Half the largest step that provably keeps every decoded value within ``max_error``."""
    span = vmax - vmin
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
    return half


# --------------------------------------------------------------------------------------------
# block kernels
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
