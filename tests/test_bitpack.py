"""Tests of the bitpack codecs: kernels, Zarr v3 serializer, numcodecs twin, entry points."""

from __future__ import annotations

import doctest
import json
import math
import struct
import subprocess
import sys
import textwrap
import tracemalloc

import hypothesis.extra.numpy as hnp
import hypothesis.strategies as st
import numcodecs
import numpy as np
import pytest
import xarray as xr
import zarr
from hypothesis import HealthCheck, given, settings
from zarr.codecs import ZstdCodec

from xarray_zarrwrite.codecs import Bitpack, BitpackCodec, _kernels, bitpack, bitpack_v2
from xarray_zarrwrite.codecs._kernels import (
    HEADER_SIZE,
    MAX_UNSHAPED_COUNT,
    decode_chunk,
    encode_chunk,
    pack_bits,
    read_header,
    unpack_bits,
)
from xarray_zarrwrite.errors import CodecError

SETTINGS = settings(max_examples=120, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FLOAT_DTYPES = ("float16", "float32", "float64")
LAYOUTS = ("dense", "delta")
_HEADER = struct.Struct("<4sBBBBBBHIQdd")


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def reference_pack(codes: np.ndarray, nbits: int) -> np.ndarray:
    """Slow, obviously correct little-endian bit packing."""
    if nbits == 0 or codes.size == 0:
        return np.zeros((codes.size * nbits + 7) // 8, dtype=np.uint8)
    c = codes.astype(np.uint64)
    bits = ((c[:, None] >> np.arange(nbits, dtype=np.uint64)) & 1).astype(np.uint8)
    return np.packbits(bits.reshape(-1), bitorder="little")


def check_round_trip(x: np.ndarray, y: np.ndarray, blob: bytes, bits=None, max_error=None):
    """Assert the documented guarantees of one encoded chunk."""
    assert y.dtype == x.dtype
    assert y.shape == x.shape
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    inf = np.isinf(x)
    np.testing.assert_array_equal(y[inf], x[inf])
    fin = np.isfinite(x)
    assert np.isfinite(y[fin]).all()
    if not fin.any():
        return
    xf, yf = x[fin].astype(np.float64), y[fin].astype(np.float64)
    err = np.abs(yf - xf)
    if max_error is not None:
        assert err.max() <= max_error, (err.max(), max_error)
        return
    header = read_header(blob)
    vmin, vmax = xf.min(), xf.max()
    nres = sum(bool(f) for f in (np.isnan(x).any(), np.isposinf(x).any(), np.isneginf(x).any()))
    if vmax > vmin and (1 << bits) - nres >= 2:
        # bits mode: scale = (max - min) / (2**bits - 1 - nres) (nudged up by a few ulps at most)
        expected = (vmax - vmin) / ((1 << bits) - 1 - nres)
        assert header.nbits == bits
        assert expected <= header.scale <= expected * (1 + 1e-12) + 1e-300
    # |y - x| <= scale / 2 + ulp(y) / 2, plus float64 arithmetic (relative 2**-50)
    ulp = spacing(np.maximum(np.abs(x[fin]), np.abs(y[fin])))
    bound = header.scale / 2 + ulp / 2 + 2.0**-50 * (np.abs(xf) + (vmax - vmin))
    assert (err <= bound).all(), (err.max(), header.scale)


def spacing(v: np.ndarray) -> np.ndarray:
    """np.spacing as float64, without overflowing at the dtype's largest value."""
    top = np.nextafter(np.finfo(v.dtype).max, 0, dtype=v.dtype)
    return np.spacing(np.minimum(v, top)).astype(np.float64)


def finite_values(dtype: str, *, extreme: bool = False) -> st.SearchStrategy[float]:
    if dtype == "float64":
        hi = 5e307 if extreme else 1e6  # the code arithmetic must not overflow float64
    elif extreme:
        hi = float(np.finfo(dtype).max)
    else:
        hi = 3e4 if dtype == "float16" else 1e6
    return st.floats(-hi, hi, allow_nan=False, allow_infinity=False, width=int(dtype[5:]))


@st.composite
def chunks(draw, *, specials: bool = True, extreme: bool = False, max_side: int = 40):
    """Float arrays of any dtype and shape; some with NaN/inf, some smooth ramps."""
    dtype = draw(st.sampled_from(FLOAT_DTYPES))
    shape = draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=max_side))
    finite = finite_values(dtype, extreme=extreme)
    elems = (
        st.one_of(finite, finite, finite, st.sampled_from([math.nan, math.inf, -math.inf]))
        if specials
        else finite
    )
    x = draw(hnp.arrays(dtype, shape, elements=elems))
    if draw(st.booleans()):  # smooth data, not just a handful of distinct values
        ramp = np.linspace(draw(finite), draw(finite), x.size).reshape(shape).astype(dtype)
        x = np.where(np.isfinite(x), ramp, x)
    return x


