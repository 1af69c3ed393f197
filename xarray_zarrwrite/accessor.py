"""``Dataset.fastzarr`` and ``DataArray.fastzarr``: thin delegates to :mod:`xarray_zarrwrite.api`.

A DataArray behaves like a one-variable Dataset named after it.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import xarray as xr

from . import api

if TYPE_CHECKING:
    from dask.delayed import Delayed

    from ._region import RegionPlan
    from ._store import StoreLike
    from ._stream import WriteFuture

__all__ = ["FastZarrAccessor"]

T = TypeVar("T", xr.Dataset, xr.DataArray)


class FastZarrAccessor(Generic[T]):
    """Fast, safe Zarr writes: ``ds.fastzarr.to_template(...)``, ``.write_region(...)``."""

    def __init__(self, obj: T) -> None:
        self._obj: T = obj

    def to_template(self, store: StoreLike, **kwargs: Any) -> xr.Dataset:
        """Write a metadata-only template; see :func:`xarray_zarrwrite.to_template`."""
        return api.to_template(self._obj, store, **kwargs)

    def write_region(
        self, store: StoreLike, **kwargs: Any
    ) -> api.RegionWriteResult | Delayed | WriteFuture:
        """Write this data into its region; see :func:`xarray_zarrwrite.write_region`."""
        return api.write_region(self._obj, store, **kwargs)

    def append(self, store: StoreLike, **kwargs: Any) -> api.RegionWriteResult:
        """Extend the template as needed and write this data; see
        :func:`xarray_zarrwrite.append`."""
        from ._append import append

        return append(self._obj, store, **kwargs)

    def plan(self, store: StoreLike, **kwargs: Any) -> RegionPlan:
        """Validate against the template and return the plan; see :func:`xarray_zarrwrite.plan`."""
        return api.plan(self._obj, store, **kwargs)


def _delegate_signature(method: Callable[..., Any], func: Callable[..., Any]) -> None:
    """Show ``func``'s parameters on the accessor method (``help()``, IDEs, the API docs):
    the method takes ``**kwargs`` only to stay a thin delegate."""
    sig = inspect.signature(func)
    params = list(sig.parameters.values())
    self_param = inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD)
    method.__signature__ = sig.replace(parameters=[self_param, *params[1:]])  # type: ignore[attr-defined]


def _append_func() -> Callable[..., Any]:
    from ._append import append

    return append


for _name, _func in (
    ("to_template", api.to_template),
    ("write_region", api.write_region),
    ("plan", api.plan),
    ("append", _append_func()),
):
    _delegate_signature(getattr(FastZarrAccessor, _name), _func)

# xarray: register_*_accessor are unannotated
xr.register_dataset_accessor("fastzarr")(FastZarrAccessor)  # type: ignore[no-untyped-call]
xr.register_dataarray_accessor("fastzarr")(FastZarrAccessor)  # type: ignore[no-untyped-call]
