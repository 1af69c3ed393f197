"""The ``xarray-zarrwrite`` command line: ``template``, ``write-region``, ``convert``, ``check``
and ``demo``.

Every subcommand is a thin layer over a public function. Messages name the command line's
flags, stores print as the paths and URLs given. Exit status:

* 0: success (``convert``/``check``: the archive is complete);
* 1: failure (a write or a task failed);
* 2: usage error or invalid input (bad options, missing or duplicate sources, sources that
  disagree with each other or with the template): nothing was written;
* 3: incomplete (``convert``: nothing failed, but the sources leave time steps of the archive
  missing, see ``xarray_zarrwrite:partial``; ``check``: chunks are missing);
* 130: interrupted (Ctrl-C): queued tasks were cancelled; the same command resumes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import inspect
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

from ._cli_advice import source_texts
from ._cli_util import (
    Interrupts,
    for_shell,
    json_object,
    parse_chunks,
    parse_region,
    stdout_to_stderr,
    store_texts,
)

__all__ = ["main", "parse_chunks", "parse_region"]

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_INCOMPLETE = 3
EXIT_INTERRUPTED = 130

_FMT = argparse.RawDescriptionHelpFormatter


def _names(text: str) -> list[str]:
    return [n.strip() for n in text.split(",") if n.strip()]


def _examples(*lines: str) -> str:
    return "examples:\n" + "\n".join(f"  {line}" for line in lines)


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
        help="what --chunks auto optimises for (default: balanced)",
    )
    g.add_argument(
        "--compression",
        default="default",
        help="'default' (blosc zstd 3 shuffle), 'none', or e.g. blosc:lz4:5:bitshuffle, zstd:3",
    )
    g.add_argument(
        "--packing",
        type=json_object("--packing"),
        help='JSON, e.g. \'{"t2m": {"bits": 16, "valid_range": [180, 340]}}\'',
    )
    g.add_argument("--zarr-format", type=int, choices=[2, 3], default=3)
    g.add_argument("--engine", help="xarray engine to open sources with (default: guessed)")
    g.add_argument(
        "--storage-options",
        type=json_object("--storage-options"),
        help="fsspec options of the target as JSON, e.g. '{\"anon\": false}'",
    )


#: Flags of keywords that ``convert`` may or may not have: added when its signature has them.
_CONVERT_OPTIONAL: tuple[tuple[str, str, dict[str, Any]], ...] = (
    (
        "executor",
        "--executor",
        {
            "choices": ["threads", "processes"],
            "help": "where tasks run "
            "without --scheduler: threads of this process (default) or a process pool",
        },
    ),
    ("shards", "--shards", {"type": parse_chunks, "help": "shard sizes, e.g. time=365"}),
    (
        "extend",
        "--extend",
        {
            "action": "store_true",
            "help": "grow the archive along time to take sources past its end",
        },
    ),
    (
        "template_packing",
        "--template-packing",
        {
            "choices": ["auto", "first", "scan", "float"],
            "help": "packing of float variables whose sources are packed integers (default auto)",
        },
    ),
    (
        "encoding",
        "--encoding",
        {
            "type": json_object("--encoding"),
            "help": 'per-variable encoding as JSON, e.g. \'{"t2m": {"dtype": "float32"}}\'',
        },
    ),
    (
        "open_kwargs",
        "--open-kwargs",
        {"type": json_object("--open-kwargs"), "help": "keywords of xarray.open_dataset as JSON"},
    ),
    (
        "source_storage_options",
        "--source-storage-options",
        {
            "type": json_object("--source-storage-options"),
            "help": "fsspec options of the sources as JSON",
        },
    ),
)


def _convert_keywords() -> set[str]:
    from .convert import convert

    return set(inspect.signature(convert).parameters)


def _add_convert(sub: Any) -> None:
    p = sub.add_parser(
        "convert",
        help="convert many sources into one archive, in parallel, resumably",
        formatter_class=_FMT,
        description=(
            "Convert sources (paths, glob patterns, fsspec URLs) into one Zarr archive. Work\n"
            "is planned by output chunks; a re-run writes only what is missing."
        ),
        epilog=_examples(
            "xarray-zarrwrite convert 't2m_*.nc' archive.zarr --chunks time=30",
            "xarray-zarrwrite convert 's3://bucket/era5/*.nc' s3://bucket/era5.zarr \\",
            "    --source-storage-options '{\"anon\": true}' --json report.json",
            "xarray-zarrwrite convert 't2m_*.nc' archive.zarr --json - | jq .status",
        ),
    )
    p.add_argument("paths", nargs="+", metavar="PATH", help="SOURCE [SOURCE ...] STORE")
    _add_template_options(p)
    g = p.add_argument_group("variables")
    g.add_argument("--variables", type=_names, help="data variables to convert (a,b,c)")
    g.add_argument("--drop-variables", type=_names, help="data variables to leave out")
    g = p.add_argument_group("execution")
    g.add_argument("--scheduler", help="dask scheduler address, e.g. tcp://host:8786")
    g.add_argument("--workers", type=int, help="workers (0: tasks run one by one, in order)")
    g.add_argument("--memory-limit", help="memory per worker, e.g. 4GB")
    g.add_argument("--no-resume", action="store_true", help="replace the target, start over")
    g.add_argument(
        "--retries",
        type=int,
        default=3,
        help="extra attempts of a store write or a task after a transient error (default 3)",
    )
    known = _convert_keywords()
    for keyword, flag, kw in _CONVERT_OPTIONAL:
        if keyword in known:
            g.add_argument(flag, dest=keyword, **kw)
    g.add_argument("--no-progress", action="store_true", help="no progress bars (on stderr)")
    g.add_argument(
        "--json",
        metavar="FILE",
        help="write the report as JSON ('-': stdout, then everything else goes to stderr)",
    )
    p.set_defaults(func=_cmd_convert)


def _add_check(sub: Any) -> None:
    p = sub.add_parser(
        "check",
        help="report unwritten chunks (exit 3 if incomplete)",
        formatter_class=_FMT,
        description="Report which chunks of which variables are unwritten, as time ranges.",
        epilog=_examples(
            "xarray-zarrwrite check archive.zarr",
            "xarray-zarrwrite check archive.zarr --plot map.png --json status.json",
        ),
    )
    p.add_argument("store", help="the archive: path or fsspec URL")
    p.add_argument("--time-dim", default="time", help="dimension to report ranges along")
    p.add_argument("--variables", type=_names, help="variables to check (default: all data)")
    p.add_argument("--group", help="the archive's group inside STORE, e.g. a/b")
    p.add_argument(
        "--storage-options",
        type=json_object("--storage-options"),
        help="fsspec options of the archive as JSON",
    )
    p.add_argument("--json", metavar="FILE", help="write the result as JSON ('-': stdout)")
    p.add_argument(
        "--plot", metavar="PNG", help="draw the completeness map into an image (matplotlib)"
    )
    p.set_defaults(func=_cmd_check)


def _add_template(sub: Any) -> None:
    p = sub.add_parser(
        "template",
        help="write a metadata-only template spanning the full extent",
        formatter_class=_FMT,
        description="Write a metadata-only Zarr template from an example source (one file).",
        epilog=_examples(
            "xarray-zarrwrite template t2m_2000-01.nc archive.zarr \\",
            "    --global-end 2009-12-31 --chunks time=30,lat=-1,lon=-1",
        ),
    )
    p.add_argument("source", help="example data: a NetCDF/Zarr path or URL")
    p.add_argument("store", help="target: path or fsspec URL")
    _add_template_options(p)
    p.add_argument("--overwrite", action="store_true", help="replace what the target holds")
    p.set_defaults(func=_cmd_template)


def _add_write_region(sub: Any) -> None:
    p = sub.add_parser(
        "write-region",
        help="write one source into its region of a template",
        formatter_class=_FMT,
        description="Validate a source against the template and write it into its region.",
        epilog=_examples(
            "xarray-zarrwrite write-region t2m_2000-02.nc archive.zarr",
            "xarray-zarrwrite write-region part.nc archive.zarr --region time=0:30",
        ),
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
    p.add_argument(
        "--storage-options",
        type=json_object("--storage-options"),
        help="fsspec options of the template as JSON",
    )
    p.set_defaults(func=_cmd_write_region)


def _add_demo(sub: Any) -> None:
    p = sub.add_parser(
        "demo",
        help="convert generated monthly NetCDF files and compare with xarray",
        formatter_class=_FMT,
        description=(
            "Generate monthly NetCDF files, convert them, verify the archive bit for bit and\n"
            "time it against xarray's open_mfdataset().to_zarr(). With --data-only, only\n"
            "write the sample files the documentation uses."
        ),
        epilog=_examples(
            "xarray-zarrwrite demo",
            "xarray-zarrwrite demo --data-only data/        # t2m_2000-01.nc ... t2m_2000-12.nc",
        ),
    )
    p.add_argument("--dir", help="work directory (default: a temporary one, removed)")
    p.add_argument("--data-only", metavar="DIR", help="only write the sample NetCDF files into DIR")
    p.add_argument("--months", type=int, default=12, help="monthly files (default 12)")
    p.add_argument("--nlat", type=int, default=120)
    p.add_argument("--nlon", type=int, default=240)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--days", type=int, default=None, help="daily files (default 30 per month)")
    p.set_defaults(func=_cmd_demo)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``xarray-zarrwrite``."""
    from . import __version__

    parser = argparse.ArgumentParser(
        prog="xarray-zarrwrite",
        formatter_class=_FMT,
        description="Fast, parallel and safe writes of xarray datasets to Zarr.",
        epilog=(
            "exit status: 0 success (archive complete), 1 failure, 2 usage error or invalid\n"
            "input (nothing written), 3 incomplete (time steps missing), 130 interrupted.\n\n"
            + _examples(
                "xarray-zarrwrite demo --data-only data/",
                "xarray-zarrwrite convert 'data/t2m_*.nc' archive.zarr --chunks time=30",
                "xarray-zarrwrite check archive.zarr --plot map.png",
            )
        ),
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_template(sub)
    _add_write_region(sub)
    _add_convert(sub)
    _add_check(sub)
    _add_demo(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    level = logging.WARNING - 10 * min(args.verbose, 2)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s")
    from .errors import InputError, ZarrWriteError

    interrupts = Interrupts()
    try:
        with interrupts.watching():
            return int(args.func(args))
    except InputError as e:
        return _error(args, e, EXIT_USAGE)
    except (ZarrWriteError, OSError, ValueError, TypeError, KeyError) as e:
        return _error(args, e, EXIT_FAILED)
    except KeyboardInterrupt:
        n = interrupts.cancelled
        tasks = f"{n} tasks cancelled" if n is not None else "stopped"
        print(f"interrupted: {tasks}; re-run the same command to resume", file=sys.stderr)
        return EXIT_INTERRUPTED


def _error(args: argparse.Namespace, e: BaseException, code: int) -> int:
    """Print ``e`` for shell users (flags, not keywords; stores as given) and return ``code``."""
    stores: dict[str, str] = {}
    store = getattr(args, "store", None) or (
        args.paths[-1] if getattr(args, "paths", None) else None
    )
    if isinstance(store, str):
        stores = store_texts(store, getattr(args, "storage_options", None))
    sources = getattr(args, "paths", [])[:-1] or [getattr(args, "source", None) or ""]
    stores = {**source_texts([s for s in sources if s]), **stores}  # relative paths as given
    text = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    print(f"error: {for_shell(text, stores)}", file=sys.stderr)
    return code


# -- subcommands ------------------------------------------------------------------------------


def _open(source: str, engine: str | None) -> Any:
    from .convert._sources import expand_sources, open_source
    from .errors import SourceError

    specs = expand_sources(source, engine=engine)
    if len(specs) != 1:
        raise SourceError(f"{source!r} matches {len(specs)} sources; give exactly one")
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
            packing=args.packing,
            zarr_format=args.zarr_format,
            storage_options=args.storage_options,
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
            storage_options=args.storage_options,
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


def _convert_kwargs(args: argparse.Namespace) -> dict[str, Any]:
    kwargs: dict[str, Any] = {
        "time_dim": args.time_dim,
        "global_start": args.global_start,
        "global_end": args.global_end,
        "freq": args.freq,
        "chunks": args.chunks,
        "access_pattern": args.access_pattern,
        "compression": _compression(args.compression),
        "packing": args.packing,
        "variables": args.variables,
        "drop_variables": args.drop_variables,
        "client": args.scheduler,
        "max_workers": args.workers,
        "memory_limit": args.memory_limit,
        "resume": not args.no_resume,
        "retries": args.retries,
        "progress": not args.no_progress,
        "summary": False,  # printed by the command
        "engine": args.engine,
        "storage_options": args.storage_options,
        "zarr_format": args.zarr_format,
        "raise_on_failure": False,
    }
    for keyword, _, _ in _CONVERT_OPTIONAL:
        value = getattr(args, keyword, None)
        if value not in (None, False):
            kwargs[keyword] = value
    return kwargs


def _cmd_convert(args: argparse.Namespace) -> int:
    from .convert import convert
    from .errors import SourceError

    if len(args.paths) < 2:
        raise SourceError(
            "convert takes SOURCE [SOURCE ...] STORE: give at least one source before the store"
        )
    *sources, store = args.paths
    to_stdout = args.json == "-"
    out = sys.stderr if to_stdout else sys.stdout
    with stdout_to_stderr() if to_stdout else contextlib.nullcontext():
        report = convert(sources, store, **_convert_kwargs(args))
        # the store as given (not its resolved URL), flags instead of keywords
        stores = store_texts(store, args.storage_options)
        print(for_shell(report.summary(), stores), file=out, flush=True)
    if args.json:
        doc = dataclasses.asdict(report)
        doc["status"], doc["ok"] = report.status, report.ok
        _dump(doc, args.json)
    return {"complete": EXIT_OK, "incomplete": EXIT_INCOMPLETE}.get(report.status, EXIT_FAILED)


def _cmd_check(args: argparse.Namespace) -> int:
    from ._check import PARTIAL_ATTR, check, read_record
    from ._store import resolve_store

    opts = args.storage_options
    status = check(
        args.store,
        time_dim=args.time_dim,
        variables=args.variables,
        storage_options=opts,
        group=args.group,
    )
    out = sys.stderr if args.json == "-" else sys.stdout
    print(status.summary(), file=out)
    # chunks convert wrote with fill values where no source had data (see PARTIAL_ATTR)
    record = read_record(resolve_store(args.store, storage_options=opts, group=args.group))
    if args.variables:
        record = {v: c for v, c in record.items() if v in args.variables}
    partial = {v: c for v, c in record.items() if c}
    for name, chunks in sorted(partial.items()):
        labels = sorted(t for missing in chunks.values() for t in missing)
        print(
            f"  {name}: {len(chunks)} partial chunk(s) ({PARTIAL_ATTR}), {len(labels)} "
            f"missing step(s): {labels[0]} .. {labels[-1]}",
            file=out,
        )
    if args.plot:
        _save_plot(status, args.plot)
        print(f"completeness map: {args.plot}", file=out)
    complete = status.complete and not partial
    if args.json:
        doc = {f.name: getattr(status, f.name) for f in dataclasses.fields(status)}
        doc.pop("indexes", None)
        doc = json.loads(json.dumps(doc, default=_plain))
        doc["complete"] = complete
        doc["missing"] = status.missing
        doc["partial"] = partial
        _dump(doc, args.json)
    return EXIT_OK if complete else EXIT_INCOMPLETE


def _save_plot(status: Any, path: str) -> None:
    os.environ.setdefault("MPLBACKEND", "Agg")  # files only: never a window
    ax = status.plot()
    import matplotlib.pyplot as plt

    try:
        ax.figure.savefig(path, dpi=110)
    finally:
        plt.close(ax.figure)


def _cmd_demo(args: argparse.Namespace) -> int:
    if args.data_only:
        from .testing import sample_files

        paths = sample_files(args.data_only, months=args.months)
        print(f"wrote {len(paths)} sample file(s): {paths[0]} .. {paths[-1]}")
        return EXIT_OK
    from .demo import run_demo

    ok = run_demo(
        workdir=args.dir,
        months=args.months,
        nlat=args.nlat,
        nlon=args.nlon,
        workers=args.workers,
        days=args.days,
    )
    return EXIT_OK if ok else EXIT_FAILED


def _plain(obj: Any) -> Any:
    """JSON for what ``json`` does not know: dataclasses, tuples, dates."""
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return {f.name: getattr(obj, f.name) for f in dataclasses.fields(obj)}
    return str(obj)


def _dump(obj: Any, where: str) -> None:
    text = json.dumps(obj, indent=2, default=_plain)
    if where == "-":
        sys.stdout.write(text + "\n")
        sys.stdout.flush()
    else:
        with open(where, "w", encoding="utf-8") as f:
            f.write(text + "\n")


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