# ---------------------------------------------------------------------------------------------
# bit packing kernels
# ---------------------------------------------------------------------------------------------


def test_pack_bits_known_bytes():
    # value i at bits [4i, 4i+4), least significant bit first
    assert pack_bits(np.array([1, 2, 3], dtype=np.uint32), 4).tolist() == [0x21, 0x03]
    assert pack_bits(np.array([0x7FF, 0x001], dtype=np.uint32), 11).tolist() == [
        0xFF,
        0x0F,
        0x00,
    ]
    assert pack_bits(np.array([1, 0, 1], dtype=np.uint32), 1).tolist() == [0b101]


@pytest.mark.parametrize("nbits", range(33))
@pytest.mark.parametrize("n", [0, 1, 7, 63, 64, 65, 1000, _kernels.BLOCK_SIZE + 13])
def test_pack_unpack_every_width(nbits, n):
    rng = np.random.default_rng(nbits * 1000 + n)
    codes = rng.integers(0, 1 << nbits, n, dtype=np.uint64).astype(np.uint32)
    packed = pack_bits(codes, nbits)
    assert packed.size == (n * nbits + 7) // 8  # dense: not rounded to whole bytes per value
    np.testing.assert_array_equal(packed, reference_pack(codes, nbits))
    np.testing.assert_array_equal(unpack_bits(packed, nbits, n), codes)
    np.testing.assert_array_equal(unpack_bits(packed.tobytes() + b"junk", nbits, n), codes)


@SETTINGS
@given(
    nbits=st.integers(0, 32),
    data=st.data(),
)
def test_pack_unpack_property(nbits, data):
    codes = data.draw(
        hnp.arrays(np.uint32, st.integers(0, 300), elements=st.integers(0, (1 << nbits) - 1))
    )
    packed = pack_bits(codes, nbits)
    np.testing.assert_array_equal(packed, reference_pack(codes, nbits))
    np.testing.assert_array_equal(unpack_bits(packed, nbits, codes.size), codes)


def test_pack_bits_ignores_high_bits_and_validates():
    codes = np.array([0xFFFF_FFFF, 0x1_0003], dtype=np.uint64)
    assert unpack_bits(pack_bits(codes, 3), 3, 2).tolist() == [7, 3]
    with pytest.raises(CodecError, match="nbits"):
        pack_bits([1], 33)
    with pytest.raises(CodecError, match="unsigned"):
        pack_bits(np.array([-1]), 3)
    with pytest.raises(CodecError, match="too short"):
        unpack_bits(b"\x00", 12, 1)


# ---------------------------------------------------------------------------------------------
# quantisation round trips
# ---------------------------------------------------------------------------------------------


@SETTINGS
@given(x=chunks(), bits=st.integers(1, 32), layout=st.sampled_from(LAYOUTS))
def test_round_trip_bits(x, bits, layout):
    blob = encode_chunk(x, bits=bits, layout=layout)
    y = decode_chunk(blob, x.dtype, x.shape)
    check_round_trip(x, y, blob, bits=bits)


@SETTINGS
@given(
    x=chunks(),
    max_error=st.sampled_from([1e-3, 0.01, 0.05, 0.3, 1.0, 7.5, 1e3, 1e5]),
    layout=st.sampled_from(LAYOUTS),
)
def test_round_trip_max_error(x, max_error, layout):
    try:
        blob = encode_chunk(x, max_error=max_error, layout=layout)
    except CodecError as e:  # only for ranges needing > 32 bits, or below float64 resolution
        fin = x[np.isfinite(x)].astype(np.float64)
        if "at most 32" in str(e):
            assert fin.max() - fin.min() > 2**31 * max_error
        else:
            assert "resolution" in str(e)
            assert x.dtype == np.float64 and max_error < 1e-13 * np.abs(fin).max()
        return
    y = decode_chunk(blob, x.dtype, x.shape)
    check_round_trip(x, y, blob, max_error=max_error)


