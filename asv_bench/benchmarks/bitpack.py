"""Bit-packing codec: single-core encode/decode throughput and compressed sizes.

The asv classes time :func:`~xarray_zarrwrite.codecs._kernels.encode_chunk` and
:func:`~xarray_zarrwrite.codecs._kernels.decode_chunk` on one float32 chunk of an ERA5-like
2 m temperature field, (24, 181, 360) = 6.3 MB, at 8, 12 and 16 bits (throughput =
``6.3 MB / time``; the kernels are NumPy, one thread). The helpers below (no asv prefix in
their names) are shared with ``asv_bench/compare_packing.py``, which prints the size table:

* :func:`era5_like_t2m` and :func:`noisy_field` make the test fields;
* :func:`compare_sizes` compresses a field with every method at an equal maximum error;
* :func:`bitpack_throughput` measures GB/s of encode and decode.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import numcodecs
import numpy as np

from xarray_zarrwrite.codecs._kernels import decode_chunk, encode_chunk_u8

# --- test fields ------------------------------------------------------------------------------


def era5_like_t2m(
    nt: int = 24 * 30, nlat: int = 181, nlon: int = 360, *, seed: int = 0, noise: float = 0.02
) -> np.ndarray:
    """Hourly 1-degree 2 m temperature (K), float32, shape ``(nt, nlat, nlon)``.

    A latitude gradient, a fixed smooth land/sea and orography pattern, the seasonal cycle of
    a 30-day window around the northern summer, a diurnal cycle that follows the sun and is
    stronger over land, eastward-travelling synoptic waves, and white noise of ``noise`` K.
    """
    rng = np.random.default_rng(seed)
    lat = np.deg2rad(np.linspace(90, -90, nlat))[:, None]
    lon = np.deg2rad(np.arange(nlon) * 360 / nlon)[None, :]
    base = 300.0 - 45.0 * np.sin(lat) ** 2 - 8.0 * np.sin(lat) ** 4
    static = np.zeros((nlat, nlon))
    for _ in range(12):
        a, b = rng.integers(1, 6, 2)
        static += (
            rng.normal(0, 1.2)
            * np.cos(a * lon + rng.uniform(0, 2 * np.pi))
            * np.cos(b * lat + rng.uniform(0, 2 * np.pi))
        )
    land = (static > 0.5).astype(float)
    waves = [
        (int(rng.integers(3, 9)), rng.uniform(0.5, 3), rng.uniform(2, 6), rng.uniform(0, 6.3))
        for _ in range(6)
    ]
    out = np.empty((nt, nlat, nlon), np.float32)
    for t in range(nt):
        hour, day = t % 24, t / 24.0 + 180
        seasonal = 12.0 * np.cos(2 * np.pi * (day - 200) / 365) * np.sin(lat)
        diurnal = (2 + 4 * land) * np.cos(lat) * np.cos(2 * np.pi * hour / 24 + lon - 2.4)
        synoptic = sum(
            amp
            * np.cos(m * (lon - 2 * np.pi * t / (24 * c)) + phase)
            * np.cos(lat) ** 2
            * np.sin(2 * lat + 0.3 * m)
            for m, amp, c, phase in waves
        )
        noise_t = rng.normal(0, noise, (nlat, nlon)) if noise else 0.0
        out[t] = base + static + seasonal + diurnal + synoptic + noise_t
    return out


def noisy_field(shape: tuple[int, ...] = (24 * 30, 181, 360), *, seed: int = 1) -> np.ndarray:
    """White noise, 280 K +- 5 K (standard deviation), float32: nothing to predict."""
    rng = np.random.default_rng(seed)
    return (280.0 + 5.0 * rng.standard_normal(shape, dtype=np.float32)).astype(np.float32)


# --- size comparison -------------------------------------------------------------------------

Method = Callable[[np.ndarray], tuple[bytes, np.ndarray]]


def _methods(max_error: float, field: np.ndarray) -> dict[str, Method]:
    """Encoders of one chunk at ``max_error``: each returns (compressed bytes, decoded)."""
    zstd = numcodecs.Zstd(level=3)
    blosc = numcodecs.Blosc(cname="zstd", clevel=3, shuffle=numcodecs.Blosc.SHUFFLE)
    finite = field[np.isfinite(field)]
    vmin = float(finite.min())
    # CF scale/offset: step 2 * max_error shrunk by the float32 rounding of the decoded value
    cf_scale = 2 * (max_error - float(np.spacing(np.float32(np.abs(finite).max()))))
    keepbits = _bitround_keepbits(field, max_error)
    bitround = numcodecs.BitRound(keepbits)

    def bitpack(layout: str) -> Method:
        def run(x: np.ndarray) -> tuple[bytes, np.ndarray]:
            raw = encode_chunk_u8(x, max_error=max_error, layout=layout)
            blob = zstd.encode(raw)
            return blob, decode_chunk(zstd.decode(blob), x.dtype, x.shape)

        return run

    def cf_int16(x: np.ndarray) -> tuple[bytes, np.ndarray]:
        q = np.rint((x.astype(np.float64) - vmin) / cf_scale) - 32767
        packed = q.astype(np.int16)
        blob = blosc.encode(packed)
        restored = np.frombuffer(blosc.decode(blob), np.int16).reshape(x.shape)
        return blob, ((restored.astype(np.float64) + 32767) * cf_scale + vmin).astype(np.float32)

    def bitround_zstd(x: np.ndarray) -> tuple[bytes, np.ndarray]:
        rounded = bitround.encode(x)
        blob = zstd.encode(rounded)
        return blob, np.frombuffer(zstd.decode(blob), x.dtype).reshape(x.shape)

    def lossless(x: np.ndarray) -> tuple[bytes, np.ndarray]:
        blob = blosc.encode(x)
        return blob, np.frombuffer(blosc.decode(blob), x.dtype).reshape(x.shape)

    return {
        "bitpack (dense) + zstd-3": bitpack("dense"),
        "bitpack (delta) + zstd-3": bitpack("delta"),
        "CF int16 + blosc zstd-3 shuffle": cf_int16,
        f"BitRound (keepbits={keepbits}) + zstd-3": bitround_zstd,
        "blosc zstd-3 shuffle (lossless)": lossless,
    }


def _bitround_keepbits(field: np.ndarray, max_error: float) -> int:
    """Fewest mantissa bits whose BitRound error stays within ``max_error`` on ``field``."""
    x = field.astype(np.float64)
    for keepbits in range(1, 24):
        codec = numcodecs.BitRound(keepbits)
        rounded = np.asarray(codec.decode(codec.encode(field))).astype(np.float64)
        if np.nanmax(np.abs(rounded - x)) <= max_error:
            return keepbits
    return 23


def compare_sizes(
    field: np.ndarray, max_error: float, *, chunk_len: int = 24
) -> dict[str, dict[str, Any]]:
    """Compress ``field`` chunk by chunk (``chunk_len`` along axis 0) with every method.

    Parameters
    ----------
    field : numpy.ndarray of float32
        The data, e.g. from :func:`era5_like_t2m`.
    max_error : float
        The maximum absolute error every lossy method is configured for.
    chunk_len : int
        Chunk length along the first axis (the other axes are whole).

    Returns
    -------
    dict
        Per method: ``nbytes`` (compressed), ``bits_per_value``, ``ratio`` (raw / compressed)
        and ``max_error`` (measured).
    """
    methods = _methods(max_error, field)
    out: dict[str, dict[str, Any]] = {}
    for name, method in methods.items():
        nbytes, worst = 0, 0.0
        for start in range(0, field.shape[0], chunk_len):
            chunk = np.ascontiguousarray(field[start : start + chunk_len])
            blob, decoded = method(chunk)
            nbytes += len(blob)
            err = np.abs(decoded.astype(np.float64) - chunk)
            worst = max(worst, float(np.nanmax(err)))
        out[name] = {
            "nbytes": nbytes,
            "bits_per_value": 8 * nbytes / field.size,
            "ratio": field.nbytes / nbytes,
            "max_error": worst,
        }
    return out


def bitpack_throughput(chunk: np.ndarray, repeat: int = 15, **options: Any) -> tuple[float, float]:
    """Best-of-``repeat`` (encode, decode) throughput in GB/s of float input, one thread."""
    encode_chunk_u8(chunk, **options)  # warm up (scratch buffers, caches)
    blob = encode_chunk_u8(chunk, **options)
    enc = min(_timed(lambda: encode_chunk_u8(chunk, **options)) for _ in range(repeat))
    dec = min(_timed(lambda: decode_chunk(blob, chunk.dtype, chunk.shape)) for _ in range(repeat))
    return chunk.nbytes / enc / 1e9, chunk.nbytes / dec / 1e9


def _timed(func: Callable[[], Any]) -> float:
    t0 = time.perf_counter()
    func()
    return time.perf_counter() - t0


# --- asv --------------------------------------------------------------------------------------


class BitpackThroughput:
    """Encode/decode of one (24, 181, 360) float32 chunk (6.3 MB), NumPy kernels, one core."""

    params = [[8, 12, 16]]
    param_names = ["bits"]
    number = 5
    repeat = (3, 10, 20.0)
    warmup_time = 0.1

    def setup(self, bits: int) -> None:
        self.chunk = era5_like_t2m(nt=24)
        self.blob = encode_chunk_u8(self.chunk, bits=bits)

    def time_encode(self, bits: int) -> None:
        encode_chunk_u8(self.chunk, bits=bits)

    def time_decode(self, bits: int) -> None:
        decode_chunk(self.blob, self.chunk.dtype, self.chunk.shape)

    def track_encoded_bytes(self, bits: int) -> int:
        return len(self.blob)


class BitpackMaxErrorThroughput:
    """The same chunk in ``max_error`` mode (width chosen per chunk, bound verified)."""

    params = [[0.01, 0.05], ["dense", "delta"]]
    param_names = ["max_error", "layout"]
    number = 5
    repeat = (3, 10, 20.0)
    warmup_time = 0.1

    def setup(self, max_error: float, layout: str) -> None:
        self.chunk = era5_like_t2m(nt=24)
        self.options = {"max_error": max_error, "layout": layout}
        self.blob = encode_chunk_u8(self.chunk, **self.options)

    def time_encode(self, max_error: float, layout: str) -> None:
        encode_chunk_u8(self.chunk, **self.options)

    def time_decode(self, max_error: float, layout: str) -> None:
        decode_chunk(self.blob, self.chunk.dtype, self.chunk.shape)
