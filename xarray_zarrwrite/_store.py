"""Turn the ``store`` argument users give (path, URL, zarr Store) into a zarr Store."""

from __future__ import annotations

import functools
import os
from collections.abc import Callable, MutableMapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from zarr.abc.store import Store
from zarr.storage import FsspecStore, LocalStore, MemoryStore

from ._compat import memory_store_at
from .errors import InvalidNameError, OptionError, ReadOnlyStoreError

if TYPE_CHECKING:
    from collections.abc import Mapping

__all__ = ["StoreLike", "check_node_name", "leaves_no_empty_root", "resolve_store", "store_key"]

F = TypeVar("F", bound="Callable[..., Any]")

#: Also an ``fsspec.FSMap`` (``fsspec.get_mapper(url)``), accepted wherever a store is.
StoreLike = str | os.PathLike[str] | Store | MutableMapping[str, bytes]


def resolve_store(
    store: StoreLike,
    *,
    storage_options: Mapping[str, Any] | None = None,
    read_only: bool = False,
    group: str | None = None,
) -> Store:
    """Return a zarr :class:`~zarr.abc.store.Store` for ``store``.

    Parameters
    ----------
    store
        A local path (``str`` or ``pathlib.Path``), a ``file://`` URL, any other fsspec URL
        (``memory://``, ``s3://`` ...), an ``fsspec.FSMap``, or a zarr Store, which is
        returned unchanged.
    storage_options
        Passed to fsspec for URLs. Not allowed with a Store or a local path.
    read_only
        Open the store read-only.
    group
        A group inside the store (``"a/b"``): the Store returned is rooted there, so that
        everything written or read through it lands in that group, as ``to_zarr(group=)``.

    Raises
    ------
    OptionError
        ``store`` is of an unsupported type, or ``storage_options`` were given where they
        cannot be used (an :class:`~xarray_zarrwrite.errors.InputError`, also a ``TypeError``).
    """
    if group is not None:
        base = resolve_store(store, storage_options=storage_options, read_only=read_only)
        return in_group(base, group)
    if isinstance(store, Store):
        if storage_options:
            raise OptionError(
                "storage_options cannot be used with a zarr Store; configure the Store"
            )
        return store
    mapper = _from_fsmap(store, storage_options, read_only)
    if mapper is not None:
        return mapper
    if not isinstance(store, str | os.PathLike):
        raise OptionError(
            "store must be a path, an fsspec URL, an fsspec.FSMap or a zarr Store, got "
            f"{type(store).__name__}"
        )
    path = os.fspath(store)
    path = path.removeprefix("file://")
    if "://" in path or "::" in path:
        return FsspecStore.from_url(
            path, storage_options=dict(storage_options or {}), read_only=read_only
        )
    if storage_options:
        raise OptionError("storage_options are only used with fsspec URLs, not local paths")
    return LocalStore(os.path.abspath(path), read_only=read_only)


def _from_fsmap(store: object, storage_options: object, read_only: bool) -> Store | None:
    """A Store for an ``fsspec.FSMap`` (a local one as a LocalStore), else None."""
    try:
        from fsspec.mapping import FSMap
    except ImportError:  # fsspec is optional: then nothing is an FSMap
        return None
    if not isinstance(store, FSMap):
        return None
    if storage_options:
        raise OptionError("storage_options cannot be used with an FSMap; configure its filesystem")
    protocol = store.fs.protocol
    local = {"file", "local"} & set(protocol if isinstance(protocol, tuple | list) else [protocol])
    if local:
        return LocalStore(os.path.abspath(store.root), read_only=read_only)
    return FsspecStore.from_mapper(store, read_only=read_only)


def group_path(group: object) -> str:
    """``group`` checked and normalised (``"a/b"``), or :class:`InvalidNameError`."""
    if not isinstance(group, str):
        raise InvalidNameError(f"group must be a string such as 'a/b', got {group!r}")
    parts = group.strip("/").split("/")
    for part in parts:
        check_node_name(part, "group")
    return "/".join(parts)


def in_group(store: Store, group: str) -> Store:
    """``store`` rooted at its group ``group`` (local, fsspec and memory stores).

    Raises
    ------
    InvalidNameError
        ``group`` could escape the store.
    OptionError
        A store of another type (wrap the store at the group yourself).
    """
    path = group_path(group)
    if isinstance(store, LocalStore):
        return LocalStore(store.root / path, read_only=store.read_only)
    if isinstance(store, FsspecStore):
        return FsspecStore(
            store.fs, read_only=store.read_only, path=f"{store.path.rstrip('/')}/{path}"
        )
    if isinstance(store, MemoryStore):
        return memory_store_at(store, path)
    raise OptionError(
        f"group= is supported for local, fsspec and memory stores, not {type(store).__name__}; "
        "pass a store rooted at the group instead"
    )


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


def leaves_no_empty_root(store_arg: int) -> Callable[[F], F]:
    """Decorate a public call whose positional argument ``store_arg`` (or ``store=``) is the
    target: when it raises, the local directories it created for the target are removed
    again if they are still empty.

    zarr's :class:`~zarr.storage.LocalStore` creates its root as soon as it is first used, so
    a call refused for bad input (nothing written) would otherwise leave an empty
    ``archive.zarr/`` (or ``archive.zarr/<group>/``) behind. Only directories that did not
    exist before the call are touched, deepest first, with :func:`os.rmdir`, which never
    removes a directory holding anything (a concurrent writer's objects included).
    """

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            store = args[store_arg] if len(args) > store_arg else kwargs.get("store")
            created = _absent_dirs(store, kwargs.get("group"))
            try:
                return fn(*args, **kwargs)
            except BaseException:
                for d in created:  # deepest first
                    try:
                        os.rmdir(d)
                    except OSError:  # not empty (written to), or gone: leave it and above
                        break
                raise

        return cast("F", wrapper)

    return deco


def _absent_dirs(store: object, group: object) -> list[str]:
    """The directories of a local ``store`` (and ``group`` in it) that do not exist, deepest
    first; empty for anything but a local path or LocalStore."""
    if isinstance(store, LocalStore):
        path = str(store.root)
    elif isinstance(store, str | os.PathLike):
        path = os.fspath(store).removeprefix("file://")
        if "://" in path or "::" in path:
            return []
    else:
        return []
    path = os.path.abspath(path)
    if isinstance(group, str) and group.strip("/"):
        path = os.path.join(path, *group.strip("/").split("/"))
    out: list[str] = []
    while not os.path.exists(path):
        out.append(path)
        parent = os.path.dirname(path)
        if parent == path:
            break
        path = parent
    return out