@SETTINGS
@given(x=chunks(specials=False, extreme=True), bits=st.integers(1, 32))
def test_extremes_do_not_wrap(x, bits):
    """Values at the ends of the dtype's range round-trip within bound, no overflow/wrap."""
    hi = float(np.finfo(x.dtype).max) if x.dtype != np.float64 else 5e307
    x = np.concatenate([[-hi], x.reshape(-1), [hi]]).astype(x.dtype)
    blob = encode_chunk(x, bits=bits)
    y = decode_chunk(blob, x.dtype, x.shape)
    check_round_trip(x, y, blob, bits=bits)
    assert y[0] < 0 < y[-1]


@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("max_error", [1e-4, 0.01, 0.05])
def test_max_error_is_strict(dtype, max_error):
    rng = np.random.default_rng(0)
    scale = 30.0 if dtype == "float16" else 50.0
    x = (rng.standard_normal(50_000) * scale + (0 if dtype == "float16" else 280)).astype(dtype)
    blob = encode_chunk(x, max_error=max_error)
    y = decode_chunk(blob, dtype, x.shape)
    assert np.abs(y.astype(np.float64) - x).max() <= max_error


@pytest.mark.parametrize("layout", LAYOUTS)
def test_multi_block_chunks(layout):
    rng = np.random.default_rng(1)
    x = np.cumsum(rng.normal(size=3 * _kernels.BLOCK_SIZE + 5)).astype(np.float32)
    x[::1001] = np.nan
    for kw in ({"bits": 12}, {"bits": 16}, {"bits": 8}, {"max_error": 0.01}):
        blob = encode_chunk(x, layout=layout, **kw)
        check_round_trip(x, decode_chunk(blob, x.dtype, x.shape), blob, **kw)


@pytest.mark.parametrize("layout", LAYOUTS)
@pytest.mark.parametrize("option", [{"bits": 12}, {"max_error": 0.01}])
@pytest.mark.parametrize("dtype", FLOAT_DTYPES)
@pytest.mark.parametrize("value", [280.5, 0.0, -1e-3, math.nan, math.inf, -math.inf])
def test_constant_chunk_costs_zero_bits(layout, option, dtype, value):
    x = np.full((7, 13), value, dtype=dtype)
    blob = encode_chunk(x, layout=layout, **option)
    assert len(blob) == HEADER_SIZE  # payload == header only
    assert read_header(blob).nbits == 0
    y = decode_chunk(blob, dtype, x.shape)
    np.testing.assert_array_equal(y, x)


def test_all_nan_chunk_and_empty_chunk():
    x = np.full((5, 5), np.nan, dtype=np.float32)
    for layout in LAYOUTS:
        blob = encode_chunk(x, bits=8, layout=layout)
        assert np.isnan(decode_chunk(blob, "float32", (5, 5))).all()
    empty = np.zeros((0, 3), dtype=np.float64)
    blob = encode_chunk(empty, max_error=0.1)
    assert decode_chunk(blob, "float64", (0, 3)).shape == (0, 3)


def test_nan_and_infinities_use_reserved_top_codes():
    x = np.array([0.0, 1.0, np.nan, np.inf, -np.inf], dtype=np.float32)
    blob = encode_chunk(x, bits=4)
    header = read_header(blob)
    assert header.specials[0][0] == 15 and math.isnan(header.specials[0][1])
    assert header.specials[1:] == ((14, math.inf), (13, -math.inf))
    codes = unpack_bits(np.frombuffer(blob, np.uint8)[HEADER_SIZE:], 4, 5)
    assert codes.tolist() == [0, 12, 15, 14, 13]  # finite codes 0..12, never a reserved one
    np.testing.assert_array_equal(decode_chunk(blob, "float32", (5,)), x)


def test_small_width_with_specials_is_bumped():
    x = np.array([0.0, 1.0, np.nan, np.inf, -np.inf], dtype=np.float64)
    blob = encode_chunk(x, bits=1)
    assert read_header(blob).nbits == 3  # 2 finite levels + 3 reserved codes
    np.testing.assert_array_equal(decode_chunk(blob, "float64", (5,)), x)


