"""Sphinx configuration for xarray_zarrwrite.

The build is nitpicky with nothing suppressed: every cross-reference must resolve. Builds are
offline (no intersphinx inventories can be fetched), so references to third-party objects are
listed, each by name, in ``nitpick_ignore``; references to our own objects never are.
"""

from __future__ import annotations

import sys
from pathlib import Path

import sphinx_autosummary_accessors

import xarray_zarrwrite

sys.path.insert(0, str(Path(__file__).parent / "_ext"))

project = "xarray_zarrwrite"
author = "xarray_zarrwrite developers"
release = version = xarray_zarrwrite.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx_autosummary_accessors",
    "configdoc",  # docs/_ext/configdoc.py: the configuration table, from config.SCHEMA
    "xrefs",  # docs/_ext/xrefs.py: references by the names the code imports objects under
    "accessors",  # docs/_ext/accessors.py: accessor pages show the delegate's parameters
    "interfaces",  # docs/_ext/interfaces.py: every public method has an entry
]
templates_path = ["_templates", sphinx_autosummary_accessors.templates_path]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
myst_enable_extensions = ["colon_fence", "deflist"]
myst_heading_anchors = 3
autosummary_generate = True
autodoc_typehints = "none"
autodoc_member_order = "groupwise"
napoleon_numpy_docstring = True
napoleon_google_docstring = False
napoleon_use_rtype = False
napoleon_preprocess_types = True  # "optional", "default x" and {"a", "b"} in types
napoleon_attr_annotations = False  # attributes are described in words, not annotations
autodoc_inherit_docstrings = False  # zarr's Store docstrings are zarr's, not ours
nitpicky = True
html_theme = "pydata_sphinx_theme"
html_title = "xarray_zarrwrite"
html_static_path = ["_static"]
html_css_files = ["custom.css"]
# The table of contents is flat (every page at the top level), so the theme's left sidebar
# ("Section Navigation") would always be empty: drop it, and give its width to the article.
html_sidebars: dict[str, list[str]] = {"**": []}
# Four page links in the header, the rest under "More": one header row at 1280 px.
html_theme_options = {"header_links_before_dropdown": 4}

# Third-party objects our docstrings name. Offline builds have no intersphinx inventories, so
# these cannot resolve; each is listed here by name (never one of ours, never a pattern).
_THIRD_PARTY = {
    "py:class": [
        "collections.abc.Mapping",  # Python standard library
        "collections.abc.Sequence",
        "collections.abc.Iterable",
        "concurrent.futures.Future",
        "os.PathLike",
        "pathlib.Path",
        "numpy.ndarray",  # NumPy
        "numpy.dtype",
        "pandas.Index",  # pandas
        "pandas.DatetimeIndex",
        "xarray.Dataset",  # xarray
        "xarray.DataArray",
        "xarray.DataTree",
        "dask.delayed.Delayed",  # dask
        "distributed.Client",
        "zarr.abc.store.Store",  # zarr
        "zarr.storage.WrapperStore",
        "zarr.abc.codec.ArrayBytesCodec",
        "zarr.abc.codec.BytesBytesCodec",
        "zarr.abc.codec.ArrayArrayCodec",
        "zarr.core.buffer.Buffer",
        "zarr.storage.StorePath",
        "numcodecs.abc.Codec",  # numcodecs
        "matplotlib.axes.Axes",  # matplotlib
        "donfig.Config",  # donfig
    ],
    "py:meth": [
        "xarray.Dataset.to_zarr",  # xarray
        "xarray.open_zarr",
    ],
    "py:func": [
        "xarray.open_zarr",  # xarray
        "xarray.open_dataset",
        "xarray.open_mfdataset",
    ],
}
nitpick_ignore = [(role, name) for role, names in _THIRD_PARTY.items() for name in names]
