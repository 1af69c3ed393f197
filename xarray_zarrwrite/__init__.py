"""Fast, parallel and safe writes of large xarray datasets to Zarr.

``import xarray_zarrwrite`` registers the ``.fastzarr`` accessor on xarray objects.
"""

from __future__ import annotations

from . import accessor as _accessor  # noqa: F401  (registers ds.fastzarr)
from . import errors as errors
from ._append import append as append
from ._check import CheckReport as CheckReport
from ._check import VariableCompleteness as VariableCompleteness
from ._check import check as check
from ._extend import extend as extend
from ._stream import StreamWriter as StreamWriter
from ._stream import UnclosedWriterWarning as UnclosedWriterWarning
from ._stream import WriteFuture as WriteFuture
from ._write import RegionWriteResult as RegionWriteResult
from .api import open_template as open_template
from .api import plan as plan
from .api import to_template as to_template
from .api import write_region as write_region
from .codecs import Bitpack as Bitpack
from .codecs import BitpackCodec as BitpackCodec
from .config import config as config
from .convert import ConvertReport as ConvertReport
from .convert import convert as convert
from .storage import BufferedStore as BufferedStore

__version__ = "0.1.0"

__all__ = [
    "Bitpack",
    "BitpackCodec",
    "BufferedStore",
    "CheckReport",
    "ConvertReport",
    "VariableCompleteness",
    "append",
    "check",
    "convert",
    "RegionWriteResult",
    "StreamWriter",
    "UnclosedWriterWarning",
    "WriteFuture",
    "config",
    "errors",
    "extend",
    "open_template",
    "plan",
    "to_template",
    "write_region",
]