def test_infinities_reject():
    x = np.array([1.0, np.inf], dtype=np.float32)
    with pytest.raises(CodecError, match="infinities='reject'"):
        encode_chunk(x, bits=8, infinities="reject")
    np.testing.assert_array_equal(decode_chunk(encode_chunk(x, bits=8)), x)
    # NaN is always fine
    z = np.array([1.0, np.nan], dtype=np.float32)
    assert np.isnan(decode_chunk(encode_chunk(z, bits=8, infinities="reject"))[1])


def test_float64_range_overflow_is_rejected():
    x = np.array([-1.7e308, 1.7e308])
    with pytest.raises(CodecError, match="overflows float64"):
        encode_chunk(x, bits=8)


def test_max_error_needing_more_than_32_bits():
    x = np.array([0.0, 1e6])
    with pytest.raises(CodecError, match="at most 32"):
        encode_chunk(x, max_error=1e-8)


def test_non_float_input_is_rejected():
    with pytest.raises(CodecError, match="float16/float32/float64"):
        encode_chunk(np.arange(4), bits=8)


def test_big_endian_input_round_trips_with_its_byte_order():
    x = np.linspace(0, 1, 100).astype(">f4")
    blob = encode_chunk(x, bits=16)
    y = decode_chunk(blob, "float32", (100,))
    assert y.dtype == np.dtype(">f4")
    assert np.abs(y - x).max() <= 0.5 / 65535 + 1e-7
    assert blob == encode_chunk(x.astype("<f4"), bits=16)[:5] + blob[5:]


def test_delta_layout_is_smaller_after_zstd_on_smooth_data():
    t = np.linspace(0, 6, 200_000)
    x = (280 + 10 * np.sin(t) + np.random.default_rng(0).normal(0, 0.02, t.size)).astype("f4")
    zstd = numcodecs.Zstd(level=3)
    dense = len(zstd.encode(encode_chunk(x, max_error=0.01)))
    delta = len(zstd.encode(encode_chunk(x, max_error=0.01, layout="delta")))
    assert delta < 0.8 * dense


# ---------------------------------------------------------------------------------------------
# malformed payloads
# ---------------------------------------------------------------------------------------------


def _sample_blob(layout="dense", **kw):
    x = np.linspace(250, 300, 1000, dtype=np.float32)
    x[::97] = np.nan
    return encode_chunk(x, layout=layout, **(kw or {"bits": 12}))


@settings(max_examples=150, deadline=None)
@given(payload=st.binary(max_size=200))
def test_random_bytes_raise_codec_error(payload):
    for kw in ({}, {"dtype": "float32", "shape": (10,)}):
        with pytest.raises(CodecError):
            decode_chunk(payload, **kw)


@settings(max_examples=100, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), data=st.data())
def test_truncated_payload_raises(layout, data):
    blob = _sample_blob(layout)
    cut = data.draw(st.integers(0, len(blob) - 1))
    with pytest.raises(CodecError):
        decode_chunk(blob[:cut], "float32", (1000,))
    with pytest.raises(CodecError):
        decode_chunk(blob + b"\x00")  # trailing bytes


@settings(max_examples=150, deadline=None)
@given(
    layout=st.sampled_from(LAYOUTS),
    offset=st.integers(0, HEADER_SIZE - 1),
    value=st.integers(0, 255),
    shaped=st.booleans(),
)
def test_header_byte_edits_never_crash(layout, offset, value, shaped):
    blob = bytearray(_sample_blob(layout))
    blob[offset] = value
    kw = {"dtype": "float32", "shape": (1000,)} if shaped else {}
    try:
        y = decode_chunk(bytes(blob), **kw)
    except CodecError:
        return
    assert y.size == 1000 and y.dtype.kind == "f"


@settings(max_examples=100, deadline=None)
@given(layout=st.sampled_from(LAYOUTS), data=st.data())
def test_payload_corruption_never_crashes(layout, data):
    blob = bytearray(_sample_blob(layout))
    for _ in range(data.draw(st.integers(1, 5))):
        i = data.draw(st.integers(HEADER_SIZE, len(blob) - 1))
        blob[i] = data.draw(st.integers(0, 255))
    try:
        y = decode_chunk(bytes(blob), "float32", (1000,))
    except CodecError:  # delta layout detects codes out of range
        return
    assert y.shape == (1000,)


