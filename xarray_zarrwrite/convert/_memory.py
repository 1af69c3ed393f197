"""Memory per worker: the limit, what a worker holds before its tasks, the tasks' budget."""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Any, Final

from ..errors import ConvertOptionError

logger = logging.getLogger(__name__)

_MIB: Final = 1 << 20
#: Memory of a worker process before it runs anything (interpreter, numpy, xarray, zarr).
WORKER_BASELINE: Final = 256 * _MIB
#: Memory a task holds besides its data: open files' HDF5 chunk caches, the store's I/O
#: buffers, allocator slack (measured: about 45 MiB over a run's pre-task peak).
IO_OVERHEAD: Final = 64 * _MIB


@dataclass(frozen=True)
class _Capacity:
    workers: int
    slots: int  # concurrent tasks per worker process
    memory_limit: int | None  # per worker
    baseline: int = WORKER_BASELINE  # what a worker holds before its tasks


def _this_process() -> int:
    """This process's resident memory plus the tasks' fixed overhead: the baseline of the
    in-process executors (the worker is this process, measured after scan and template)."""
    import psutil

    return int(psutil.Process().memory_info().rss) + IO_OVERHEAD


def task_budget(capacity: _Capacity, peak_factor: float, max_task_bytes: int) -> int:
    """Peak memory one task may use: the worker's limit less its baseline, per slot."""
    if capacity.memory_limit is None:
        return int(peak_factor * max_task_bytes)
    room = capacity.memory_limit - capacity.baseline
    if room <= 0:
        room = capacity.memory_limit // 8  # refused below: the smallest tasks, one at a time
    return int(room // max(1, capacity.slots))


def fit_slots(capacity: _Capacity, estimate: int) -> int:
    """Tasks one worker runs at once so that their estimated peaks fit its memory limit;
    at least one, with a warning that says by how much that one may exceed the limit."""
    slots = capacity.slots
    limit = capacity.memory_limit
    if not limit or not estimate:
        return slots
    room = limit - capacity.baseline
    fit = room // estimate
    if fit < 1:
        logger.warning(
            "memory_limit is %.0f MiB per worker, of which the worker itself holds about "
            "%.0f MiB (interpreter, libraries, open files), leaving %.0f MiB for tasks; the "
            "smallest task these chunks allow needs about %.0f MiB, so tasks run one at a time "
            "per worker and its peak may exceed the limit by about %.0f MiB. Choose smaller "
            "chunks or a larger memory_limit",
            limit / _MIB,
            capacity.baseline / _MIB,
            max(room, 0) / _MIB,
            estimate / _MIB,
            (estimate - max(room, 0)) / _MIB,
        )
    return int(max(1, min(slots, fit)))


def _total_memory() -> int:
    import psutil

    return int(psutil.virtual_memory().total)


def parse_memory_limit(value: Any) -> int | None:
    """``None``/``"auto"``: decide later; a number of bytes; or a string such as ``"2GB"``."""
    if value is None or (isinstance(value, str) and value.lower() == "auto"):
        return None
    if isinstance(value, str):
        from dask.utils import parse_bytes

        try:
            value = parse_bytes(value)
        except ValueError as e:
            raise ConvertOptionError(
                f"memory_limit {value!r} is not a size such as '2GB': {e}"
            ) from e
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ConvertOptionError(
            f"memory_limit must be a positive size such as '2GB', got {value!r}"
        )
    return int(value)
