"""Compressed size and speed of bit-packing against the usual lossy/lossless choices.

Run from the repository root (takes about a minute, ~1.5 GB of memory)::

    .venv/bin/python asv_bench/compare_packing.py            # full 30-day fields
    .venv/bin/python asv_bench/compare_packing.py --days 5   # quicker

Two float32 fields of shape (24 * days, 181, 360), chunked one day per chunk
(24, 181, 360): a smooth ERA5-like 2 m temperature (latitude gradient, land/sea pattern,
seasonal and diurnal cycles, travelling synoptic waves, 0.02 K white noise) and white noise
(280 +- 5 K). Every lossy method is set up for the same maximum absolute error (0.01 K and
0.05 K) and the measured maximum error is printed next to its size. Then the single-core
encode/decode throughput of bitpack at 8, 12 and 16 bits.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from benchmarks.bitpack import (
    bitpack_throughput,
    compare_sizes,
    era5_like_t2m,
    noisy_field,
)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--days", type=int, default=30, help="days of hourly data (default 30)")
    parser.add_argument(
        "--errors", type=float, nargs="+", default=[0.01, 0.05], help="max abs errors (K)"
    )
    args = parser.parse_args(argv)

    nt = 24 * args.days
    fields = {
        "smooth ERA5-like t2m": era5_like_t2m(nt=nt),
        "noisy (white noise, sd 5 K)": noisy_field((nt, 181, 360)),
    }
    print(f"# numpy {np.__version__}, {platform.processor() or platform.machine()}")
    for fname, field in fields.items():
        print(f"\n## {fname}: {field.shape} float32, {field.nbytes / 1e6:.0f} MB raw\n")
        print("| max error | method | MB | bits/value | ratio | measured max error |")
        print("|---|---|---:|---:|---:|---:|")
        for max_error in args.errors:
            table = compare_sizes(field, max_error)
            best = min(v["nbytes"] for v in table.values())
            for name, row in table.items():
                mark = " **(smallest)**" if row["nbytes"] == best else ""
                print(
                    f"| {max_error} K | {name}{mark} | {row['nbytes'] / 1e6:.2f} | "
                    f"{row['bits_per_value']:.2f} | {row['ratio']:.1f} | "
                    f"{row['max_error']:.4g} |"
                )

    chunk = era5_like_t2m(nt=24)
    print(f"\n## bitpack throughput, one {chunk.shape} float32 chunk, one thread\n")
    print("| mode | encode GB/s | decode GB/s |")
    print("|---|---:|---:|")
    cases = [{"bits": b} for b in (8, 12, 16)] + [
        {"max_error": 0.01},
        {"max_error": 0.01, "layout": "delta"},
    ]
    for options in cases:
        enc, dec = bitpack_throughput(chunk, **options)
        label = ", ".join(f"{k}={v}" for k, v in options.items())
        print(f"| {label} | {enc:.2f} | {dec:.2f} |")


if __name__ == "__main__":
    main()