def _with_header(blob: bytes, **fields) -> bytes:
    names = "magic version flags nbits dtype layout width reserved anchor count ref scale"
    values = dict(zip(names.split(), _HEADER.unpack(blob[:HEADER_SIZE]), strict=True))
    values.update(fields)
    return _HEADER.pack(*values.values()) + blob[HEADER_SIZE:]


@pytest.mark.parametrize(
    "fields",
    [
        {"magic": b"XZBQ"},
        {"version": 2},
        {"flags": 0x80},
        {"reserved": 1},
        {"nbits": 33},
        {"nbits": 13},
        {"dtype": 9},
        {"layout": 2},
        {"width": 5},
        {"anchor": 1},
        {"count": 999},
        {"count": 2**40},
        {"count": 2**64 - 1},
        {"ref": math.nan},
        {"ref": math.inf},
        {"scale": -1.0},
        {"scale": math.nan},
    ],
)
def test_header_field_edits_raise(fields):
    blob = _with_header(_sample_blob(), **fields)
    tracemalloc.start()
    try:
        with pytest.raises(CodecError):
            decode_chunk(blob)
        with pytest.raises(CodecError):
            decode_chunk(blob, "float32", (1000,))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 10_000_000  # nothing sized from the forged header was allocated


def test_forged_reference_and_scale_decode_without_overflow():
    blob = _with_header(_sample_blob(), ref=1e308, scale=1e308)
    y = decode_chunk(blob, "float32", (1000,))  # garbage, but finite/NaN and no warning
    assert not np.isinf(y).any()


def test_float64_range_at_the_limit_is_rejected():
    with pytest.raises(CodecError, match="float64 limit"):
        encode_chunk(np.array([-8e307, 8e307]), bits=1)


def test_huge_count_with_zero_width_is_bounded():
    blob = encode_chunk(np.zeros(10, dtype=np.float64), bits=8)
    assert len(blob) == HEADER_SIZE
    forged = _with_header(blob, count=MAX_UNSHAPED_COUNT + 1)
    with pytest.raises(CodecError, match="without an expected shape"):
        decode_chunk(forged)
    with pytest.raises(CodecError, match="shape"):
        decode_chunk(forged, "float64", (10,))
    with pytest.raises(CodecError, match="float64"):
        decode_chunk(blob, "float32", (10,))


# ---------------------------------------------------------------------------------------------
# options and the Zarr v3 codec
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {},
        {"bits": 0},
        {"bits": 33},
        {"bits": -1},
        {"bits": 1.5},
        {"bits": True},
        {"max_error": 0.0},
        {"max_error": -0.1},
        {"max_error": math.nan},
        {"max_error": math.inf},
        {"max_error": "0.1"},
        {"bits": 8, "max_error": 0.1},
        {"bits": 8, "infinities": "clip"},
        {"bits": 8, "layout": "shuffle"},
    ],
)
@pytest.mark.parametrize("cls", [BitpackCodec, Bitpack])
def test_invalid_options_raise_at_construction(cls, kwargs):
    with pytest.raises(CodecError):
        cls(**kwargs)


@pytest.mark.parametrize(
    "codec",
    [
        BitpackCodec(bits=12),
        BitpackCodec(max_error=0.01),
        BitpackCodec(bits=1, infinities="reject", layout="delta"),
    ],
)
def test_to_dict_from_dict_round_trip(codec):
    d = codec.to_dict()
    assert d["name"] == "xarray_zarrwrite.bitpack"
    assert BitpackCodec.from_dict(json.loads(json.dumps(d))) == codec
    assert zarr.registry.get_codec_class("xarray_zarrwrite.bitpack") is BitpackCodec


def test_from_dict_rejects_unknown_keys():
    with pytest.raises(CodecError, match="unknown"):
        BitpackCodec.from_dict(
            {"name": "xarray_zarrwrite.bitpack", "configuration": {"bits": 8, "foo": 1}}
        )
    with pytest.raises(ValueError):
        BitpackCodec.from_dict({"name": "bytes", "configuration": {"bits": 8}})


def test_compute_encoded_size_is_not_fixed():
    assert BitpackCodec.is_fixed_size is False
    with pytest.raises(NotImplementedError):
        BitpackCodec(bits=8).compute_encoded_size(100, None)  # type: ignore[arg-type]


