"""Typed errors raised by :mod:`xarray_zarrwrite`.

Every error derives from :class:`ZarrWriteError`, in two families:

* :class:`InputError` (also a :class:`ValueError`): the input or the options are wrong. Raised
  before anything is written; ``except ValueError`` keeps working for callers that predate us.
* :class:`WriteFailedError` (also an :class:`OSError`): a write that was valid failed in the
  store (after retries for transient errors). Deliberately *not* a ``ValueError``: xarray's
  ``open_zarr`` treats ``ValueError`` as "no consolidated metadata" and falls back silently,
  and nothing may turn a lost write into a silent fallback.

Where a builtin fits better an error also derives from it (``StoreExistsError`` is a
``FileExistsError``). Messages say what was received and what to do about it.
"""

from __future__ import annotations

__all__ = [
    "ChunkSpecError",
    "ConvertOptionError",
    "DuplicateSourceError",
    "OptionError",
    "SourceError",
    "SourceNotFoundError",
    "SourceTypeError",
    "TemplateChangedError",
    "CodecError",
    "CompressionError",
    "DimensionMismatchError",
    "DtypeCastError",
    "InputError",
    "InvalidNameError",
    "PackingError",
    "ReadOnlyStoreError",
    "RegionAlignmentError",
    "RegionError",
    "RegionLabelError",
    "StoreExistsError",
    "TemplateError",
    "TemplateNotFoundError",
    "TimeEncodingError",
    "VariableNotInTemplateError",
    "WriteFailedError",
    "ZarrWriteError",
]


class ZarrWriteError(Exception):
    """Base class of every error raised by xarray_zarrwrite."""


class InputError(ZarrWriteError, ValueError):
    """The input data or options are invalid; nothing was written."""


class TemplateError(InputError):
    """The template cannot be built from the given example data and options."""


class ChunkSpecError(TemplateError):
    """A ``chunks=`` specification is invalid (unknown dim, non-positive size, bad type)."""


class CompressionError(TemplateError):
    """A ``compression=`` specification is not understood."""


class PackingError(TemplateError):
    """A ``packing=`` specification is invalid, or packed data falls outside its range."""


class InvalidNameError(InputError):
    """A variable, dimension or group name would escape the store root or is not a valid key."""


class StoreExistsError(InputError, FileExistsError):
    """``mode="w-"`` was asked for but the target already holds a Zarr hierarchy."""


class ReadOnlyStoreError(InputError, PermissionError):
    """The target store is read-only."""


class TemplateNotFoundError(InputError, FileNotFoundError):
    """No template (Zarr group) exists at the target of a region write."""


class RegionError(InputError):
    """The data cannot be placed into the template (bad region, shapes, variables)."""


class RegionLabelError(RegionError, KeyError):
    """A coordinate label is off-grid, duplicated, out of order, or outside the template."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class RegionAlignmentError(RegionError):
    """A region (or dask chunk) boundary does not fall on a chunk boundary of the template."""


class VariableNotInTemplateError(RegionError, KeyError):
    """A data variable of the region is absent from the template."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class DimensionMismatchError(RegionError):
    """Dimensions or shapes of a variable differ from the template's."""


class DtypeCastError(RegionError, TypeError):
    """The data's dtype cannot be cast safely to the template's dtype."""


class TimeEncodingError(RegionError):
    """Time units or calendar of the data disagree with the template's pinned time encoding."""


class TemplateChangedError(RegionError):
    """The template was replaced after this write was planned; nothing of it was written."""


class SourceError(InputError):
    """The ``sources`` of :func:`~xarray_zarrwrite.convert` are unusable as given (nothing
    was written)."""


class SourceNotFoundError(SourceError, FileNotFoundError):
    """A source path does not exist, or a pattern matches nothing."""


class DuplicateSourceError(SourceError):
    """The same source is given more than once."""


class SourceTypeError(SourceError, TypeError):
    """A source is neither a path, a pattern, a URL nor an xarray object."""


class OptionError(InputError, TypeError):
    """An option has the wrong type or value (``memory_limit``, ``retries``, ``max_workers``,
    ``max_buffer_mb``, ...); named with the value received."""


class ConvertOptionError(OptionError):
    """An option of :func:`~xarray_zarrwrite.convert` is invalid (``memory_limit``,
    ``retries``, ``max_workers``, ``start_method``)."""


class CodecError(InputError):
    """An encoded chunk is malformed, truncated or corrupted, or codec options are invalid."""


class WriteFailedError(ZarrWriteError, OSError):
    """A write failed after validation (store I/O error after retries, background failure)."""
