"""Turn the ``store`` argument users give (path, URL, zarr Store) into a zarr Store."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING, Any

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore

from .errors import InvalidNameError, ReadOnlyStoreError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["StoreLike", "check_node_name", "resolve_store", "store_key"]

StoreLike = str | os.PathLike[str] | Store


def resolve_store(
    store: StoreLike,
    *,
    storage_options: Mapping[str, Any] | None = None,
    read_only: bool = False,
) -> Store:
    """Return a zarr :class:`~zarr.abc.store.Store` for ``store``.

    Parameters
    ----------
    store
        A local path, a ``file://`` URL, any other fsspec URL (``memory://``, ``s3://`` ...),
        or a zarr Store, which is returned unchanged.
    storage_options
        Passed to fsspec for URLs. Not allowed with a Store or a local path.
    read_only
        Open the store read-only.

    Raises
    ------
    TypeError
        ``store`` is of an unsupported type.
    ValueError
        ``storage_options`` were given where they cannot be used.
    """
    if isinstance(store, Store):
        if storage_options:
            raise ValueError(
                "storage_options cannot be used with a zarr Store; configure the Store"
            )
        return store
    if not isinstance(store, str | os.PathLike):
        raise TypeError(
            f"store must be a path, an fsspec URL or a zarr Store, got {type(store).__name__}"
        )
    path = os.fspath(store)
    path = path.removeprefix("file://")
    if "://" in path or "::" in path:
        return FsspecStore.from_url(
            path, storage_options=dict(storage_options or {}), read_only=read_only
        )
    if storage_options:
        raise ValueError("storage_options are only used with fsspec URLs, not local paths")
    return LocalStore(os.path.abspath(path), read_only=read_only)


def ensure_writable(store: Store) -> None:
    """Raise :class:`ReadOnlyStoreError` when ``store`` cannot be written."""
    if store.read_only or not store.supports_writes:
        raise ReadOnlyStoreError(
            f"the target store {store} is read-only; open it with read_only=False to write"
        )


def store_key(store: Store) -> str:
    """A string that identifies the place a store points at, for per-process caches."""
    return f"{type(store).__module__}.{type(store).__qualname__}:{store}"


def check_node_name(name: object, what: str = "variable") -> str:
    """Return ``name`` if it is a safe zarr node name, else raise :class:`InvalidNameError`.

    A safe name is a non-empty string without ``/`` or ``\\``, NUL or other control characters,
    that is not ``.`` or ``..`` and does not start with ``__`` (reserved by zarr): it can never
    address a key outside its parent group.
    """
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} names must be strings, got {name!r}")
    bad = (
        not name
        or name in {".", ".."}
        or name.startswith("__")
        or any(c in name for c in "/\\")
        or any(ord(c) < 32 or ord(c) == 127 for c in name)
    )
    if bad:
        raise InvalidNameError(
            f"{what} name {name!r} is not allowed: names must be non-empty, must not be '.' or "
            "'..', start with '__', or contain '/', '\\' or control characters such as NUL"
        )
    return name