@pytest.mark.parametrize("dtype", ["int16", "uint8", "complex64", "bool"])
def test_validate_rejects_non_float_arrays(dtype):
    with pytest.raises(CodecError, match="only encodes"):
        zarr.create_array(
            zarr.storage.MemoryStore(), shape=(4,), dtype=dtype, serializer=BitpackCodec(bits=8)
        )


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    data=st.data(),
    dtype=st.sampled_from(FLOAT_DTYPES),
    option=st.sampled_from([{"bits": 7}, {"bits": 16}, {"max_error": 0.05}]),
    layout=st.sampled_from(LAYOUTS),
)
def test_zarr_v3_array_round_trip_with_edge_chunks(data, dtype, option, layout):
    shape = data.draw(hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=12))
    chunk_shape = tuple(data.draw(st.integers(1, s)) for s in shape)
    x = data.draw(hnp.arrays(dtype, shape, elements=finite_values(dtype).map(lambda v: v / 1e3)))
    x = x.copy()
    x.reshape(-1)[:: data.draw(st.integers(2, 9))] = np.nan
    store = zarr.storage.MemoryStore()
    a = zarr.create_array(
        store,
        shape=shape,
        chunks=chunk_shape,
        dtype=dtype,
        serializer=BitpackCodec(layout=layout, **option),
        compressors=ZstdCodec(level=3),
        fill_value=np.nan,
    )
    a[...] = x
    y = zarr.open_array(store, mode="r")[...]
    assert y.dtype == x.dtype and y.shape == x.shape
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    fin = np.isfinite(x)
    err = np.abs(y[fin].astype(np.float64) - x[fin])
    if "max_error" in option:
        assert err.max(initial=0) <= option["max_error"]
    else:
        # per chunk: <= range / (2**bits - 2) / 2 + ulp; the whole array's range bounds it
        rng_ = float(np.ptp(x[fin].astype(np.float64))) if fin.any() else 0.0
        ulp = np.spacing(np.abs(x[fin])).astype(np.float64)
        assert (err <= rng_ / ((1 << option["bits"]) - 2) / 2 + ulp + 1e-300).all()


def test_zarr_v3_sharded_array_round_trip():
    x = np.random.default_rng(5).normal(size=(40, 50)).astype(np.float32)
    x[3, 3] = np.nan
    store = zarr.storage.MemoryStore()
    a = zarr.create_array(
        store,
        shape=x.shape,
        chunks=(10, 10),
        shards=(20, 50),
        dtype="float32",
        serializer=BitpackCodec(bits=10, layout="delta"),
        compressors=ZstdCodec(),
    )
    a[...] = x
    y = zarr.open_array(store, mode="r")[...]
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    assert np.nanmax(np.abs(y - x)) <= (np.nanmax(x) - np.nanmin(x)) / 1022 / 2 + 1e-6


def _era5_like(nt=6, nlat=19, nlon=36):
    t = np.arange(nt)[:, None, None]
    lat = np.linspace(90, -90, nlat)[None, :, None]
    lon = np.linspace(0, 350, nlon)[None, None, :]
    t2m = 288 - 30 * np.sin(np.deg2rad(lat)) ** 2 + 5 * np.cos(2 * np.pi * t / 24 + lon / 57.3)
    t2m = t2m.astype("float32")
    t2m[0, 0, :5] = np.nan
    return xr.Dataset(
        {"t2m": (("time", "lat", "lon"), t2m)},
        coords={"time": np.arange(nt), "lat": lat.ravel(), "lon": lon.ravel()},
    )


@pytest.mark.parametrize("layout", LAYOUTS)
def test_xarray_round_trip_zarr_v3(layout):
    ds = _era5_like()
    store = zarr.storage.MemoryStore()
    encoding = {
        "t2m": {
            "serializer": BitpackCodec(max_error=0.01, layout=layout),
            "compressors": [ZstdCodec(level=3)],
            "chunks": (4, 10, 20),
        }
    }
    ds.to_zarr(store, zarr_format=3, encoding=encoding, consolidated=False)
    back = xr.open_zarr(store, consolidated=False)
    assert back.t2m.encoding["serializer"] == BitpackCodec(max_error=0.01, layout=layout)
    assert back.t2m.dtype == np.float32
    np.testing.assert_array_equal(np.isnan(back.t2m.values), np.isnan(ds.t2m.values))
    assert float(abs(back.t2m - ds.t2m).max()) <= 0.01


