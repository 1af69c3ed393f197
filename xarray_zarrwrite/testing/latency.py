"""zarr's ``LatencyStore`` (``zarr.testing.store``), usable on every zarr we support.

zarr 3.1.0's ``LatencyStore`` has no ``with_read_only``, which ``xr.open_zarr`` and
``zarr.open_group(mode="r")`` need; later releases have it. This subclass adds it (and keeps
the latency configuration on derived stores), nothing else.
"""

from __future__ import annotations

from typing import Any, Self

from zarr.abc.store import Store
from zarr.testing.store import LatencyStore as _ZarrLatencyStore

__all__ = ["LatencyStore"]


class LatencyStore(_ZarrLatencyStore):
    """A store wrapper that sleeps before every get and set (see zarr's ``LatencyStore``)."""

    def _latencies(self) -> dict[str, Any]:
        # zarr >= 3.2 keeps the raw configuration (a float or a distribution) privately
        return {
            "get_latency": getattr(self, "_get_latency", self.get_latency),
            "set_latency": getattr(self, "_set_latency", self.set_latency),
        }

    def _with_store(self, store: Store) -> Self:
        return type(self)(store, **self._latencies())

    def with_read_only(self, read_only: bool = False) -> Self:
        return self._with_store(self._store.with_read_only(read_only))
