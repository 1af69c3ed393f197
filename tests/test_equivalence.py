"""Every write path writes the same bytes.

The same data, written by the blocking NumPy path (``ds.fastzarr.write_region``), by dask
(``xr.map_blocks`` blocks that each call ``write_region``, and ``write_region(compute=False)``
of dask-backed data), by :class:`~xarray_zarrwrite.StreamWriter` (one write per time write
unit) and by :func:`~xarray_zarrwrite.convert` (the data split into NetCDF files at
boundaries that are not chunk boundaries), each into its own fresh template made the same
way, gives byte-identical stores: every object, key by key. Formats 2 and 3, unpacked, CF
``int16`` packing and the ``bitpack`` codec, sharded (v3) and not; the last chunk of
``time`` and of ``lat`` is partial.
"""

from __future__ import annotations

import hashlib
import math
import os
from pathlib import Path

import dask
import numpy as np
import pytest
import xarray as xr
from packaging.version import Version

import xarray_zarrwrite as xzw
from xarray_zarrwrite._compat import ZARR_VERSION
from xarray_zarrwrite.testing.datasets import era5_like

NT, NLAT, NLON = 13, 7, 10
CHUNKS = {"time": 4, "lat": 3, "lon": 5}  # time: 4+4+4+1, lat: 3+3+1
SHARDS = {"time": 8, "lat": 6, "lon": 10}  # time: 8+5, lat: 6+1
CF_RANGE = (180.0, 340.0)
BITPACK_ERROR = 0.01
PACKINGS = {
    "unpacked": None,
    "cf-int16": {
        "t2m": {"bits": 16, "valid_range": CF_RANGE},
        "tcwv": {"bits": 16, "valid_range": CF_RANGE},
    },
    "bitpack": {
        "t2m": {"codec": "bitpack", "max_error": BITPACK_ERROR},
        "tcwv": {"codec": "bitpack", "bits": 12},
    },
}
CASES = [
    pytest.param(fmt, packing, sharded, id=f"v{fmt}-{packing}-{'sharded' if sharded else 'plain'}")
    for fmt in (2, 3)
    for packing in PACKINGS
    for sharded in ((False, True) if fmt == 3 else (False,))
]

#: Objects allowed to differ between paths, by key prefix. Every path writes whole write units
#: through one engine; only ``convert`` keeps a record of its own: the byte-range index of its
#: sources (paths, sizes, modification times), a subgroup no other path has
#: (``convert/_index_store.py``). Nothing else is excluded.
VOLATILE_PREFIXES = ("xarray_zarrwrite_index/",)
META = frozenset({"zarr.json", ".zarray", ".zattrs", ".zgroup", ".zmetadata"})
DATA = ("t2m", "tcwv")


@pytest.fixture(scope="module")
def source() -> xr.Dataset:
    return era5_like("2000-01-01", NT, nlat=NLAT, nlon=NLON)


def _template(path: Path, src: xr.Dataset, fmt: int, packing: str, sharded: bool) -> str:
    src.isel(time=slice(0, 4)).fastzarr.to_template(
        str(path),
        global_end=src.time.values[-1],
        chunks=CHUNKS,
        shards=SHARDS if sharded else None,
        packing=PACKINGS[packing],
        zarr_format=fmt,
    )
    return str(path)


def _unit(sharded: bool) -> dict[str, int]:
    return SHARDS if sharded else CHUNKS


