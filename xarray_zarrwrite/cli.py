"""The ``xarray-zarrwrite`` command line: ``template``, ``write-region``, ``convert``, ``check``
and ``demo``.

Every subcommand is a thin layer over a public function. Exit status:

* 0: success (``convert``/``check``: the archive is complete);
* 1: failure (a write or a task failed);
* 2: usage error or invalid input (bad options, missing or duplicate sources, sources that
  disagree with each other or with the template): nothing was written;
* 3: incomplete (``convert``: nothing failed, but the sources leave time steps of the archive
  missing, see ``xarray_zarrwrite:partial``; ``check``: chunks are missing).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
import sys
from collections.abc import Callable, Sequence
from typing import Any

__all__ = ["main"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3


def _kv(text: str, what: str, parse: Callable[[str], Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for item in filter(None, (s.strip() for s in text.split(","))):
        if "=" not in item:
            raise argparse.ArgumentTypeError(f"{what} must look like dim=value,...; got {item!r}")
        key, value = item.split("=", 1)
        try:
            out[key.strip()] = parse(value.strip())
        except ValueError as e:
            raise argparse.ArgumentTypeError(f"{what}: bad value {value!r} for {key!r}") from e
    return out


def _chunk_size(value: str) -> int | None:
    if value.lower() in ("none", "full", "-1"):
        return None
    size = int(value)
    if size <= 0:
        raise ValueError(value)
    return size


def parse_chunks(text: str) -> dict[str, int | None] | str:
    """``"time=100,lat=60,lon=-1"`` (``-1``/``full``: whole dimension) or ``"auto"``."""
    if text.strip() == "auto":
        return "auto"
    return _kv(text, "--chunks", _chunk_size)


def _slice(value: str) -> slice:
    start, sep, stop = value.partition(":")
    if not sep:
        raise ValueError(value)
    return slice(int(start) if start else None, int(stop) if stop else None)


def parse_region(text: str) -> dict[str, slice] | str:
    """``"time=0:100,lat=0:60"`` or ``"auto"``."""
    if text.strip() == "auto":
        return "auto"
    return _kv(text, "--region", _slice)


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _add_template_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("template layout")
    g.add_argument("--time-dim", default="time", help="the time dimension (default: time)")
    g.add_argument("--global-start", help="first timestamp of the archive")
    g.add_argument("--global-end", help="last timestamp of the archive")
    g.add_argument("--freq", help="time step, a pandas offset alias (default: inferred)")
    g.add_argument(
        "--chunks",
        type=parse_chunks,
        help="chunk sizes, e.g. time=100,lat=60,lon=-1 (-1: whole dimension), or auto",
    )
    g.add_argument(
        "--access-pattern",
        default="balanced",
        choices=["temporal", "spatial", "balanced"],
        help="what chunks=auto optimises for (default: balanced)",
    )
    g.add_argument(
        "--compression",
        default="default",
        help="'default' (blosc zstd 3 shuffle), 'none', or e.g. blosc:lz4:5:bitshuffle, zstd:3",
    )
    g.add_argument("--zarr-format", type=int, choices=[2, 3], default=3)
    g.add_argument("--engine", help="xarray engine to open sources with (default: guessed)")


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert many sources into one archive, in parallel, resumably",
        description=(
            "Convert sources (paths, glob patterns, fsspec URLs) into one Zarr archive. Work "
            "is planned by output chunks; a re-run writes only what is missing."
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="SOURCE [SOURCE ...] STORE")
    _add_template_options(p)
    g = p.add_argument_group("variables")
    g.add_argument("--variables", type=_names, help="data variables to convert (a,b,c)")
    g.add_argument("--drop-variables", type=_names, help="data variables to leave out")
    g = p.add_argument_group("execution")
    g.add_argument("--scheduler", help="dask scheduler address (default: a local process pool)")
    g.add_argument("--workers", type=int, help="local worker processes (0: in this process)")
    g.add_argument("--memory-limit", help="memory per worker, e.g. 4GB")
    g.add_argument("--no-resume", action="store_true", help="replace the target, start over")
    g.add_argument(
        "--retries",
        type=int,
        default=3,
        help="extra attempts of a store write or a task after a transient error (default 3)",
    )
    g.add_argument("--no-progress", action="store_true", help="no progress bar")
    g.add_argument("--json", metavar="FILE", help="write the report as JSON ('-': stdout)")
    p.set_defaults(func=_cmd_convert)


def _add_check(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="report unwritten chunks (exit 3 if incomplete)",
        description="Report which chunks of which variables are unwritten, as time ranges.",
    )
    p.add_argument("store", help="the archive: path or fsspec URL")
    p.add_argument("--time-dim", default="time")
    p.add_argument("--variables", type=_names, help="variables to check (default: all data)")
    p.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout)")
    p.set_defaults(func=_cmd_check)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xarray-zarrwrite``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="xarray-zarrwrite",
        description="Fast, parallel and safe writes of xarray datasets to Zarr.",
        epilog=(
            "Exit status: 0 success (archive complete), 1 failure, 2 usage error or invalid "
            "input (nothing written), 3 incomplete (time steps missing)."
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser(
        "template",
        help="write a metadata-only template spanning the full extent",
        description="Write a metadata-only Zarr template from an example source (one file).",
    )
    p.add_argument("source", help="example data: a NetCDF/Zarr path or URL")
    p.add_argument("store", help="target: path or fsspec URL")
    _add_template_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace what the target holds")
    p.set_defaults(func=_cmd_template)

    p = sub.add_parser(
        "write-region",
        help="write one source into its region of a template",
        description="Validate a source against the template and write it into its region.",
    )
    p.add_argument("source", help="the data: a NetCDF/Zarr path or URL")
    p.add_argument("store", help="the template: path or fsspec URL")
    p.add_argument(
        "--region",
        type=parse_region,
        default="auto",
        help="auto (from labels, default) or e.g. time=0:100",
    )
    p.add_argument(
        "--unsafe-chunks",
        action="store_true",
        help="allow regions that do not fall on chunk boundaries (unsafe with other writers)",
    )
    p.add_argument("--on-out-of-range", choices=["raise", "clip"], default="raise")
    p.add_argument("--engine", help="xarray engine to open the source with")
    p.set_defaults(func=_cmd_write_region)

    _add_convert(sub)
    _add_check(sub)

    p = sub.add_parser(
        "demo",
        help="convert generated monthly NetCDF files and compare with xarray",
        description=(
            "Generate monthly NetCDF files, convert them with a local process pool, verify the "
            "archive bit for bit and time it against xarray's open_mfdataset().to_zarr()."
        ),
    )
    p.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    p.add_argument("--months", type=int, default=12, help="monthly files (default 12)")
    p.add_argument("--nlat", type=int, default=120)
    p.add_argument("--nlon", type=int, default=240)
    p.add_argument("--workers", type=int, default=2)
    p.set_defaults(func=_cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .errors import InputError, ZarrWriteError

    try:
        return int(args.func(args))
    except InputError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_USAGE
    except (ZarrWriteError, FileNotFoundError, ValueError, TypeError, KeyError) as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130


# -- subcommands ------------------------------------------------------------------------------


def _open(source: str, engine: str | None) -> Any:
    from .convert._sources import expand_sources, open_source

    specs = expand_sources(source, engine=engine)
    if len(specs) != 1:
        raise ValueError(f"{source!r} matches {len(specs)} sources; give exactly one")
    return open_source(specs[0])


def _compression(text: str) -> Any:
    return None if text.lower() == "none" else text


def _cmd_template(args: argparse.Namespace) -> int:
    from .api import to_template

    ds = _open(args.source, args.engine)
    try:
        tmpl = to_template(
            ds,
            args.store,
            time_dim=args.time_dim,
            global_start=args.global_start,
            global_end=args.global_end,
            freq=args.freq,
            chunks=args.chunks,
            access_pattern=args.access_pattern,
            compression=_compression(args.compression),
            zarr_format=args.zarr_format,
            mode="w" if args.overwrite else "w-",
        )
    finally:
        ds.close()
    sizes = ", ".join(f"{d}={n}" for d, n in tmpl.sizes.items())
    print(f"template {args.store}: {sizes}; data variables {sorted(map(str, tmpl.data_vars))}")
    return EXIT_OK


def _cmd_write_region(args: argparse.Namespace) -> int:
    from .api import RegionWriteResult, write_region

    ds = _open(args.source, args.engine)
    try:
        result = write_region(
            ds,
            args.store,
            region=args.region,
            safe_chunks=not args.unsafe_chunks,
            on_out_of_range=args.on_out_of_range,
        )
    finally:
        ds.close()
    # blocking, with compute=True: never a WriteFuture or a dask Delayed
    assert isinstance(result, RegionWriteResult)
    region = ", ".join(f"{d}={s.start}:{s.stop}" for d, s in result.region.items())
    print(
        f"wrote {args.source} -> {args.store} [{region}]: {result.nchunks} chunk(s), "
        f"{result.nbytes} bytes in {result.seconds:.2f} s"
    )
    return EXIT_OK


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert

    if len(args.paths) < 2:
        print(
            "error: convert takes SOURCE [SOURCE ...] STORE: give at least one source",
            file=sys.stderr,
        )
        return EXIT_USAGE
    *sources, store = args.paths
    report = convert(
        sources,
        store,
        time_dim=args.time_dim,
        global_start=args.global_start,
        global_end=args.global_end,
        freq=args.freq,
        chunks=args.chunks,
        access_pattern=args.access_pattern,
        compression=_compression(args.compression),
        variables=args.variables,
        drop_variables=args.drop_variables,
        client=args.scheduler,
        max_workers=args.workers,
        memory_limit=args.memory_limit,
        resume=not args.no_resume,
        retries=args.retries,
        progress=not args.no_progress,
        summary=False,  # printed below, on stdout
        engine=args.engine,
        zarr_format=args.zarr_format,
        raise_on_failure=False,
    )
    print(report.summary())
    if args.json:
        out = dataclasses.asdict(report)
        out["status"], out["ok"] = report.status, report.ok
        _dump(out, args.json)
    return {"complete": EXIT_OK, "incomplete": EXIT_INCOMPLETE}.get(report.status, EXIT_FAILED)


def _cmd_check(args: argparse.Namespace) -> int:
    from ._check import PARTIAL_ATTR, check, read_record
    from ._store import resolve_store

    status = check(args.store, time_dim=args.time_dim, variables=args.variables)
    print(status.summary())
    # chunks convert wrote with fill values where no source had data (see PARTIAL_ATTR)
    record = read_record(resolve_store(args.store))
    if args.variables:
        record = {v: c for v, c in record.items() if v in args.variables}
    partial = {v: c for v, c in record.items() if c}
    for name, chunks in sorted(partial.items()):
        labels = sorted(t for missing in chunks.values() for t in missing)
        print(
            f"  {name}: {len(chunks)} partial chunk(s) ({PARTIAL_ATTR}), {len(labels)} "
            f"missing step(s): {labels[0]} .. {labels[-1]}"
        )
    complete = status.complete and not partial
    if args.json:
        out = dataclasses.asdict(status)
        out["complete"] = complete
        out["missing"] = status.missing
        out["partial"] = partial
        _dump(out, args.json)
    return EXIT_OK if complete else EXIT_INCOMPLETE


def _cmd_demo(args: argparse.Namespace) -> int:
    from .demo import run_demo

    ok = run_demo(
        workdir=args.dir,
        months=args.months,
        nlat=args.nlat,
        nlon=args.nlon,
        workers=args.workers,
    )
    return EXIT_OK if ok else EXIT_FAILED


def _dump(obj: Any, where: str) -> None:
    text = json.dumps(obj, indent=2, default=str)
    if where == "-":
        print(text)
    else:
        with open(where, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
