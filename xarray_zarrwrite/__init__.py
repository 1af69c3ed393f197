"""Fast, parallel and safe writes of large xarray datasets to Zarr."""

from __future__ import annotations

from . import errors as errors
from .config import config as config

__version__ = "0.1.0"
