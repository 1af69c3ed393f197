"""``BitpackCodec``: lossy linear quantisation plus dense n-bit packing, a Zarr v3 serializer.

The codec is an :class:`~zarr.abc.codec.ArrayBytesCodec` (it replaces the ``bytes`` codec of
an array) registered under the name ``"xarray_zarrwrite.bitpack"``, both through the
``zarr.codecs`` entry point declared in ``pyproject.toml`` (so any process with the package
installed can read the data without importing it) and by :func:`zarr.registry.register_codec`
when this module is imported. The math lives in :mod:`xarray_zarrwrite.codecs._kernels` (and its modules); see
``docs/packing.md`` for the byte layout and the error guarantees.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import numpy as np
from zarr.abc.codec import ArrayBytesCodec

from xarray_zarrwrite._compat import parse_named_configuration, register_codec
from xarray_zarrwrite.codecs._format import INFINITIES, LAYOUTS, Infinities, Layout, parse_options
from xarray_zarrwrite.codecs._kernels import decode_chunk, encode_chunk_u8
from xarray_zarrwrite.errors import CodecError

if TYPE_CHECKING:
    from typing import Self

    from xarray_zarrwrite._compat import (
        JSON,
        ArraySpec,
        Buffer,
        NDBuffer,
        TBaseDType,
        TBaseScalar,
        ZDType,
    )

__all__ = ["CODEC_NAME", "INFINITIES", "LAYOUTS", "BitpackCodec"]

CODEC_NAME: Final = "xarray_zarrwrite.bitpack"


def _is_device_array(a: object) -> bool:
    """Whether ``a`` lives on a CUDA device (zarr's GPU buffers hand out CuPy arrays)."""
    return hasattr(a, "__cuda_array_interface__")


@dataclass(frozen=True)
class BitpackCodec(ArrayBytesCodec):
    """Quantise floats linearly per chunk and pack the codes densely (Zarr v3 serializer).

    Parameters
    ----------
    bits : int, optional
        Fixed code width, 1 to 32 bits per value: each chunk's finite range is split into
        ``2**bits - 1 - nres`` equal steps, ``nres`` being the number of kinds of special
        values (NaN, +inf, -inf) present in that chunk.
    max_error : float, optional
        Maximum absolute error of every finite value. The step and the width (0 to 32 bits) are
        chosen per chunk; a constant chunk costs 0 bits per value. Give exactly one of ``bits``
        and ``max_error``.
    infinities : {"preserve", "reject"}, default "preserve"
        ``"preserve"`` round-trips +-inf exactly through reserved codes; ``"reject"`` raises
        :class:`~xarray_zarrwrite.errors.CodecError` when a chunk contains one. NaN is always
        preserved exactly.
    layout : {"dense", "delta"}, default "dense"
        ``"dense"`` packs the codes at the chunk's width. ``"delta"`` stores zigzag
        differences of consecutive codes (C order) as byte planes: bigger on its own, much
        smaller after a ``compressors=`` entry such as zstd on smooth fields.

    Raises
    ------
    CodecError
        If the options are invalid.

    See Also
    --------
    xarray_zarrwrite.codecs.Bitpack : the numcodecs twin for Zarr format 2.

    Notes
    -----
    Error guarantee, for every finite value ``x`` decoded as ``y``: in ``max_error`` mode
    ``|y - x| <= max_error``, verified on encode. In ``bits`` mode
    ``|y - x| <= scale / 2 + ulp(y) / 2`` (plus float64 rounding, ~1e-16 relative), with
    ``scale = (max - min) / (2**bits - 1 - nres)`` over the chunk's finite values.

    Examples
    --------
    >>> import numpy as np, zarr
    >>> from zarr.codecs import ZstdCodec
    >>> a = zarr.create_array(
    ...     zarr.storage.MemoryStore(), shape=(100,), chunks=(50,), dtype="float32",
    ...     serializer=BitpackCodec(max_error=0.01), compressors=ZstdCodec(),
    ... )
    >>> x = np.linspace(250, 300, 100, dtype="float32")
    >>> a[:] = x
    >>> bool(np.abs(a[:] - x).max() <= 0.01)
    True
    """

    is_fixed_size = False

    bits: int | None
    max_error: float | None
    infinities: Infinities
    layout: Layout

    def __init__(
        self,
        *,
        bits: int | None = None,
        max_error: float | None = None,
        infinities: Infinities = "preserve",
        layout: Layout = "dense",
    ) -> None:
        bits, max_error, infinities, layout = parse_options(bits, max_error, infinities, layout)
        object.__setattr__(self, "bits", bits)
        object.__setattr__(self, "max_error", max_error)
        object.__setattr__(self, "infinities", infinities)
        object.__setattr__(self, "layout", layout)

    @classmethod
    def from_dict(cls, data: dict[str, JSON]) -> Self:
        # docstring inherited
        _, configuration = parse_named_configuration(data, CODEC_NAME)
        known = {"bits", "max_error", "infinities", "layout"}
        unknown = set(configuration) - known
        if unknown:
            raise CodecError(
                f"unknown {CODEC_NAME} configuration keys {sorted(unknown)}; expected a subset of "
                f"{sorted(known)} (written by a newer xarray_zarrwrite?)"
            )
        return cls(**configuration)  # type: ignore[arg-type]

    def to_dict(self) -> dict[str, JSON]:
        # docstring inherited
        config: dict[str, JSON] = (
            {"bits": self.bits} if self.bits is not None else {"max_error": self.max_error}
        )
        config["infinities"] = self.infinities
        config["layout"] = self.layout
        return {"name": CODEC_NAME, "configuration": config}

    def validate(
        self,
        *,
        shape: tuple[int, ...],
        dtype: ZDType[TBaseDType, TBaseScalar],
        chunk_grid: object,  # unused; its type differs across zarr releases (3.4 changed it)
    ) -> None:
        # docstring inherited
        native = np.dtype(dtype.to_native_dtype())
        if native.kind != "f" or native.itemsize not in (2, 4, 8):
            raise CodecError(
                f"{CODEC_NAME} only encodes float16, float32 and float64 arrays; got {native}. "
                "Use the default bytes serializer for other dtypes."
            )

    def _encode_sync(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        arr: Any = chunk_array.as_ndarray_like()
        if _is_device_array(arr):
            from xarray_zarrwrite.codecs._gpu import encode_chunk_gpu as encode
        else:
            arr, encode = np.asarray(arr), encode_chunk_u8
        encoded = encode(
            arr,
            bits=self.bits,
            max_error=self.max_error,
            infinities=self.infinities,
            layout=self.layout,
        )
        return chunk_spec.prototype.buffer.from_array_like(encoded)

    async def _encode_single(self, chunk_array: NDBuffer, chunk_spec: ArraySpec) -> Buffer | None:
        return await asyncio.to_thread(self._encode_sync, chunk_array, chunk_spec)

    def _decode_sync(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        payload = chunk_bytes.as_array_like()
        dtype = chunk_spec.dtype.to_native_dtype()
        if _is_device_array(payload):
            from xarray_zarrwrite.codecs._gpu import decode_chunk_gpu

            decoded = decode_chunk_gpu(payload, dtype=dtype, shape=chunk_spec.shape)
        else:
            decoded = decode_chunk(np.asarray(payload), dtype, chunk_spec.shape)
        return chunk_spec.prototype.nd_buffer.from_ndarray_like(decoded)

    async def _decode_single(self, chunk_bytes: Buffer, chunk_spec: ArraySpec) -> NDBuffer:
        return await asyncio.to_thread(self._decode_sync, chunk_bytes, chunk_spec)

    def compute_encoded_size(self, input_byte_length: int, _chunk_spec: ArraySpec) -> int:
        # docstring inherited
        raise NotImplementedError(
            f"{CODEC_NAME} output size depends on the data (per-chunk width, NaN/inf codes); "
            "it cannot be used where a fixed encoded size is required (e.g. as a sharding index "
            "codec)"
        )


register_codec(CODEC_NAME, BitpackCodec)
