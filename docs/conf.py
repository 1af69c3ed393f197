"""Sphinx configuration for xarray_zarrwrite."""

from __future__ import annotations

import sphinx_autosummary_accessors

import xarray_zarrwrite

project = "xarray_zarrwrite"
author = "xarray_zarrwrite developers"
release = version = xarray_zarrwrite.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx_autosummary_accessors",
]
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
autosummary_generate = True
autodoc_typehints = "none"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
nitpicky = False
suppress_warnings = ["myst.xref_missing"]
html_theme = "pydata_sphinx_theme"
html_title = "xarray_zarrwrite"
html_static_path: list[str] = []
intersphinx_mapping = {}  # offline builds: no inventories are fetched
