"""Test and documentation helpers: sample data (:func:`sample_files`), fault-injecting stores,
fixtures."""

from __future__ import annotations

from .samples import sample_files as sample_files

__all__ = ["sample_files"]