def test_xarray_round_trip_zarr_v2():
    ds = _era5_like()
    store = zarr.storage.MemoryStore()
    encoding = {
        "t2m": {
            "filters": [Bitpack(max_error=0.01)],
            "compressors": [numcodecs.Zstd(level=3)],
            "chunks": (4, 10, 20),
        }
    }
    ds.to_zarr(store, zarr_format=2, encoding=encoding, consolidated=False)
    back = xr.open_zarr(store, consolidated=False)
    np.testing.assert_array_equal(np.isnan(back.t2m.values), np.isnan(ds.t2m.values))
    assert float(abs(back.t2m - ds.t2m).max()) <= 0.01


# ---------------------------------------------------------------------------------------------
# numcodecs twin (Zarr format 2)
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "codec", [Bitpack(bits=12), Bitpack(max_error=0.5, infinities="reject", layout="delta")]
)
def test_numcodecs_config_and_repr(codec):
    config = codec.get_config()
    assert config["id"] == "xarray_zarrwrite.bitpack"
    again = numcodecs.get_codec(json.loads(json.dumps(config)))
    assert isinstance(again, Bitpack) and again == codec
    assert repr(codec).startswith("Bitpack(")


def test_numcodecs_encode_matches_v3_bytes_and_out():
    x = np.linspace(-5, 5, 777).astype(np.float64).reshape(7, 111)
    codec = Bitpack(bits=11)
    enc = codec.encode(x)
    assert enc.tobytes() == encode_chunk(x, bits=11)
    out = np.empty(777, dtype=np.float64)
    codec.decode(enc, out=out)
    np.testing.assert_array_equal(out, codec.decode(enc.tobytes()))


@pytest.mark.parametrize("order", ["C", "F"])
@pytest.mark.parametrize("as_compressor", [False, True])
def test_zarr_v2_array_round_trip(order, as_compressor):
    x = np.random.default_rng(3).normal(280, 10, (23, 17)).astype(np.float32)
    x[1, 2] = np.nan
    store = zarr.storage.MemoryStore()
    codec = Bitpack(max_error=0.02, layout="delta")
    kw = (
        {"compressors": codec, "filters": None}
        if as_compressor
        else {"filters": [codec], "compressors": numcodecs.Zstd(level=3)}
    )
    a = zarr.create_array(
        store, shape=x.shape, chunks=(10, 6), dtype="float32", zarr_format=2, order=order, **kw
    )
    a[...] = x
    y = zarr.open_array(store, mode="r")[...]
    np.testing.assert_array_equal(np.isnan(y), np.isnan(x))
    assert np.nanmax(np.abs(y - x)) <= 0.02


# ---------------------------------------------------------------------------------------------
# entry points: a fresh process that never imports xarray_zarrwrite itself
# ---------------------------------------------------------------------------------------------


_READER = textwrap.dedent(
    """
    import sys
    import numpy as np
    import zarr

    assert "xarray_zarrwrite" not in sys.modules
    a = zarr.open_array(sys.argv[1], mode="r")
    y = a[...]
    expected = np.load(sys.argv[2])
    assert y.dtype == expected.dtype, (y.dtype, expected.dtype)
    np.testing.assert_array_equal(np.isnan(y), np.isnan(expected))
    assert np.nanmax(np.abs(y.astype("f8") - expected)) <= float(sys.argv[3])
    assert "xarray_zarrwrite" in sys.modules  # loaded by zarr/numcodecs through the entry point
    print("OK")
    """
)


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_fresh_process_decodes_through_entry_point(tmp_path, zarr_format):
    x = np.random.default_rng(4).normal(0, 1, (30, 20)).astype(np.float32)
    x[0, 0] = np.nan
    path = tmp_path / "a.zarr"
    if zarr_format == 3:
        kw = {"serializer": BitpackCodec(max_error=0.001), "compressors": ZstdCodec()}
    else:
        kw = {"filters": [Bitpack(max_error=0.001)], "compressors": numcodecs.Zstd()}
    a = zarr.create_array(
        str(path), shape=x.shape, chunks=(16, 16), dtype="float32", zarr_format=zarr_format, **kw
    )
    a[...] = x
    np.save(tmp_path / "x.npy", x)
    proc = subprocess.run(
        [sys.executable, "-c", _READER, str(path), str(tmp_path / "x.npy"), "0.001"],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "OK"


# ---------------------------------------------------------------------------------------------
# doctests of the modules
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("module", [_kernels, bitpack, bitpack_v2])
def test_doctests(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0
