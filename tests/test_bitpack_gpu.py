"""GPU bitpack kernels: every GPU encode equals the CPU encode byte for byte.

Skipped cleanly without CuPy or without a CUDA device.
"""

from __future__ import annotations

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numpy as np
import pytest
import zarr
from hypothesis import HealthCheck, given, settings

cupy = pytest.importorskip("cupy")


def _device_count() -> int:
    try:
        return int(cupy.cuda.runtime.getDeviceCount())
    except (cupy.cuda.runtime.CUDARuntimeError, RuntimeError, OSError):  # no driver/device
        return 0


pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(_device_count() == 0, reason="no CUDA device available"),
]

from xarray_zarrwrite.codecs import BitpackCodec
from xarray_zarrwrite.codecs._gpu import (
    decode_chunk_gpu,
    encode_chunk_gpu,
    pack_bits_gpu,
    unpack_bits_gpu,
)
from xarray_zarrwrite.codecs._kernels import (
    decode_chunk,
    encode_chunk,
    pack_bits,
)
from xarray_zarrwrite.errors import CodecError

LAYOUTS = ("dense", "delta")


@st.composite
def chunks(draw):
    """Float arrays of any dtype and shape, with NaN/inf, some of them smooth ramps."""
    dtype = draw(st.sampled_from(["float16", "float32", "float64"]))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=40))
    hi = {"float16": 3e4, "float32": 1e6, "float64": 1e6}[dtype]
    finite = st.floats(-hi, hi, allow_nan=False, allow_infinity=False, width=int(dtype[5:]))
    specials = st.sampled_from([np.nan, np.inf, -np.inf])
    x = draw(hnp.arrays(dtype, shape, elements=st.one_of(finite, finite, finite, specials)))
    if draw(st.booleans()):
        ramp = np.linspace(draw(finite), draw(finite), x.size).reshape(shape).astype(dtype)
        x = np.where(np.isfinite(x), ramp, x)
    return x


SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=list(HealthCheck))


@pytest.mark.parametrize("nbits", range(33))
@pytest.mark.parametrize("n", [0, 1, 31, 33, 1000, 100_003])
def test_pack_bits_gpu_equals_cpu(nbits, n):
    rng = np.random.default_rng(nbits + n)
    codes = rng.integers(0, 1 << nbits, n, dtype=np.uint64).astype(np.uint32)
    packed = pack_bits_gpu(cupy.asarray(codes), nbits)
    assert packed.get().tobytes() == pack_bits(codes, nbits).tobytes()
    np.testing.assert_array_equal(unpack_bits_gpu(packed, nbits, n).get(), codes)


def _equal_or_both_raise(x: np.ndarray, **options) -> bytes | None:
    try:
        cpu = encode_chunk(x, **options)
    except CodecError:
        with pytest.raises(CodecError):
            encode_chunk_gpu(cupy.asarray(x), **options)
        return None
    gpu = encode_chunk_gpu(cupy.asarray(x), **options).get().tobytes()
    assert gpu == cpu
    return cpu


@SETTINGS
@given(x=chunks(), bits=st.integers(1, 32), layout=st.sampled_from(LAYOUTS))
def test_gpu_encode_equals_cpu_bits(x, bits, layout):
    blob = _equal_or_both_raise(x, bits=bits, layout=layout)
    assert blob is not None
    y_gpu = decode_chunk_gpu(cupy.frombuffer(blob, dtype=cupy.uint8), x.dtype, x.shape).get()
    np.testing.assert_array_equal(y_gpu, decode_chunk(blob, x.dtype, x.shape))


@SETTINGS
@given(
    x=chunks(),
    max_error=st.sampled_from([1e-3, 0.01, 0.05, 1.0, 1e3]),
    layout=st.sampled_from(LAYOUTS),
)
def test_gpu_encode_equals_cpu_max_error(x, max_error, layout):
    blob = _equal_or_both_raise(x, max_error=max_error, layout=layout)
    if blob is not None:
        y = decode_chunk_gpu(cupy.frombuffer(blob, dtype=cupy.uint8), x.dtype, x.shape).get()
        np.testing.assert_array_equal(y, decode_chunk(blob, x.dtype, x.shape))


def test_gpu_large_chunk_equals_cpu():
    rng = np.random.default_rng(0)
    x = (np.cumsum(rng.normal(size=(64, 181, 360)), axis=-1) * 0.1 + 280).astype(np.float32)
    x[0, 0, :10] = np.nan
    for options in ({"bits": 12}, {"bits": 16}, {"max_error": 0.01, "layout": "delta"}):
        _equal_or_both_raise(x, **options)


def test_zarr_gpu_buffers_round_trip():
    x = cupy.asarray(np.linspace(250, 320, 4000, dtype=np.float32).reshape(40, 100))
    with zarr.config.enable_gpu():
        a = zarr.create_array(
            zarr.storage.MemoryStore(),
            shape=x.shape,
            chunks=(16, 32),
            dtype="float32",
            serializer=BitpackCodec(max_error=0.01),
        )
        a[...] = x
        y = a[...]
    assert isinstance(y, cupy.ndarray)
    assert float(cupy.abs(y - x).max()) <= 0.01
