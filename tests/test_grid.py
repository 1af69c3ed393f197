"""ChunkGrid: write units, pieces, edges, keys and alignment."""

from __future__ import annotations

import numpy as np
import pytest
import zarr
from zarr.storage import MemoryStore

from xarray_zarrwrite._compat import async_array, chunk_path
from xarray_zarrwrite._grid import ChunkGrid


def test_write_unit_is_the_shard_when_sharded():
    plain = ChunkGrid(shape=(10, 7), chunks=(2, 3))
    sharded = ChunkGrid(shape=(10, 7), chunks=(2, 3), shards=(4, 6))
    assert plain.unit == (2, 3) and not plain.sharded and plain.unit_name == "chunk"
    assert sharded.unit == (4, 6) and sharded.sharded and sharded.unit_name == "shard"
    assert plain.grid_shape == (5, 3) and plain.nunits == 15
    assert sharded.grid_shape == (3, 2) and sharded.nunits == 6


@pytest.mark.parametrize(
    ("shape", "chunks", "shards"),
    [((3,), (0,), None), ((3,), (2,), (3,)), ((3, 4), (2,), None), ((-1,), (1,), None)],
)
def test_invalid_grids_are_refused(shape, chunks, shards):
    with pytest.raises(ValueError, match=r"grid|shards|dimension"):
        ChunkGrid(shape=shape, chunks=chunks, shards=shards)


def test_edge_units_end_at_the_array_end():
    grid = ChunkGrid(shape=(10, 7), chunks=(2, 3), shards=(4, 6))
    assert grid.unit_selection((2, 1)) == (slice(8, 10), slice(6, 7))
    assert grid.is_edge((2, 0)) and grid.is_edge((0, 1)) and not grid.is_edge((1, 0))
    exact = ChunkGrid(shape=(8,), chunks=(4,))
    assert not exact.is_edge((1,))
    with pytest.raises(IndexError):
        grid.unit_selection((3, 0))
    with pytest.raises(IndexError):
        grid.is_edge((0, -1))


def test_pieces_cover_the_selection_exactly_once_including_last_index():
    grid = ChunkGrid(shape=(10, 7), chunks=(1, 1), shards=(4, 3))
    selection = (slice(3, 10), slice(0, 7))
    pieces = grid.pieces(selection)
    covered = np.zeros((10, 7), dtype=int)
    local_covered = np.zeros((7, 7), dtype=int)
    for p in pieces:
        covered[p.selection] += 1
        local_covered[p.local] += 1
        unit = grid.unit_selection(p.coords)
        assert all(
            u.start <= s.start and s.stop <= u.stop for u, s in zip(unit, p.selection, strict=True)
        )
        assert p.whole == (p.selection == unit)
    assert (covered[3:, :] == 1).all() and (covered[:3] == 0).all()
    assert (local_covered == 1).all()
    assert covered[-1, -1] == 1
    whole = {p.coords for p in pieces if p.whole}
    # rows 3:4 cut shard 0; shards 1 (4:8) and 2 (8:10, the edge) are whole
    assert whole == {(1, 0), (1, 1), (1, 2), (2, 0), (2, 1), (2, 2)}
    assert grid.count(selection) == len(pieces) == 9


def test_dim_pieces_and_count():
    grid = ChunkGrid(shape=(10,), chunks=(3,))
    assert grid.dim_pieces(0, slice(2, 10)) == [slice(2, 3), slice(3, 6), slice(6, 9), slice(9, 10)]
    assert grid.count((slice(2, 10),)) == 4
    assert grid.dim_pieces(0, slice(9, 10)) == [slice(9, 10)]
    for bad in (slice(0, 11), slice(4, 4), slice(-1, 3), slice(0, 4, 2)):
        with pytest.raises(ValueError, match="not a non-empty slice"):
            grid.dim_pieces(0, bad)


def test_alignment_allows_the_last_partial_unit():
    grid = ChunkGrid(shape=(10, 7), chunks=(1, 1), shards=(4, 3))
    assert grid.is_aligned((slice(0, 10), slice(0, 7)))
    assert grid.is_aligned((slice(8, 10), slice(6, 7)))  # the edge shard
    assert grid.is_aligned((slice(4, 8), slice(3, 6)))
    assert grid.misaligned((slice(4, 9), slice(0, 7))) == (0, 9)
    assert grid.misaligned((slice(0, 4), slice(1, 7))) == (1, 1)
    # aligned to the inner chunks is not aligned to the write unit
    assert not grid.is_aligned((slice(0, 1), slice(0, 7)))
    assert grid.nearest_boundaries(0, 9) == (8, 10)
    assert grid.nearest_boundaries(0, 5) == (4, 8)
    assert grid.on_boundary(0, 10) and grid.on_boundary(0, 8) and not grid.on_boundary(0, 9)


def test_zero_dimensional_grid():
    grid = ChunkGrid(shape=(), chunks=())
    assert grid.nunits == 1 and list(grid.all_coords()) == [()]
    (piece,) = grid.pieces(())
    assert piece.whole and piece.coords == ()
    assert grid.key(()) == "c" and grid.parse_key("c") == ()


@pytest.mark.parametrize(("zarr_format", "sharded"), [(2, False), (3, False), (3, True)])
def test_keys_match_zarr(zarr_format, sharded):
    shards = {"shards": (4, 6)} if sharded else {}
    arr = zarr.create_array(
        MemoryStore(), shape=(10, 7), chunks=(2, 3), dtype="f4", zarr_format=zarr_format, **shards
    )
    grid = ChunkGrid.from_array(arr)
    assert grid.unit == ((4, 6) if sharded else (2, 3))
    assert grid.chunks == (2, 3)
    inner = async_array(arr)
    for coords in grid.all_coords():
        key = grid.key(coords)
        assert chunk_path(inner, coords).path == f"{inner.store_path.path}/{key}".lstrip("/")
        assert grid.path(inner, coords) == chunk_path(inner, coords)
        assert grid.parse_key(key) == coords
    last = tuple(g - 1 for g in grid.grid_shape)
    assert grid.parse_key(grid.key(last)) == last
    outside = tuple(g for g in grid.grid_shape)
    assert grid.parse_key(grid.key(last).replace(str(last[0]), str(outside[0]), 1)) is None
    assert grid.parse_key("zarr.json") is None
    with pytest.raises(IndexError):
        grid.key(outside)


def test_written_units_read_back_through_their_keys():
    """Units stored at grid.key positions are what zarr reads, to the last index."""
    store = MemoryStore()
    arr = zarr.create_array(store, shape=(10, 7), chunks=(2, 3), shards=(4, 6), dtype="i4")
    data = np.arange(70, dtype="i4").reshape(10, 7)
    arr[...] = data
    grid = ChunkGrid.from_array(arr)
    keys = {k for k in store._store_dict if not k.endswith("zarr.json")}
    assert keys == {grid.key(c) for c in grid.all_coords()}
    np.testing.assert_array_equal(arr[...], data)
