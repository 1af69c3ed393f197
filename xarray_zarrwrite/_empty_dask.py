"""Dask-backed region writes with an explicit ``write_empty_chunks`` (see :mod:`._empty`)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ._dask import RegionTarget
from ._empty import configured

if TYPE_CHECKING:
    import numpy as np
    import zarr
    from zarr.abc.store import Store

    from ._dask import DaskGate
    from ._open import TemplateInfo
    from .codecs.cf import OnOutOfRange

__all__ = ["EmptyChunksTarget"]


class EmptyChunksTarget(RegionTarget):
    """A :class:`~._dask.RegionTarget` whose blocks are stored with ``write_empty_chunks``
    set: the same steps (gate, encoding, retries), into the template's array configured by
    the caller's keyword."""

    def __init__(
        self,
        store: Store,
        name: str,
        root: bytes,
        shape: tuple[int, ...],
        dtype: np.dtype[Any],
        on_out_of_range: OnOutOfRange = "raise",
        *,
        gate: DaskGate | None = None,
        write_empty_chunks: bool,
    ) -> None:
        super().__init__(store, name, root, shape, dtype, on_out_of_range, gate=gate)
        self.write_empty_chunks = write_empty_chunks

    def zarr_array(self, info: TemplateInfo) -> zarr.Array[Any]:
        return configured(info.zarr_arrays[self.name], self.write_empty_chunks)
