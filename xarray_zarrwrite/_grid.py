"""The chunk grid of one array, and every piece of arithmetic on it.

A region write stores whole *write units*: the shard when the array is sharded (one stored
object holds many inner chunks, so two writers of one shard would overwrite each other's inner
chunks), else the chunk. :class:`ChunkGrid` knows that unit and answers every grid question the
planner, the writer and :func:`~xarray_zarrwrite.check` ask: which units a selection touches and
which of them it covers whole, where a unit sits, its store key, whether it is an edge unit, and
whether a selection is made of whole units (the array's last, partial unit counting as whole).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from ._compat import chunk_path

if TYPE_CHECKING:
    import zarr
    from zarr.storage import StorePath

__all__ = ["ChunkGrid", "UnitPiece"]

Coords = tuple[int, ...]
Selection = tuple[slice, ...]


@dataclass(frozen=True)
class UnitPiece:
    """The part of a selection that falls in one write unit.

    Attributes
    ----------
    coords
        Grid position of the write unit.
    selection
        The piece, in array coordinates.
    local
        The piece, relative to the start of the whole selection (to slice the data with).
    whole
        Whether the piece is the entire unit (an edge unit: up to the end of the array).
    """

    coords: Coords
    selection: Selection
    local: Selection
    whole: bool


@dataclass(frozen=True)
class ChunkGrid:
    """The regular chunk grid of one array, in write units.

    Parameters
    ----------
    shape
        The array's shape.
    chunks
        Its (inner) chunk shape: the unit of reads.
    shards
        Its shard shape when sharded (a multiple of ``chunks``), else ``None``.
    key_prefix, key_separator
        How store keys are spelled: ``"c"`` and ``"/"`` for zarr v3's default encoding
        (``c/0/1``), ``""`` and ``"."`` (or ``"/"``) for zarr v2 and v3's ``v2`` encoding.
    """

    shape: tuple[int, ...]
    chunks: tuple[int, ...]
    shards: tuple[int, ...] | None = None
    key_prefix: str = "c"
    key_separator: str = "/"

    def __post_init__(self) -> None:
        ndim = len(self.shape)
        if len(self.chunks) != ndim or (self.shards is not None and len(self.shards) != ndim):
            raise ValueError(
                f"shape {self.shape}, chunks {self.chunks} and shards {self.shards} must have "
                "one entry per dimension"
            )
        if any(n < 0 for n in self.shape) or any(c <= 0 for c in self.chunks):
            raise ValueError(f"invalid grid: shape {self.shape}, chunks {self.chunks}")
        if self.shards is not None and any(
            s <= 0 or s % c for s, c in zip(self.shards, self.chunks, strict=True)
        ):
            raise ValueError(f"shards {self.shards} must be multiples of chunks {self.chunks}")

    @classmethod
    def from_array(cls, arr: zarr.Array[Any] | zarr.AsyncArray[Any]) -> ChunkGrid:
        """The grid of a zarr array (sharded or not, zarr v2 or v3)."""
        meta = arr.metadata
        if meta.zarr_format == 2:
            prefix, sep = "", str(getattr(meta, "dimension_separator", "."))
        else:
            enc = getattr(meta, "chunk_key_encoding", None)
            sep = str(getattr(enc, "separator", "/"))
            prefix = "" if getattr(enc, "name", "default") == "v2" else "c"
        shards = arr.shards
        return cls(
            shape=tuple(int(n) for n in arr.shape),
            chunks=tuple(int(c) for c in arr.chunks),
            shards=None if shards is None else tuple(int(s) for s in shards),
            key_prefix=prefix,
            key_separator=sep,
        )

    # -- the write unit ---------------------------------------------------------------------

    @property
    def sharded(self) -> bool:
        """Whether the array is sharded (the write unit is then the shard)."""
        return self.shards is not None

    @property
    def unit(self) -> tuple[int, ...]:
        """Shape of one write unit: the shard when sharded, else the chunk."""
        return self.shards if self.shards is not None else self.chunks

    @property
    def unit_name(self) -> str:
        """``"shard"`` or ``"chunk"``, for messages."""
        return "shard" if self.sharded else "chunk"

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @functools.cached_property  # asked for several times per chunk written
    def grid_shape(self) -> tuple[int, ...]:
        """Number of write units along each dimension."""
        return tuple(math.ceil(n / u) for n, u in zip(self.shape, self.unit, strict=True))

    @property
    def nunits(self) -> int:
        """Number of write units (stored objects) of the complete array."""
        return math.prod(self.grid_shape)

    def all_coords(self) -> Iterator[Coords]:
        """Every grid position, in C order."""
        return (tuple(int(i) for i in idx) for idx in np.ndindex(*self.grid_shape))

    def in_grid(self, coords: Coords) -> bool:
        """Whether ``coords`` is a position of the grid."""
        return len(coords) == self.ndim and all(
            0 <= i < g for i, g in zip(coords, self.grid_shape, strict=True)
        )

    def unit_selection(self, coords: Coords) -> Selection:
        """The array elements of the unit at ``coords`` (edge units end at the array's end)."""
        self._check_coords(coords)
        return tuple(
            slice(i * u, min((i + 1) * u, n))
            for i, u, n in zip(coords, self.unit, self.shape, strict=True)
        )

    def is_edge(self, coords: Coords) -> bool:
        """Whether the unit at ``coords`` extends past the array (it holds fewer elements)."""
        self._check_coords(coords)
        return any((i + 1) * u > n for i, u, n in zip(coords, self.unit, self.shape, strict=True))

    # -- selections -------------------------------------------------------------------------

    def dim_pieces(self, axis: int, sel: slice) -> list[slice]:
        """Split ``sel`` along dimension ``axis`` at write-unit boundaries."""
        start, stop = self._check_slice(axis, sel)
        u = self.unit[axis]
        edges = [start, *range((start // u + 1) * u, stop, u), stop]
        return [slice(a, b) for a, b in zip(edges[:-1], edges[1:], strict=True)]

    def pieces(self, selection: Selection) -> list[UnitPiece]:
        """The parts of ``selection`` that fall in each write unit it touches, in C order."""
        self._check_ndim(selection)
        per_dim = [self.dim_pieces(a, s) for a, s in enumerate(selection)]
        out: list[UnitPiece] = []
        for parts in _product(per_dim):
            coords = tuple(p.start // u for p, u in zip(parts, self.unit, strict=True))
            local = tuple(
                slice(p.start - s.start, p.stop - s.start)
                for p, s in zip(parts, selection, strict=True)
            )
            whole = parts == self.unit_selection(coords)
            out.append(UnitPiece(coords, parts, local, whole))
        return out

    def count(self, selection: Selection) -> int:
        """Number of write units ``selection`` touches."""
        self._check_ndim(selection)
        n = 1
        for axis, sel in enumerate(selection):
            start, stop = self._check_slice(axis, sel)
            u = self.unit[axis]
            n *= (stop - 1) // u - start // u + 1
        return n

    def on_boundary(self, axis: int, index: int) -> bool:
        """Whether ``index`` is a write-unit boundary along ``axis`` (the array's end is)."""
        return index % self.unit[axis] == 0 or index == self.shape[axis]

    def nearest_boundaries(self, axis: int, index: int) -> tuple[int, int]:
        """The write-unit boundaries at or before and after ``index`` along ``axis``."""
        u, n = self.unit[axis], self.shape[axis]
        lo = index - index % u
        return lo, min(lo + u, n)

    def misaligned(self, selection: Selection) -> tuple[int, int] | None:
        """The first ``(axis, index)`` where ``selection`` cuts a write unit, else ``None``."""
        self._check_ndim(selection)
        for axis, sel in enumerate(selection):
            start, stop = self._check_slice(axis, sel)
            for index in (start, stop):
                if not self.on_boundary(axis, index):
                    return axis, index
        return None

    def is_aligned(self, selection: Selection) -> bool:
        """Whether ``selection`` is made of whole write units (the last, partial one included)."""
        return self.misaligned(selection) is None

    # -- store keys -------------------------------------------------------------------------

    def key(self, coords: Coords) -> str:
        """The store key of the unit at ``coords``, relative to the array."""
        self._check_coords(coords)
        if not coords:
            return self.key_prefix or "0"
        parts = [str(i) for i in coords]
        if self.key_prefix:
            parts.insert(0, self.key_prefix)
        return self.key_separator.join(parts)

    def parse_key(self, key: str) -> Coords | None:
        """Grid position of a key relative to the array; ``None`` if it is no unit of the grid."""
        if self.ndim == 0:
            return () if key == (self.key_prefix or "0") else None
        sep = self.key_separator
        if self.key_prefix:
            if not key.startswith(self.key_prefix + sep):
                return None
            key = key[len(self.key_prefix) + len(sep) :]
        parts = key.split(sep)
        if len(parts) != self.ndim or not all(p.isdigit() for p in parts):
            return None
        coords = tuple(int(p) for p in parts)
        return coords if self.in_grid(coords) else None

    def path(self, arr: zarr.AsyncArray[Any], coords: Coords) -> StorePath:
        """Where the unit at ``coords`` of ``arr`` (an array on this grid) is stored."""
        self._check_coords(coords)
        return chunk_path(arr, coords)

    # -- checks -----------------------------------------------------------------------------

    def _check_ndim(self, selection: Selection) -> None:
        if len(selection) != self.ndim:
            raise ValueError(f"selection {selection} does not have {self.ndim} dimensions")

    def _check_slice(self, axis: int, sel: slice) -> tuple[int, int]:
        start, stop, n = sel.start, sel.stop, self.shape[axis]
        if (
            not isinstance(start, int)
            or not isinstance(stop, int)
            or sel.step not in (None, 1)
            or not 0 <= start < stop <= n
        ):
            raise ValueError(f"{sel} is not a non-empty slice of [0, {n}) along axis {axis}")
        return start, stop

    def _check_coords(self, coords: Coords) -> None:
        if not self.in_grid(coords):
            raise IndexError(f"{coords} is not a position of the grid {self.grid_shape}")


def _product(per_dim: list[list[slice]]) -> Iterator[Selection]:
    blocks: list[Selection] = [()]
    for pieces in per_dim:
        blocks = [(*b, p) for b in blocks for p in pieces]
    return iter(blocks)
