"""Snapshots: copy the caller's arrays into memory the pipeline owns.

After a snapshot the caller may overwrite or free its arrays (GPU memory included). NumPy and
CuPy differ only here, behind one small interface: :func:`stage` returns a :class:`Staged`
whose :meth:`Staged.wait` blocks until the copy is complete and returns a host NumPy array.

- NumPy: a copy into a buffer from a reusable host pool (no allocation per step once warm),
  made on a background copy thread (NumPy releases the GIL while copying), so the caller's
  thread never pays for it; the caller must not modify its arrays before ``copied``.
- Any other framework (PyTorch, JAX, anything with ``__dlpack__`` or
  ``__cuda_array_interface__``): :func:`as_array` turns CPU data into a zero-copy NumPy view
  (DLPack) and device data into a zero-copy CuPy view, which then takes the CuPy path.
- CuPy: the device-to-host copy is issued on a side CUDA stream, ordered after the producer's
  current stream by an event, into pinned host memory from a reusable pool. The caller's thread
  only records the event and enqueues the copy: no synchronous pageable copy, no stall.
"""

from __future__ import annotations

import concurrent.futures as cf
import threading
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from ._runtime import runtime

__all__ = ["HostPool", "Staged", "as_array", "is_device_array", "stage", "to_host"]


class HostPool:
    """Reusable host buffers, keyed by size in bytes (pinned when CuPy asks for them).

    A buffer is allocated only when no free one of its size is left, so the pool grows to the
    snapshots held at once (bounded by the writers' in-flight budgets) and then stops: in
    steady state every snapshot reuses memory already touched, with no page faults. The first
    touch of a new buffer (in its first copy) is a one-time cost per process; ``allocated``
    counts the buffers allocated so far.
    """

    def __init__(self, *, pinned: bool = False) -> None:
        self._pinned = pinned
        self._free: defaultdict[int, list[Any]] = defaultdict(list)
        self._lock = threading.Lock()
        self.allocated = 0  # buffers allocated (not reused) so far

    def take(self, shape: tuple[int, ...], dtype: np.dtype[Any]) -> np.ndarray:
        nbytes = int(np.prod(shape)) * dtype.itemsize
        with self._lock:
            free = self._free[nbytes]
            mem = free.pop() if free else None
        if mem is None:
            mem = self._allocate(nbytes)
            with self._lock:
                self.allocated += 1
        return mem[:nbytes].view(dtype).reshape(shape)

    def give(self, arr: np.ndarray) -> None:
        """Return a buffer from :meth:`take` once nothing reads it any more."""
        base = arr
        while base.base is not None and isinstance(base.base, np.ndarray):
            base = base.base
        with self._lock:
            self._free[arr.nbytes].append(base)

    def _allocate(self, nbytes: int) -> np.ndarray:
        if self._pinned:
            import cupy

            mem = cupy.cuda.alloc_pinned_memory(max(nbytes, 1))
            return np.frombuffer(mem, dtype=np.uint8, count=max(nbytes, 1))
        return np.empty(max(nbytes, 1), dtype=np.uint8)  # uninitialised: no zero-fill pass


@dataclass
class Staged:
    """A copy in progress (or done) of one array into host memory owned by the pipeline."""

    host: np.ndarray
    _event: Any = None  # cupy Event on the copy stream, a Future of the host copy, or None
    _source: Any = None  # keeps the source alive until the copy is complete

    def wait(self) -> np.ndarray:
        """Block until the copy is complete; return the host array."""
        if isinstance(self._event, cf.Future):
            self._event.result()
        elif self._event is not None:
            self._event.synchronize()
        self._event = None
        self._source = None
        return self.host


def is_device_array(data: Any) -> bool:
    """True for GPU arrays: CuPy's, or any exporting ``__cuda_array_interface__`` (Numba,
    PyTorch CUDA tensors...). Never imports CuPy; NumPy, dask and host arrays are False.

    Device arrays must never reach ``np.asarray`` (an implicit, synchronous, pageable copy that
    CuPy refuses): every path sends them through :func:`stage`'s device snapshot instead.
    """
    if type(data).__module__.split(".", 1)[0] == "cupy":
        return True
    try:
        return hasattr(data, "__cuda_array_interface__")
    except Exception:  # noqa: BLE001  (a property that raises: a CPU tensor, for example)
        return False


