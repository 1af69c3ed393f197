"""The floor of a NetCDF -> Zarr conversion: raw bytes in, the same codec, bytes out.

For each output chunk (along time, whole in the other dimensions) the variable's values are
read with h5py (``read_direct`` of each source's slice into one chunk buffer), compressed with
the archive's codec (blosc zstd-3 + shuffle, as ``compression="default"``) and written to one
file, on 2 threads, with nothing else in between: no metadata, no CF decoding, no validation.
``convert`` cannot beat this; issue 12 asks for it to stay within 1.3x of it.

Usage::

    python asv_bench/floor_convert.py FILE.nc [FILE.nc ...] --var t2m --chunk 73
    python asv_bench/floor_convert.py FILES... --scan   # index: h5py chunk_iter vs kerchunk

``compare_convert.py`` imports :func:`floor` and runs it in the same run as the other rows.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time


def floor(files: list[str], var: str, chunk: int, out_dir: str, threads: int = 2) -> float:
    """Seconds to copy ``var`` of ``files`` (in time order) into compressed chunk files
    (the implementation is :func:`xarray_zarrwrite.demo.floor_copy`, which ``make demo``
    prints too)."""
    from xarray_zarrwrite.demo import floor_copy

    return floor_copy(files, var, chunk, out_dir, threads)


def scan_times(files: list[str], var: str) -> dict[str, float]:
    """Seconds to index ``files``: h5py's chunk iterator (ours; the xarray metadata it also
    takes is opened beforehand, untimed) vs kerchunk's HDF5 scanner (which needs none)."""
    import xarray as xr

    from xarray_zarrwrite.convert._index import index_hdf5

    opened = [xr.open_dataset(f, cache=False) for f in files]
    out: dict[str, float] = {}
    try:
        index_hdf5(files[0], opened[0], [var])  # imports, first-call costs
        t0 = time.perf_counter()
        for f, ds in zip(files, opened, strict=True):
            index_hdf5(f, ds, [var])
        out["h5py chunk index (index_hdf5)"] = time.perf_counter() - t0
    finally:
        for ds in opened:
            ds.close()
    try:
        from kerchunk.hdf import SingleHdf5ToZarr
    except ImportError:
        return out
    SingleHdf5ToZarr(files[0], inline_threshold=0).translate()
    t0 = time.perf_counter()
    for f in files:
        SingleHdf5ToZarr(f, inline_threshold=0).translate()
    out["kerchunk SingleHdf5ToZarr"] = time.perf_counter() - t0
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("files", nargs="+")
    parser.add_argument("--var", default="t2m")
    parser.add_argument("--chunk", type=int, default=73)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--scan", action="store_true", help="time the two ways of indexing")
    args = parser.parse_args(argv)
    files = sorted(args.files)
    if args.scan:
        for name, sec in scan_times(files, args.var).items():
            print(f"{name:<40} {sec:8.3f} s ({len(files)} files)")
        return 0
    out = tempfile.mkdtemp(prefix="xzw-floor-")
    try:
        sec = floor(files, args.var, args.chunk, out, args.threads)
    finally:
        shutil.rmtree(out, ignore_errors=True)
    print(f"floor: {sec:.3f} s for {len(files)} files, chunk {args.chunk}, {args.threads} threads")
    return 0


if __name__ == "__main__":
    sys.exit(main())
