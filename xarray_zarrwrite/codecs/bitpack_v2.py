"""``Bitpack``: the numcodecs twin of :class:`~xarray_zarrwrite.codecs.BitpackCodec`.

For Zarr format 2, where codecs are :class:`numcodecs.abc.Codec` objects. Each encoded chunk
is byte for byte the same self-describing blob as the v3 serializer writes for the same
values (header with dtype and count, then the packed payload), so decoding needs no shape:
Zarr reshapes the flat result itself.

Use it as the first (or only) entry of ``filters=`` and put a byte compressor after it::

    zarr.create_array(store, ..., zarr_format=2, filters=[Bitpack(max_error=0.01)],
                      compressors=numcodecs.Zstd(level=3))

It also works as the ``compressor`` of a v2 array (then nothing compresses its output).
The id ``"xarray_zarrwrite.bitpack"`` is registered with numcodecs on import and through the
``numcodecs.codecs`` entry point, so readers find it without importing this package.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

import numcodecs
import numpy as np
from numcodecs.abc import Codec
from numcodecs.compat import ensure_contiguous_ndarray, ensure_ndarray_like, ndarray_copy

from xarray_zarrwrite.codecs._format import Infinities, Layout, parse_options
from xarray_zarrwrite.codecs._kernels import decode_chunk, encode_chunk_u8
from xarray_zarrwrite.errors import CodecError

if TYPE_CHECKING:
    from numpy.typing import NDArray

__all__ = ["Bitpack", "with_chunk_size"]


class Bitpack(Codec):  # type: ignore[misc]
    """Quantise floats linearly per chunk and pack the codes densely (numcodecs codec).

    Parameters
    ----------
    bits : int, optional
        Fixed code width, 1 to 32.
    max_error : float, optional
        Maximum absolute error of every finite value. Exactly one of ``bits``/``max_error``.
    infinities : {"preserve", "reject"}, default "preserve"
        Keep +-inf exactly or raise :class:`~xarray_zarrwrite.errors.CodecError`.
    layout : {"dense", "delta"}, default "dense"
        Payload layout, see :class:`~xarray_zarrwrite.codecs.BitpackCodec`.
    chunk_size : int, optional
        Number of values in a chunk of the array (Zarr format 2 stores every chunk whole).
        numcodecs decoders get no shape; with it, a chunk whose header claims any other count
        is refused before anything is allocated. Templates set it.

    Raises
    ------
    CodecError
        If the options are invalid.

    Notes
    -----
    ``encode`` flattens the array in its memory order (``order="A"``, as Zarr's v2 pipeline
    expects for ``order="F"`` arrays) and returns a uint8 array; ``decode`` returns a 1-D
    array of the dtype recorded in the chunk (byte order included).

    Examples
    --------
    >>> import numpy as np
    >>> codec = Bitpack(bits=12)
    >>> x = np.linspace(0, 1, 1000).astype("float32")
    >>> y = codec.decode(codec.encode(x))
    >>> y.dtype, bool(np.abs(y - x).max() <= 0.5 / 4095 + 1e-7)
    (dtype('float32'), True)
    """

    codec_id: Final = "xarray_zarrwrite.bitpack"

    def __init__(
        self,
        bits: int | None = None,
        max_error: float | None = None,
        infinities: Infinities = "preserve",
        layout: Layout = "dense",
        chunk_size: int | None = None,
    ) -> None:
        self.bits, self.max_error, self.infinities, self.layout = parse_options(
            bits, max_error, infinities, layout
        )
        if chunk_size is not None and (
            isinstance(chunk_size, bool)
            or not isinstance(chunk_size, int | np.integer)
            or chunk_size < 0
        ):
            raise CodecError(f"chunk_size must be a non-negative integer; got {chunk_size!r}")
        self.chunk_size = None if chunk_size is None else int(chunk_size)

    def get_config(self) -> dict[str, Any]:
        # docstring inherited
        config: dict[str, Any] = {"id": self.codec_id}
        if self.bits is not None:
            config["bits"] = self.bits
        else:
            config["max_error"] = self.max_error
        config["infinities"] = self.infinities
        config["layout"] = self.layout
        if self.chunk_size is not None:
            config["chunk_size"] = self.chunk_size
        return config

    def encode(self, buf: Any) -> NDArray[np.uint8]:
        # docstring inherited
        arr = ensure_ndarray_like(buf)
        if not isinstance(arr, np.ndarray):
            raise CodecError(  # pragma: no cover - GPU arrays take the v3 codec path
                f"{self.codec_id} (numcodecs) encodes NumPy arrays; got {type(arr).__name__}"
            )
        return encode_chunk_u8(
            arr.reshape(-1, order="A"),
            bits=self.bits,
            max_error=self.max_error,
            infinities=self.infinities,
            layout=self.layout,
        )

    def decode(self, buf: Any, out: Any = None) -> NDArray[np.floating]:
        # docstring inherited
        payload = ensure_contiguous_ndarray(buf).view(np.uint8)
        size = self.chunk_size
        if size is None and out is not None:
            size = ensure_ndarray_like(out).size
        decoded = decode_chunk(payload, shape=size)  # the header is checked before allocating
        if out is None:
            return decoded
        return ndarray_copy(decoded, out)  # type: ignore[no-any-return]

    def __repr__(self) -> str:
        what = f"bits={self.bits}" if self.bits is not None else f"max_error={self.max_error!r}"
        size = "" if self.chunk_size is None else f", chunk_size={self.chunk_size}"
        return (
            f"{type(self).__name__}({what}, infinities={self.infinities!r}, "
            f"layout={self.layout!r}{size})"
        )


def with_chunk_size(codecs: Any, chunk_size: int) -> Any:
    """``codecs`` (a codec, or a list or tuple of them) with every :class:`Bitpack` that
    has no ``chunk_size`` given ``chunk_size``; anything else is returned as it is."""
    if isinstance(codecs, Bitpack) and codecs.chunk_size is None:
        return Bitpack(
            bits=codecs.bits,
            max_error=codecs.max_error,
            infinities=codecs.infinities,
            layout=codecs.layout,
            chunk_size=int(chunk_size),
        )
    if isinstance(codecs, list | tuple):
        return type(codecs)(with_chunk_size(c, chunk_size) for c in codecs)
    return codecs


numcodecs.register_codec(Bitpack)
