"""Sphinx configuration of the xai_feedback docs."""

from __future__ import annotations

import xai_feedback

project = "xai_feedback"
author = "xai_feedback developers"
release = xai_feedback.__version__
extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "sphinx.ext.intersphinx",
]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_custom_sections = [("Shape", "params_style")]
autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_typehints_format = "short"
intersphinx_mapping: dict[str, tuple[str, None]] = {}
nitpicky = False
html_theme = "furo"
html_title = "xai_feedback"
html_static_path: list[str] = []
suppress_warnings = ["ref.python"]