#: With zarr 3.1 the order of the inner chunks inside a shard depends on which encoding
#: finished first: two runs of the same path give shards with the same inner chunks at other
#: offsets. There (and before 3.4, the oldest release seen to write them in a fixed order),
#: shards are compared by their inner chunks' bytes in grid order; from 3.4 on, byte for byte
#: like every other object.
SHARD_ORDER_VARIES = Version("3.4") > ZARR_VERSION
INNER_PER_SHARD = math.prod(SHARDS[d] // CHUNKS[d] for d in CHUNKS)


def _inner_chunks(blob: bytes) -> bytes:
    """A shard's inner chunks in grid order (the index at the end: offset, nbytes + crc32c)."""
    index = np.frombuffer(blob[-(INNER_PER_SHARD * 16 + 4) : -4], dtype="<u8").reshape(-1, 2)
    empty = np.iinfo(np.uint64).max
    return b"|".join(b"-" if o == empty else blob[o : o + n] for o, n in index.tolist())


def _objects(path: Path, sharded: bool = False) -> dict[str, str]:
    """Every object of a local store: key -> sha256 of its bytes."""
    out = {}
    for dirpath, _, files in os.walk(path):
        for f in files:
            full = Path(dirpath) / f
            key, blob = full.relative_to(path).as_posix(), full.read_bytes()
            if sharded and SHARD_ORDER_VARIES and f not in META and key.split("/")[0] in DATA:
                blob = _inner_chunks(blob)
            out[key] = hashlib.sha256(blob).hexdigest()
    return out


# -- the paths -----------------------------------------------------------------------------------


def _blocking(src: xr.Dataset, store: str, sharded: bool) -> None:
    src.fastzarr.write_region(store)


def _write_block(block: xr.Dataset, store: str) -> xr.Dataset:
    block.fastzarr.write_region(store)
    return block


def _map_blocks(src: xr.Dataset, store: str, sharded: bool) -> None:
    lazy = src.chunk(_unit(sharded))
    with dask.config.set(scheduler="threads"):
        xr.map_blocks(_write_block, lazy, args=[store], template=lazy).compute()


def _delayed(src: xr.Dataset, store: str, sharded: bool) -> None:
    task = src.chunk(_unit(sharded)).fastzarr.write_region(store, compute=False)
    with dask.config.set(scheduler="threads"):
        res = task.compute()
    assert res.region["time"] == slice(0, NT)


def _stream(src: xr.Dataset, store: str, sharded: bool) -> None:
    step = _unit(sharded)["time"]
    with xzw.StreamWriter(store) as writer:
        futures = [writer.write(src.isel(time=slice(i, i + step))) for i in range(0, NT, step)]
    assert all(f.done() and f.exception() is None for f in futures)


@pytest.fixture(scope="module")
def netcdf_files(tmp_path_factory, source) -> list[str]:
    """The source split into NetCDF files; no file boundary is a chunk or shard boundary."""
    tmp = tmp_path_factory.mktemp("nc")
    bounds = [0, 5, 6, 11, NT]
    files = []
    for i, (a, b) in enumerate(zip(bounds[:-1], bounds[1:], strict=True)):
        f = tmp / f"part{i}.nc"
        source.isel(time=slice(a, b)).to_netcdf(f, engine="h5netcdf")
        files.append(str(f))
    return files[::-1]  # in no particular order


def _convert(files: list[str], store: str, **kwargs: object) -> None:
    report = xzw.convert(files, store, progress=False, **kwargs)
    assert report.ok, report.summary()


# -- the proof -----------------------------------------------------------------------------------


def _check_values(store: str, src: xr.Dataset, packing: str) -> None:
    with xr.open_zarr(store) as back:
        back = back.load()
    assert back.sizes == src.sizes
    for dim in src.dims:
        xr.testing.assert_identical(back[dim], src[dim])
    for name in src.data_vars:
        got, want = back[name].values, src[name].values
        assert got.shape == want.shape
        assert got.dtype == want.dtype if packing == "unpacked" else got.dtype.kind == "f"
        if packing == "unpacked":
            tol = 0.0
        elif packing == "cf-int16":
            tol = (CF_RANGE[1] - CF_RANGE[0]) / (2**16 - 2) / 2 * 1.0001
        elif name == "t2m":
            tol = BITPACK_ERROR
        else:
            tol = float(want.max() - want.min()) / (2**12 - 1) / 2 * 1.0001
        err = np.abs(got.astype(np.float64) - want.astype(np.float64))
        assert float(err.max()) <= tol, (name, float(err.max()), tol)
        # the last index of every dimension, explicitly (the partial edge chunks)
        last = err[-1, -1, -1], err[-1, :, :].max(), err[:, -1, :].max(), err[:, :, -1].max()
        assert max(map(float, last)) <= tol
        assert not np.isnan(got).any()


def _assert_same_objects(stores: dict[str, str], sharded: bool) -> None:
    """Every store holds the same objects as the first one, byte for byte; each holds every
    write unit of every data variable."""
    objects = {name: _objects(Path(s), sharded) for name, s in stores.items()}
    ref_name = next(iter(objects))
    ref = {k: v for k, v in objects[ref_name].items() if not k.startswith(VOLATILE_PREFIXES)}
    unit = _unit(sharded)
    sizes = {"time": NT, "lat": NLAT, "lon": NLON}
    nunits = math.prod(-(-n // unit[d]) for d, n in sizes.items())
    for var in ("t2m", "tcwv"):
        data = [k for k in ref if k.startswith(f"{var}/") and k.rsplit("/", 1)[1] not in META]
        assert len(data) == nunits, (var, sorted(data))
    for name, objs in objects.items():
        objs = {k: v for k, v in objs.items() if not k.startswith(VOLATILE_PREFIXES)}
        differ = sorted(k for k in ref.keys() | objs.keys() if ref.get(k) != objs.get(k))
        assert not differ, f"{name} differs from {ref_name} in {differ}"


@pytest.mark.parametrize(("fmt", "packing", "sharded"), CASES)
def test_every_path_writes_the_same_bytes(tmp_path, source, netcdf_files, fmt, packing, sharded):
    paths = {
        "blocking": _blocking,
        "map_blocks": _map_blocks,
        "compute=False": _delayed,
        "StreamWriter": _stream,
    }
    stores = {}
    for name, write in paths.items():
        store = _template(tmp_path / f"{name}.zarr", source, fmt, packing, sharded)
        write(source, store, sharded)
        stores[name] = store
    stores["convert"] = _template(tmp_path / "convert.zarr", source, fmt, packing, sharded)
    _convert(netcdf_files, stores["convert"], max_workers=2)

    _assert_same_objects(stores, sharded)
    _check_values(stores["blocking"], source, packing)


def test_dask_cluster_writes_the_same_bytes(tmp_path, source, netcdf_files):
    """On a dask.distributed cluster (one case): dask blocks and convert tasks."""
    distributed = pytest.importorskip("distributed")
    fmt, packing, sharded = 3, "cf-int16", True
    stores = {"blocking": _template(tmp_path / "blocking.zarr", source, fmt, packing, sharded)}
    _blocking(source, stores["blocking"], sharded)
    with (
        distributed.LocalCluster(
            n_workers=2, threads_per_worker=1, processes=False, dashboard_address=":0"
        ) as cluster,
        distributed.Client(cluster) as client,
    ):
        stores["dask"] = _template(tmp_path / "dask.zarr", source, fmt, packing, sharded)
        task = source.chunk(_unit(sharded)).fastzarr.write_region(stores["dask"], compute=False)
        client.compute(task).result()
        stores["map_blocks"] = _template(tmp_path / "map.zarr", source, fmt, packing, sharded)
        lazy = source.chunk(_unit(sharded))
        blocks = xr.map_blocks(_write_block, lazy, args=[stores["map_blocks"]], template=lazy)
        client.compute(blocks).result()
        stores["convert"] = _template(tmp_path / "convert.zarr", source, fmt, packing, sharded)
        _convert(netcdf_files, stores["convert"], client=client)
    _assert_same_objects(stores, sharded)
    _check_values(stores["dask"], source, packing)
