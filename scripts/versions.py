"""Print the interpreter and the versions of the stack a test run uses (for CI logs)."""

from __future__ import annotations

import platform
from importlib.metadata import PackageNotFoundError, version

PACKAGES = (
    "zarr numcodecs xarray numpy pandas dask distributed fsspec s3fs h5netcdf h5py netCDF4 "
    "icechunk virtualizarr kerchunk"
).split()


def main() -> None:
    found = []
    for name in PACKAGES:
        try:
            found.append(f"{name} {version(name)}")
        except PackageNotFoundError:
            found.append(f"{name} -")
    print(f"Python {platform.python_version()}: " + ", ".join(found), flush=True)


if __name__ == "__main__":
    main()
