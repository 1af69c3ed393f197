"""Figure: ``convert`` of 4 yearly files into a local Icechunk repository against a plain
local Zarr store, in one run.

Usage::

    python asv_bench/compare_icechunk.py            # 3 repeats
    python asv_bench/compare_icechunk.py --quick    # 1 repeat

Data: the 4 yearly NetCDF files of ``compare_convert.py`` (daily 1461 x 120 x 240 float32,
168 MB, one variable), time chunk 100, blosc zstd-3 + shuffle, in-process thread executor for
both targets (convert into Icechunk runs its tasks in this process). The Icechunk run is one
commit (template and data together); the time includes creating the repository and the
commit. The two targets alternate within each repeat (both see the same load). Both outputs
are read back and compared bit for bit with the data (not timed), and the object count of
each target is printed. Times are medians over the repeats (min in brackets). Needs the
``icechunk`` extra (Python >= 3.12).
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from typing import Any

import xarray as xr

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_convert import NLAT, NLON, NT, make_data, write_files

CHUNK = 100


def _convert(files: list[str], store: Any, **kw: Any) -> None:
    from xarray_zarrwrite.convert import convert

    report = convert(
        files,
        store,
        chunks={"time": CHUNK, "lat": -1, "lon": -1},
        resume=False,
        progress=False,
        **kw,
    )
    assert report.ok, report.summary()


def to_plain(files: list[str], path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)
    _convert(files, path)


def to_icechunk(files: list[str], path: str) -> Any:
    import icechunk

    shutil.rmtree(path, ignore_errors=True)
    repo = icechunk.Repository.create(icechunk.local_filesystem_storage(path))
    _convert(files, repo, message="convert 4 yearly files")
    return repo


def count_files(path: str) -> int:
    return sum(len(files) for _, _, files in os.walk(path))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="1 repeat")
    parser.add_argument("--repeats", type=int, default=None)
    parser.add_argument("--dir", help="work directory (default: a temporary one)")
    args = parser.parse_args(argv)
    repeats = args.repeats or (1 if args.quick else 3)
    work = args.dir or tempfile.mkdtemp(prefix="xzw-icechunk-")
    try:
        import icechunk
    except ImportError:
        print("icechunk is not installed: pip install 'xarray_zarrwrite[icechunk]'")
        return 1
    ds = make_data()
    files = write_files(ds, os.path.join(work, "yearly"), "YS")
    plain, ice = os.path.join(work, "plain.zarr"), os.path.join(work, "repo")
    print(
        f"data: {ds.t2m.nbytes / 1e6:.0f} MB ({NT} x {NLAT} x {NLON} float32), "
        f"{len(files)} yearly files, time chunk {CHUNK}, {repeats} repeat(s); "
        f"icechunk {icechunk.__version__}, load: {os.getloadavg()[0]:.2f}",
        flush=True,
    )
    to_plain(files, plain)  # warm-up: imports, first opens (not timed)
    cases = (("plain local Zarr store", to_plain, plain), ("local Icechunk repo", to_icechunk, ice))
    rows: list[tuple[str, list[float]]] = [(name, []) for name, _, _ in cases]
    for _ in range(repeats):  # the targets alternate within each repeat: same load for both
        for (_, fn, path), (_, times) in zip(cases, rows, strict=True):
            t0 = time.perf_counter()
            fn(files, path)
            times.append(time.perf_counter() - t0)
    want = ds.t2m.values.tobytes()
    assert xr.open_zarr(plain, chunks=None).t2m.values.tobytes() == want, "plain differs"
    repo = icechunk.Repository.open(icechunk.local_filesystem_storage(ice))
    session = repo.readonly_session(branch="main")
    got = xr.open_zarr(session.store, chunks=None, consolidated=False).t2m.values
    assert got.tobytes() == want, "icechunk differs"
    commits = [s.message for s in repo.ancestry(branch="main")]
    assert commits == ["convert 4 yearly files", "Repository initialized"], commits
    ref = statistics.median(rows[0][1])
    print(f"\n{'target':<24} {'median (min) s':>16} {'MB/s':>6} {'vs plain':>9} {'files':>6}")
    for (name, times), path in zip(rows, (plain, ice), strict=True):
        med = statistics.median(times)
        mbs = ds.t2m.nbytes / 1e6 / med
        print(
            f"{name:<24} {med:>8.2f} ({min(times):.2f}) {mbs:>6.0f} {med / ref:>8.2f}x "
            f"{count_files(path):>6}"
        )
    print("both outputs equal the data bit for bit; the Icechunk run is one commit")
    if not args.dir:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
