"""Bitpack decoders check headers against the chunk before allocating; partial writes into
bitpack arrays are recognised."""

from __future__ import annotations

import tracemalloc

import numcodecs
import numpy as np
import pandas as pd
import pytest
import xarray as xr
import zarr
from zarr.storage import MemoryStore

from xarray_zarrwrite.codecs import (
    Bitpack,
    BitpackCodec,
    decode_chunk,
    encode_chunk,
    requantises_on_partial_write,
)
from xarray_zarrwrite.codecs._kernels import _HEADER, HEADER_SIZE, MAX_UNSHAPED_COUNT
from xarray_zarrwrite.codecs.bitpack_v2 import with_chunk_size
from xarray_zarrwrite.errors import CodecError


def forged_constant_chunk(count: int) -> bytes:
    """A 40-byte chunk (the header of a constant chunk) that claims ``count`` float64s."""
    blob = encode_chunk(np.zeros(10, dtype=np.float64), bits=8)
    assert len(blob) == HEADER_SIZE
    fields = list(_HEADER.unpack(blob))
    fields[9] = count
    return _HEADER.pack(*fields)


def small_dataset() -> xr.Dataset:
    time = pd.date_range("2000-01-01", periods=4, freq="D")
    values = np.linspace(0.0, 1.0, 4 * 6).reshape(4, 6)
    return xr.Dataset({"v": (("time", "x"), values)}, coords={"time": time, "x": np.arange(6)})


@pytest.mark.parametrize("zarr_format", [2, 3])
def test_forged_chunk_in_template_is_refused_without_allocating(tmp_path, zarr_format):
    path = tmp_path / "t.zarr"
    ds = small_dataset()
    ds.fastzarr.to_template(
        path,
        zarr_format=zarr_format,
        chunks={"time": 2},
        compression=None,
        packing={"codec": "bitpack", "bits": 8},
    )
    ds.fastzarr.write_region(path)
    arr = zarr.open_array(path / "v")
    forged = forged_constant_chunk(MAX_UNSHAPED_COUNT)  # no compressor: the file is the blob
    if zarr_format == 2:
        assert arr.metadata.filters[0].chunk_size == 2 * 6
        key = path / "v" / "1.0"
    else:
        key = path / "v" / "c" / "1" / "0"
    assert key.exists()
    key.write_bytes(forged)
    tracemalloc.start()
    try:
        with pytest.raises(CodecError, match="values"):
            zarr.open_array(path / "v")[2:4]
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 2**20  # 2**27 float64 would be 1 GiB
    np.testing.assert_allclose(
        zarr.open_array(path / "v")[0:2], ds.v.values[0:2], atol=0.5 / 254 + 1e-12
    )


def test_v2_codec_checks_count_with_chunk_size_or_out():
    forged = forged_constant_chunk(MAX_UNSHAPED_COUNT)
    with pytest.raises(CodecError, match="values"):
        Bitpack(bits=8, chunk_size=10).decode(forged)
    with pytest.raises(CodecError, match="values"):
        Bitpack(bits=8).decode(forged, out=np.empty(10))
    good = encode_chunk(np.arange(10.0), bits=8)
    np.testing.assert_allclose(
        Bitpack(bits=8, chunk_size=10).decode(good), np.arange(10.0), atol=9 / 254
    )
    out = np.empty(10)
    Bitpack(bits=8).decode(good, out=out)
    np.testing.assert_allclose(out, np.arange(10.0), atol=9 / 254)
    assert decode_chunk(good).shape == (10,)


def test_chunk_size_config_round_trip_and_validation():
    codec = Bitpack(max_error=0.1, chunk_size=12)
    config = codec.get_config()
    assert config["chunk_size"] == 12
    assert numcodecs.get_codec(config).chunk_size == 12
    assert "chunk_size" not in Bitpack(bits=4).get_config()
    for bad in (-1, 1.5, True, "3"):
        with pytest.raises(CodecError, match="chunk_size"):
            Bitpack(bits=4, chunk_size=bad)
    sized = with_chunk_size([Bitpack(bits=4), "other"], 7)
    assert sized[0].chunk_size == 7 and sized[1] == "other"
    assert with_chunk_size(Bitpack(bits=4, chunk_size=3), 7).chunk_size == 3


def test_requantises_on_partial_write():
    assert requantises_on_partial_write(BitpackCodec(bits=8))
    assert requantises_on_partial_write(Bitpack(max_error=0.1))
    assert requantises_on_partial_write({"serializer": BitpackCodec(max_error=0.5)})
    assert requantises_on_partial_write({"filters": [Bitpack(bits=3)], "compressors": None})
    assert requantises_on_partial_write([{"name": "xarray_zarrwrite.bitpack"}])
    assert requantises_on_partial_write({"id": "xarray_zarrwrite.bitpack", "bits": 8})
    assert not requantises_on_partial_write({"dtype": "int16", "scale_factor": 0.1})
    assert not requantises_on_partial_write(None)
    assert not requantises_on_partial_write("xarray_zarrwrite.bitpack")
    store = MemoryStore()
    v3 = zarr.create_array(
        store, name="a", shape=(4,), chunks=(2,), dtype="f4", serializer=BitpackCodec(bits=8)
    )
    v2 = zarr.create_array(
        MemoryStore(), shape=(4,), chunks=(2,), dtype="f4", zarr_format=2, filters=[Bitpack(bits=8)]
    )
    plain = zarr.create_array(MemoryStore(), shape=(4,), chunks=(2,), dtype="f4")
    assert requantises_on_partial_write(v3)
    assert requantises_on_partial_write(v2)
    assert not requantises_on_partial_write(plain)
