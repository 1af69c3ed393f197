"""Icechunk targets: a ``Session`` (the caller commits) or a ``Repository`` plus a branch
(we commit once, at the end), turned into a zarr Store and a commit/abort pair.

Everything Icechunk-specific lives here; the public functions only wrap their entry in
:func:`transactional` and hand dask writes to :func:`write_dask_forked`. Icechunk is an
optional extra: nothing here imports it unless the user passed one of its objects.

* A ``Repository`` target opens a writable session on ``branch``; the wrapped call writes
  through ``session.store`` and, if it returns normally, the session is committed once with
  ``message``. If it raises (or is interrupted) the session is discarded: nothing is committed
  and the branch stays where it was.
* A commit that finds the branch moved is rebased automatically with icechunk's
  ``ConflictDetector``: changes to other chunks (another writer's regions) are kept and the
  commit lands; changes to the same chunks or metadata raise :class:`CommitConflictError`,
  naming the branch and the conflicting arrays and chunks, and commit nothing.
* Parallel writers (dask blocks, convert tasks) write through forks of the session
  (``session.fork()``, picklable); every fork comes back and is merged into the one session
  that is committed, so a parallel write is one commit.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeVar, cast

import numpy as np

from .errors import CommitConflictError, IcechunkTargetError, ReadOnlyStoreError

if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

    from zarr.abc.store import Store

__all__ = [
    "Transaction",
    "is_icechunk",
    "open_transaction",
    "readable_store",
    "transactional",
    "write_dask_forked",
]

R = TypeVar("R")
F = TypeVar("F", bound="Callable[..., Any]")
_STORE_ATTR = "_xarray_zarrwrite_store"  # a session's one IcechunkStore, see Transaction.store
_MERGE_FANIN = 16  # forks merged per task of the dask tree reduction


def _kind(obj: object) -> str | None:
    """``"repository"``, ``"session"``, ``"store"`` for Icechunk objects, else None; never
    imports icechunk."""
    cls = type(obj)
    if not cls.__module__.startswith("icechunk"):
        return None
    names = {c.__name__ for c in cls.__mro__}
    for name, kind in (("Repository", "repository"), ("Session", "session")):
        if name in names:
            return kind
    return "store" if "IcechunkStore" in names else None


def is_icechunk(obj: object) -> bool:
    """True for an Icechunk ``Repository``, ``Session`` or ``IcechunkStore``."""
    return _kind(obj) is not None


@dataclass
class Transaction:
    """A writable Icechunk session and who commits it.

    ``owned`` sessions were opened by us from a ``Repository`` and are committed by
    :meth:`commit` with ``message``; a caller's session is only written to.
    """

    session: Any
    branch: str | None
    message: str
    owned: bool
    repo: Any = None
    given: Any = None  # the IcechunkStore the caller passed, if any

    @property
    def store(self) -> Store:
        """The zarr Store writes go through: the caller's own IcechunkStore, else one per
        session (``session.store`` makes a new object each time; calls with the same session
        share one, and so share ``blocking=False``'s per-store writer)."""
        if self.given is not None:
            given: Store = self.given
            return given
        cached = self.session.__dict__.get(_STORE_ATTR)
        if cached is None:
            cached = self.session.__dict__[_STORE_ATTR] = self.session.store
        store: Store = cached
        return store

    def commit(self, message: str | None = None) -> str | None:
        """Commit an owned session (rebasing over commits to other chunks); returns the new
        snapshot id, or None when there was nothing to commit or the session is the caller's.

        Raises
        ------
        CommitConflictError
            The branch moved and the other commit changed the same chunks or metadata;
            nothing of this session was committed.
        """
        if not self.owned or not self.session.has_uncommitted_changes:
            return None
        import icechunk

        try:
            snapshot: str = self.session.commit(
                message or self.message, rebase_with=icechunk.ConflictDetector()
            )
        except icechunk.ConflictError as exc:
            self.session.discard_changes()
            raise _conflict(self.branch, exc) from exc
        return snapshot

    def renew(self) -> None:
        """After a commit: a fresh writable session on the branch (owned sessions only)."""
        self.session = self.repo.writable_session(self.branch)

    def abort(self) -> None:
        """Drop what an owned session holds: nothing is committed, the branch is unchanged."""
        if self.owned and not self.session.read_only:
            self.session.discard_changes()


def _conflict(branch: str | None, exc: BaseException) -> CommitConflictError:
    """The typed error for a failed commit, naming the branch and what conflicted."""
    conflicts = getattr(exc, "conflicts", None) or []
    where: dict[str, list[str]] = {}
    for c in conflicts:
        chunks = getattr(c, "conflicted_chunks", None) or []
        kind = getattr(getattr(c, "conflict_type", None), "name", "conflict")
        path = str(getattr(c, "path", "?"))
        detail = ", ".join(str(tuple(ix)) for ix in chunks[:8])
        more = f" and {len(chunks) - 8} more" if len(chunks) > 8 else ""
        where.setdefault(path, []).append(
            f"{kind}" + (f" in chunk(s) {detail}{more}" if detail else "")
        )
    arrays = "; ".join(f"{p}: {', '.join(k)}" for p, k in where.items()) or str(exc)
    err = CommitConflictError(
        f"could not commit to branch {branch!r}: another commit landed since this session "
        f"started and changed the same data ({arrays}); nothing of this write was committed "
        "and the branch is unchanged. Write the region again (re-reading the branch), or "
        "write disjoint regions from each writer."
    )
    err.branch = branch
    err.conflicts = {p: list(k) for p, k in where.items()}
    return err


def open_transaction(
    store: Any, branch: str | None, message: str | None, operation: str
) -> Transaction | None:
    """A :class:`Transaction` for an Icechunk target, None for any other store.

    Raises
    ------
    IcechunkTargetError
        ``branch``/``message`` with a target that is not a ``Repository``, or a branch that
        does not exist.
    ReadOnlyStoreError
        A read-only session.
    """
    kind = _kind(store)
    default = f"xarray_zarrwrite: {operation}"
    if kind == "repository":
        branch = "main" if branch is None else branch
        if not isinstance(branch, str) or not branch:
            raise IcechunkTargetError(f"branch must be a non-empty string, got {branch!r}")
        if message is not None and not isinstance(message, str):
            raise IcechunkTargetError(f"message must be a string, got {message!r}")
        if branch not in store.list_branches():
            raise IcechunkTargetError(
                f"the repository has no branch {branch!r} (it has "
                f"{sorted(store.list_branches())}); create it with "
                "repo.create_branch(name, snapshot_id) or pass an existing branch"
            )
        session = store.writable_session(branch)
        return Transaction(session, branch, message or default, owned=True, repo=store)
    if branch is not None or message is not None:
        what = "an Icechunk Session (the caller commits it)" if kind else type(store).__name__
        raise IcechunkTargetError(
            f"branch= and message= are for an Icechunk Repository target, got {what}; pass "
            "the Repository to have the write committed for you, or commit the session yourself"
        )
    if kind is None:
        return None
    session = store.session if kind == "store" else store
    if session.read_only:
        raise ReadOnlyStoreError(
            "the Icechunk session is read-only; open one with repo.writable_session(branch)"
        )
    given = store if kind == "store" else None
    return Transaction(session, session.branch, default, owned=False, given=given)


def transactional(operation: str) -> Callable[[F], F]:
    """Decorate ``fn(data, store, ..., branch=None, message=None, ...)``: an Icechunk target
    becomes its session's store; an owned session is committed when ``fn`` returns and
    discarded when it raises."""

    def deco(fn: F) -> F:
        @functools.wraps(fn)
        def wrapper(data: Any, *args: Any, **kwargs: Any) -> Any:
            if args:
                store, args = args[0], args[1:]
            else:
                store = kwargs.pop("store")
            branch = kwargs.pop("branch", None)
            message = kwargs.pop("message", None)
            tx = open_transaction(store, branch, message, operation)
            if tx is None:
                return fn(data, store, *args, **kwargs)
            if operation == "convert":
                _check_convert_executor(kwargs)
            if tx.owned and kwargs.get("blocking", True) is False:
                raise IcechunkTargetError(
                    "blocking=False cannot commit a Repository write when it ends; use "
                    "StreamWriter(repo, branch=..., commit_every=...) or pass a session"
                )
            try:
                if operation == "to_template":
                    result = _template_staged(fn, data, tx, *args, **kwargs)
                else:
                    result = fn(data, tx.store, *args, **kwargs)
            except BaseException:
                tx.abort()
                raise
            if getattr(result, "status", None) == "failed":  # a convert with failed tasks
                tx.abort()
            else:
                tx.commit()
            return result

        return cast("F", wrapper)

    return deco


def _template_staged(
    fn: Callable[..., R], data: Any, tx: Transaction, *args: Any, **kwargs: Any
) -> R:
    """``to_template`` into a transaction: built and published in memory, then copied into the
    session (the commit, not a publish marker, makes it appear at once; Icechunk only takes
    zarr keys)."""
    from zarr.storage import MemoryStore

    from ._compat import default_buffer_prototype, sync
    from ._template import open_template
    from .errors import StoreExistsError

    staged = MemoryStore()
    fn(data, staged, *args, **kwargs)
    mode = kwargs.get("mode", "w-")
    target = tx.store

    async def copy() -> None:
        if not await target.is_empty(""):
            if mode != "w":
                raise StoreExistsError(
                    f"the Icechunk session on branch {tx.branch!r} already holds data; nothing "
                    "was changed. Pass mode='w' to replace it, or use another branch"
                )
            await target.delete_dir("")
        proto = default_buffer_prototype()
        async for key in staged.list():
            buf = await staged.get(key, prototype=proto)
            assert buf is not None
            await target.set(key, buf)

    sync(copy())
    result: R = open_template(target)  # type: ignore[assignment]
    return result


# -- dask: one fork per graph, every block's changes merged back --------------------------------
def write_dask_forked(
    store: Any,
    sources: Sequence[Any],
    targets: Sequence[Any],
    regions: Sequence[tuple[slice, ...]],
    result: R,
    compute: bool,
) -> R:
    """``da.store(sources, targets, regions)`` into an Icechunk session: the blocks write
    through a fork of it (picklable to any worker), each returns its fork, and the forks are
    merged back into the session in a tree reduction, all before this returns."""
    import copy

    import dask.array as da

    if not compute:
        raise IcechunkTargetError(
            "compute=False cannot be used with an Icechunk target: the workers' changes must "
            "be merged into the session when the write is computed. Call with compute=True "
            "(the default), e.g. inside dask.delayed if you need laziness"
        )
    session = store.session
    fork = session.fork()
    parts = []
    for src, target, region in zip(sources, targets, regions, strict=True):
        forked = copy.copy(target)
        forked.store = fork.store
        parts.append(
            da.map_blocks(  # type: ignore[no-untyped-call]  # dask: unannotated
                _write_block,
                src,
                forked,
                region,
                dtype=object,
                chunks=tuple((1,) * len(c) for c in src.chunks),
                meta=np.empty((0,) * src.ndim, dtype=object),
            )
        )
    blocks = [b for p in parts for b in p.to_delayed().ravel()]
    forks = _tree_merge(blocks).compute()
    if forks is not None:
        session.merge(forks)
    return result


def _write_block(block: Any, target: Any, region: tuple[slice, ...], block_info: Any = None) -> Any:
    loc = block_info[0]["array-location"]
    sel = tuple(slice(r.start + a, r.start + b) for (a, b), r in zip(loc, region, strict=True))
    target[sel] = block
    out = np.empty((1,) * block.ndim, dtype=object)
    out.flat[0] = target.store.session
    return out


def _tree_merge(blocks: list[Any]) -> Any:
    from dask.delayed import delayed

    level = [delayed(_first, pure=True)(b) for b in blocks]
    if not level:
        return delayed(_none)()
    while len(level) > 1:
        level = [
            delayed(_merge, pure=True)(*level[i : i + _MERGE_FANIN])
            for i in range(0, len(level), _MERGE_FANIN)
        ]
    return level[0]


def _first(arr: Any) -> Any:
    return arr.flat[0]


def _none() -> None:
    return None


def _merge(*forks: Any) -> Any:
    """One fork holding the changes of all ``forks`` (duplicates, e.g. one object shared by
    tasks of a threaded scheduler, are merged once)."""
    unique = list({id(f): f for f in forks}.values())
    head = unique[0]
    for other in unique[1:]:
        head.merge(other)
    return head


def readable_store(store: Any, branch: str | None) -> Any:
    """What to read ``store`` through: the tip of ``branch`` of a Repository (default
    ``"main"``), a Session's store; anything else unchanged."""
    kind = _kind(store)
    if kind is None or kind == "store":
        if branch is not None:
            raise IcechunkTargetError(
                f"branch= is for an Icechunk Repository, got {type(store).__name__}"
            )
        return store
    if kind == "session":
        if branch is not None:
            raise IcechunkTargetError(
                "branch= is for an Icechunk Repository; a Session reads its own snapshot"
            )
        return store.store
    branch = "main" if branch is None else branch
    if branch not in store.list_branches():
        raise IcechunkTargetError(
            f"the repository has no branch {branch!r} (it has {sorted(store.list_branches())})"
        )
    # a session that is never committed: the template reader opens groups for writing
    return store.writable_session(branch).store


# -- convert: tasks on other processes write through forks ---------------------------------
def _outcomes_carry_changes() -> bool:
    """True when convert's task outcomes bring a worker's fork back (``TaskOutcome.changes``)."""
    from .convert._task import TaskOutcome

    return "changes" in getattr(TaskOutcome, "__dataclass_fields__", {})


def _remote(runner: Any) -> bool:
    """True when ``runner`` runs convert's tasks on other processes."""
    from .convert._executors import _DaskRunner, _ProcessRunner

    return isinstance(runner, _DaskRunner | _ProcessRunner)


def _check_convert_executor(kwargs: dict[str, Any]) -> None:
    """Refuse, before any worker starts, tasks on other processes whose outcomes cannot bring
    a fork back (:func:`task_store` checks the runner itself too)."""
    remote = (
        kwargs.get("client") is not None
        or kwargs.get("executor") == "processes"
        or (kwargs.get("executor") is None and kwargs.get("start_method") is not None)
    )
    if remote and not _outcomes_carry_changes():
        raise _no_remote_tasks()


def _no_remote_tasks() -> IcechunkTargetError:
    return IcechunkTargetError(
        "convert into an Icechunk target runs its tasks in this process for now: pass "
        "executor='threads' (the default) or 'serial', without client= or start_method="
    )


def fork_changes(store: Any) -> Any:
    """What a convert task sends back after writing to ``store``: the Icechunk fork it wrote
    through (merged by the client with :func:`merge_task_changes`), else None."""
    session = store.session if _kind(store) == "store" else None
    return session if type(session).__name__ == "ForkSession" else None


def task_store(store: Any, runner: Any) -> Any:
    """The store convert's tasks write to: ``store`` for tasks in this process (threads write
    straight into the session), a fork of an Icechunk session for tasks on other processes
    (picklable; merged back by :func:`merge_task_changes`).

    Raises
    ------
    IcechunkTargetError
        Tasks on other processes whose outcomes cannot bring a fork back.
    """
    if _kind(store) is None or not _remote(runner):
        return store
    if not _outcomes_carry_changes():
        raise _no_remote_tasks()
    return store.session.fork().store


def merge_task_changes(store: Any, outcomes: Any) -> None:
    """Merge the forks successful convert tasks brought back into ``store``'s session."""
    if _kind(store) is None:
        return
    forks = [f for o in outcomes.values() if o.ok and (f := getattr(o, "changes", None))]
    if forks:
        store.session.merge(*forks)


# -- StreamWriter: commit every N steps ---------------------------------------------------
def _session_store_class() -> type[Any]:
    from zarr.storage import WrapperStore

    class _SessionStore(WrapperStore[Any]):
        """The store of the current session of a :class:`Transaction`: the same object while
        ``commit_every`` commits and replaces the session under it."""

        def __init__(self, tx: Transaction) -> None:  # no super().__init__: _store is derived
            self._tx = tx

        @property
        def _store(self) -> Any:
            return self._tx.store

        @property
        def supports_consolidated_metadata(self) -> bool:
            return bool(self._tx.store.supports_consolidated_metadata)

        def with_read_only(self, read_only: bool = False) -> Any:
            return self._tx.store.with_read_only(read_only)

        def __eq__(self, other: object) -> bool:
            return other is self

        def __hash__(self) -> int:
            return id(self)

        def __str__(self) -> str:
            return f"icechunk://{self._tx.branch}@{id(self._tx):x}"

        def __repr__(self) -> str:
            return f"<icechunk session store of branch {self._tx.branch!r}>"

    return _SessionStore


class StreamCommits:
    """Commits of a :class:`~xarray_zarrwrite.StreamWriter` into a Repository branch: every
    ``every`` steps (when the next step arrives, after the earlier ones are flushed) and at
    close; a writer closed by an exception commits nothing more."""

    def __init__(self, tx: Transaction, every: int | None) -> None:
        self.tx = tx
        self.every = every
        self.since = 0  # steps written since the last commit
        self.snapshots: list[str] = []
        self.abandoned = False
        self.store = _session_store_class()(tx)

    def before_write(self, writer: Any) -> None:
        if self.every is not None and self.since >= self.every:
            writer.flush()
            self._commit(
                f"{self.tx.message} (steps {len(self.snapshots) * self.every + 1}-"
                f"{(len(self.snapshots) + 1) * self.every})"
            )
        self.since += 1

    def _commit(self, message: str) -> None:
        snapshot = self.tx.commit(message)
        if snapshot is not None:
            self.snapshots.append(snapshot)
        self.tx.renew()
        self.since = 0

    def at_close(self) -> None:
        """After the final flush: commit what is left, unless :meth:`abandon` was called."""
        if self.abandoned:
            self.tx.abort()
            return
        snapshot = self.tx.commit()
        if snapshot is not None:
            self.snapshots.append(snapshot)

    def abandon(self) -> None:
        """The writer's body failed: what was not committed yet never will be."""
        self.abandoned = True


def stream_target(
    store: Any, branch: str | None, message: str | None, commit_every: int | None
) -> tuple[Any, StreamCommits | None]:
    """``(store to write, commits)`` for a StreamWriter: a Repository gives a store that
    follows its branch's current session and the :class:`StreamCommits` that commit it.

    Raises
    ------
    IcechunkTargetError
        ``commit_every`` that is not a positive integer, or given without a Repository.
    """
    if commit_every is not None and (
        isinstance(commit_every, bool) or not isinstance(commit_every, int) or commit_every < 1
    ):
        raise IcechunkTargetError(
            f"commit_every must be a positive integer (steps per commit), got {commit_every!r}"
        )
    tx = open_transaction(store, branch, message, "StreamWriter")
    if tx is None or not tx.owned:
        if commit_every is not None:
            raise IcechunkTargetError(
                "commit_every= needs an Icechunk Repository as the store (we commit to its "
                f"branch); got {type(store).__name__}. With a Session, commit it yourself"
            )
        return (store if tx is None else tx.store), None
    commits = StreamCommits(tx, commit_every)
    return commits.store, commits
