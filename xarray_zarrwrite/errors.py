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
    "BudgetTooSmallError",
    "ChunkSpecError",
    "ConvertOptionError",
    "DuplicateSourceError",
    "OptionError",
    "SourceError",
    "SourceNotFoundError",
    "SourceTypeError",
    "TemplateChangedError",
    "ArchiveMismatchError",
    "CodecError",
    "CommitConflictError",
    "IcechunkTargetError",
    "LayoutError",
    "MainGuardError",
    "PartialChunkWarning",
    "CompressionError",
    "DimensionMismatchError",
    "DtypeCastError",
    "ExtentError",
    "InputError",
    "InvalidNameError",
    "MissingDependencyError",
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


class ExtentError(InputError):
    """An :func:`~xarray_zarrwrite.extend` would shrink the axis, or ``until``/``steps`` is
    invalid or off the axis' step; nothing was changed."""


class BudgetTooSmallError(InputError):
    """``max_inflight_mb`` cannot hold the write units a stream step would open beside those
    already open (only later steps complete them, so waiting cannot help); nothing queued."""


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


class MainGuardError(ConvertOptionError):
    """A process pool was asked for from a script without an ``if __name__ == "__main__":``
    guard: its workers would re-run the script (and the convert) on start-up."""


class ArchiveMismatchError(TemplateError):
    """A re-run asks for options (chunks, shards, compression, packing, encoding, zarr_format)
    that differ from those of the archive it would resume; names each difference."""


class LayoutError(RegionLabelError):
    """A source does not fit the layout the sources make together (another grid, labels
    another source holds for the same variable, a variable one member lacks); names the file."""


class PartialChunkWarning(UserWarning):
    """The archive's time extent ends (or starts) in the middle of a chunk."""


class CodecError(InputError):
    """An encoded chunk is malformed, truncated or corrupted, or codec options are invalid."""


class WriteFailedError(ZarrWriteError, OSError):
    """A write failed after validation (store I/O error after retries, background failure)."""


class CommitConflictError(WriteFailedError):
    """An Icechunk commit conflicted with another commit to the same branch (same chunks or
    metadata) after an automatic rebase; nothing was committed. ``branch`` and ``conflicts``
    (array path -> what conflicted) name it."""

    branch: str | None = None
    conflicts: dict[str, list[str]] = {}  # replaced per instance


class IcechunkTargetError(InputError):
    """An Icechunk target was given with options it cannot take (``branch=``/``message=`` with
    a Session, an unknown branch, ``compute=False``); nothing was written."""


class MissingDependencyError(ZarrWriteError, ImportError):
    """An optional dependency a feature needs is not installed (the message names the extra)."""
