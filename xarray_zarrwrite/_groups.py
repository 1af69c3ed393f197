"""Groups: templates in a group of a store (``group=``) and DataTree input (one per node)."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING, Any

import xarray as xr
import zarr

from ._store import group_path, resolve_store
from .errors import TemplateError

if TYPE_CHECKING:
    from zarr.abc.store import Store

    from ._store import StoreLike

__all__ = ["consolidate_root", "ensure_parents", "tree_templates"]

#: xarray's warning when a template written with consolidated=False is opened: expected.
NOT_CONSOLIDATED = "Failed to open Zarr store with consolidated metadata"


def consolidate_root(base: Store) -> None:
    """Consolidated metadata at the root of ``base``, covering every group in it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        zarr.consolidate_metadata(base)


def tree_templates(
    tree: xr.DataTree, store: StoreLike, group: str | None, kwargs: dict[str, Any]
) -> xr.DataTree:
    """One template per node of ``tree`` that has data variables (root first)."""
    base = group_path(group) if group is not None else ""
    nodes = [n for n in tree.subtree if n.has_data and n.data_vars]
    if not nodes:
        raise TemplateError("the DataTree has no node with data variables")
    for node in nodes:
        path = "/".join(p for p in (base, node.path.strip("/")) if p)
        from ._template import to_template  # it calls us

        to_template(node.to_dataset(inherit=False), store, group=path or None, **kwargs)
    target = resolve_store(store, storage_options=kwargs.get("storage_options"))
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Consolidated metadata", category=UserWarning)
        warnings.filterwarnings("ignore", message=NOT_CONSOLIDATED, category=RuntimeWarning)
        out: xr.DataTree = xr.open_datatree(
            target,  # type: ignore[arg-type]  # xarray accepts zarr Stores; not in its hints
            engine="zarr",
            group=group,
            chunks=None,
        )
    return out


def ensure_parents(base: Store, group: str, fmt: int) -> None:
    """Create the groups above ``group`` that do not exist, as ``to_zarr(group=)`` does."""
    parts = group_path(group).split("/")
    for depth in range(len(parts)):
        path = "/".join(parts[:depth])
        try:
            zarr.open_group(base, path=path, mode="r", use_consolidated=False)
        except (FileNotFoundError, KeyError, ValueError):
            zarr.create_group(base, path=path, zarr_format=fmt)  # type: ignore[arg-type]
