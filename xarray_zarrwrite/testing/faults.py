"""Fault injection around real zarr stores: :class:`FaultyStore`.

``FaultyStore`` wraps a store (it never replaces it: every call that is not failed goes to the
wrapped store) and makes a seeded random share of calls fail the way networks and disks do, or
makes writes of chosen keys fail for good. Use it to test retries and error reporting, e.g. around
an S3 ``FsspecStore`` talking to a local ``moto_server``.
"""

from __future__ import annotations

import asyncio
import errno
import fnmatch
import random
import re
import threading
from collections import Counter
from typing import TYPE_CHECKING, Any, Final, Literal, Self, get_args

from zarr.abc.store import Store

from .._compat import WrapperStore

if TYPE_CHECKING:
    from collections.abc import AsyncIterator, Iterable

    from zarr.abc.store import ByteRequest

    from .._compat import Buffer, BufferPrototype

__all__ = ["FaultKind", "FaultyStore", "StoreOp"]

FaultKind = Literal["error", "timeout", "reset"]
"""``"error"``: ``OSError(EIO)`` before the call; ``"reset"``: ``ConnectionResetError`` before
the call; ``"timeout"``: ``TimeoutError`` *after* the call ran (the write landed, the answer was
lost), the nastiest case for a retrying writer."""

StoreOp = Literal["set", "get", "get_partial_values", "delete", "exists", "list"]
"""Operations faults can be injected into; ``"list"`` covers ``list``, ``list_prefix`` and
``list_dir``."""

FAULT_KINDS: Final[tuple[FaultKind, ...]] = get_args(FaultKind)
STORE_OPS: Final[tuple[StoreOp, ...]] = get_args(StoreOp)


def _parse_choice(values: Iterable[str], allowed: tuple[str, ...], what: str) -> tuple[str, ...]:
    if isinstance(values, str):
        values = (values,)
    parsed = tuple(values)
    bad = [v for v in parsed if v not in allowed]
    if bad or not parsed:
        raise ValueError(f"{what} must be a non-empty subset of {list(allowed)}, got {parsed!r}")
    return parsed