#: DLPack device types (``__dlpack_device__()[0]``): host memory, and CUDA/ROCm device memory
_DL_HOST = (1, 3)  # kDLCPU, kDLCUDAHost (pinned)
_DL_DEVICE = (2, 10, 13)  # kDLCUDA, kDLROCM, kDLCUDAManaged


def is_native(data: Any) -> bool:
    """NumPy, CuPy, dask or a NumPy scalar: data the pipeline takes as it is."""
    if isinstance(data, np.ndarray | np.generic):
        return True
    return type(data).__module__.split(".", 1)[0] in ("cupy", "dask", "numpy")


def as_array(data: Any, name: str = "data") -> Any:
    """``data`` from any array framework as NumPy (host memory) or CuPy (device memory).

    PyTorch tensors (CPU or CUDA; detached first), JAX arrays and anything exporting
    ``__dlpack__`` or ``__cuda_array_interface__`` are viewed without a copy: host data as a
    NumPy array (``np.from_dlpack``), device data as a CuPy array (``cupy.from_dlpack``, which
    orders the view after the producer's stream). NumPy, CuPy and dask data are returned as
    they are; anything else goes through ``np.asarray``.

    Raises
    ------
    DtypeCastError
        The framework cannot export the array (a dtype with no NumPy equivalent, such as
        ``bfloat16``): convert it first, e.g. ``tensor.float()``.
    """
    if is_native(data):
        return data
    detach = getattr(data, "detach", None)  # torch: a tensor that requires grad won't export
    if callable(detach) and type(data).__module__.split(".", 1)[0] == "torch":
        data = detach()
    try:
        device = data.__dlpack_device__()[0] if hasattr(data, "__dlpack_device__") else None
        if device in _DL_HOST:
            return np.from_dlpack(data)
        if device in _DL_DEVICE or is_device_array(data):
            import cupy

            return cupy.from_dlpack(data) if device is not None else cupy.asarray(data)
    except (BufferError, TypeError, RuntimeError, ValueError) as e:
        from .errors import DtypeCastError

        dtype = getattr(data, "dtype", "?")
        raise DtypeCastError(
            f"{name}: cannot take a {type(data).__module__}.{type(data).__name__} of dtype "
            f"{dtype} without a copy ({type(e).__name__}: {e}); convert it to a dtype NumPy "
            "has (e.g. float32) first"
        ) from e
    return np.asarray(data)


def stage(data: Any) -> tuple[Staged, HostPool]:
    """Start copying ``data`` (NumPy or a device array) into pipeline-owned host memory."""
    if is_device_array(data):
        return _stage_device(data)
    src = np.asarray(data)
    pool = runtime.slot("staging.host_pool", HostPool)
    host = pool.take(src.shape, src.dtype)
    if src.nbytes < _INLINE_BYTES:  # not worth a thread hop
        np.copyto(host, src)
        return Staged(host), pool
    return Staged(host, _copier().submit(np.copyto, host, src), src), pool


def to_host(data: Any) -> np.ndarray:
    """``data`` as a host NumPy array: NumPy data is borrowed (no copy), device data is copied
    through the device snapshot (into a new array: the caller keeps it)."""
    if not is_device_array(data):
        return np.asarray(data)
    staged, pool = stage(data)
    try:
        return staged.wait().copy()
    finally:
        pool.give(staged.host)


_INLINE_BYTES = 1 << 20


def _copier() -> cf.ThreadPoolExecutor:
    return runtime.slot(
        "staging.copy_pool", lambda: cf.ThreadPoolExecutor(2, thread_name_prefix="xzw-copy")
    )


def _stage_device(data: Any) -> tuple[Staged, HostPool]:
    import cupy

    pool = runtime.slot("staging.pinned_pool", lambda: HostPool(pinned=True))
    stream = runtime.slot("staging.copy_stream", lambda: cupy.cuda.Stream(non_blocking=True))
    if not isinstance(data, cupy.ndarray):  # __cuda_array_interface__: a zero-copy view
        data = cupy.asarray(data)
    produced = cupy.cuda.Event(disable_timing=True)
    produced.record(cupy.cuda.get_current_stream())
    stream.wait_event(produced)  # the copy starts only after the producer's work on `data`
    host = pool.take(data.shape, np.dtype(data.dtype))
    with stream:
        contiguous = cupy.ascontiguousarray(data)
        contiguous.get(stream=stream, out=host, blocking=False)
    done = cupy.cuda.Event(disable_timing=True)
    done.record(stream)
    return Staged(host, done, (data, contiguous)), pool