class FaultyStore(WrapperStore[Store]):
    """A store wrapper that injects transient and permanent faults.

    Parameters
    ----------
    store
        The store to wrap.
    rate
        Probability, in [0, 1], that a call of one of ``ops`` fails with a transient fault.
    seed
        Seed of the random generator: the same sequence of calls gets the same faults.
    kinds
        Transient fault kinds to draw from (see :data:`FaultKind`).
    ops
        Operations to inject faults into (see :data:`StoreOp`).
    permanent_keys
        Keys whose operations in ``ops`` always fail with ``PermissionError`` (never retried):
        glob patterns (``fnmatch``, e.g. ``"temp/c/1/*"``) or compiled regular expressions
        (``re.search``). Can be changed later through the attribute of the same name.
    max_faults
        Stop injecting transient faults after this many (``None``: no limit). Permanent faults
        are not limited.

    Attributes
    ----------
    faults_injected
        Transient faults injected so far.
    permanent_faults_injected
        Permanent faults injected so far.
    fault_counts
        Transient faults per operation.
    calls
        Calls of operations in ``ops`` seen so far.
    """

    def __init__(
        self,
        store: Store,
        *,
        rate: float = 0.1,
        seed: int = 0,
        kinds: Iterable[FaultKind] = FAULT_KINDS,
        ops: Iterable[StoreOp] = ("set", "get", "delete"),
        permanent_keys: Iterable[str | re.Pattern[str]] = (),
        max_faults: int | None = None,
    ) -> None:
        if not 0 <= rate <= 1:
            raise ValueError(f"rate must be a probability in [0, 1], got {rate!r}")
        if max_faults is not None and max_faults < 0:
            raise ValueError(f"max_faults must be >= 0 or None, got {max_faults!r}")
        super().__init__(store)
        self.rate = float(rate)
        self.seed = seed
        self.kinds: tuple[FaultKind, ...] = _parse_choice(kinds, FAULT_KINDS, "kinds")  # type: ignore[assignment]
        self.ops: tuple[StoreOp, ...] = _parse_choice(ops, STORE_OPS, "ops")  # type: ignore[assignment]
        self.permanent_keys: tuple[str | re.Pattern[str], ...] = tuple(permanent_keys)
        self.max_faults = max_faults
        self._lock = threading.Lock()
        self._rng = random.Random(seed)
        self.faults_injected = 0
        self.permanent_faults_injected = 0
        self.fault_counts: Counter[str] = Counter()
        self.calls = 0

    def _config(self) -> dict[str, Any]:
        return {
            "rate": self.rate,
            "seed": self.seed,
            "kinds": self.kinds,
            "ops": self.ops,
            "permanent_keys": self.permanent_keys,
            "max_faults": self.max_faults,
        }

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, **self._config())

    def __getstate__(self) -> dict[str, Any]:
        state = self.__dict__.copy()
        del state["_lock"]
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._lock = threading.Lock()

    def __eq__(self, value: object) -> bool:
        return (
            type(self) is type(value)
            and isinstance(value, FaultyStore)
            and self._store == value._store
            and self._config() == value._config()
        )

    def __str__(self) -> str:
        return f"faulty+{self._store}"

    def __repr__(self) -> str:
        return f"FaultyStore({self._store!r}, rate={self.rate}, seed={self.seed}, ops={self.ops})"

    # -- drawing faults -----------------------------------------------------------------------

    def _is_permanent(self, key: str) -> str | None:
        for pattern in self.permanent_keys:
            if isinstance(pattern, re.Pattern):
                if pattern.search(key):
                    return pattern.pattern
            elif fnmatch.fnmatchcase(key, pattern):
                return pattern
        return None

    def _draw(self, op: StoreOp, keys: Iterable[str]) -> FaultKind | None:
        """Decide the fate of one call: raise a permanent fault, or return a transient kind."""
        if op not in self.ops:
            return None
        with self._lock:
            self.calls += 1
            for key in keys:
                pattern = self._is_permanent(key)
                if pattern is not None:
                    self.permanent_faults_injected += 1
                    raise PermissionError(
                        errno.EACCES,
                        f"injected permanent failure of {op} {key!r} (matches {pattern!r})",
                    )
            if self.max_faults is not None and self.faults_injected >= self.max_faults:
                return None
            if self._rng.random() >= self.rate:
                return None
            kind = self._rng.choice(self.kinds)
            self.faults_injected += 1
            self.fault_counts[op] += 1
            return kind

    @staticmethod
    def _before(kind: FaultKind | None, op: str, what: str) -> None:
        if kind == "error":
            raise OSError(errno.EIO, f"injected transient I/O error in {op} {what}")
        if kind == "reset":
            raise ConnectionResetError(
                errno.ECONNRESET, f"injected connection reset in {op} {what}"
            )

    @staticmethod
    def _after(kind: FaultKind | None, op: str, what: str) -> None:
        if kind == "timeout":
            raise TimeoutError(f"injected timeout in {op} {what} (the call itself ran)")

    # -- store methods ------------------------------------------------------------------------

    async def set(self, key: str, value: Buffer) -> None:
        # docstring inherited
        kind = self._draw("set", (key,))
        self._before(kind, "set", repr(key))
        await self._store.set(key, value)
        self._after(kind, "set", repr(key))

    async def _set_many(self, values: Iterable[tuple[str, Buffer]]) -> None:
        # docstring inherited
        await asyncio.gather(*(self.set(key, value) for key, value in values))

    async def set_if_not_exists(self, key: str, value: Buffer) -> None:
        # docstring inherited
        kind = self._draw("set", (key,))
        self._before(kind, "set_if_not_exists", repr(key))
        await self._store.set_if_not_exists(key, value)
        self._after(kind, "set_if_not_exists", repr(key))

    async def get(
        self, key: str, prototype: BufferPrototype, byte_range: ByteRequest | None = None
    ) -> Buffer | None:
        # docstring inherited
        kind = self._draw("get", (key,))
        self._before(kind, "get", repr(key))
        value = await self._store.get(key, prototype, byte_range)
        self._after(kind, "get", repr(key))
        return value

    async def get_partial_values(
        self,
        prototype: BufferPrototype,
        key_ranges: Iterable[tuple[str, ByteRequest | None]],
    ) -> list[Buffer | None]:
        # docstring inherited
        key_ranges = list(key_ranges)
        keys = [key for key, _ in key_ranges]
        kind = self._draw("get_partial_values", keys)
        self._before(kind, "get_partial_values", f"of {len(keys)} key(s)")
        values = await self._store.get_partial_values(prototype, key_ranges)
        self._after(kind, "get_partial_values", f"of {len(keys)} key(s)")
        return values

    async def exists(self, key: str) -> bool:
        # docstring inherited
        kind = self._draw("exists", (key,))
        self._before(kind, "exists", repr(key))
        found = await self._store.exists(key)
        self._after(kind, "exists", repr(key))
        return found

    async def delete(self, key: str) -> None:
        # docstring inherited
        kind = self._draw("delete", (key,))
        self._before(kind, "delete", repr(key))
        await self._store.delete(key)
        self._after(kind, "delete", repr(key))

    async def _listing(self, what: str, iterator: AsyncIterator[str]) -> AsyncIterator[str]:
        kind = self._draw("list", ())
        self._before(kind, "list", what)
        keys = [key async for key in iterator]
        self._after(kind, "list", what)
        for key in keys:
            yield key

    def list(self) -> AsyncIterator[str]:
        # docstring inherited
        return self._listing("of the store", self._store.list())

    def list_prefix(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        return self._listing(f"of prefix {prefix!r}", self._store.list_prefix(prefix))

    def list_dir(self, prefix: str) -> AsyncIterator[str]:
        # docstring inherited
        return self._listing(f"of directory {prefix!r}", self._store.list_dir(prefix))
