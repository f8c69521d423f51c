"""Sphinx configuration: the manual, and the API reference generated from the docstrings.

Built offline (no intersphinx) with warnings as errors: ``tox -e docs``, or
``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "libcontainerd"
author = "the libcontainerd authors"
copyright = "the libcontainerd authors"

import libcontainerd  # noqa: E402 - after the path is set

release = libcontainerd.__version__
version = ".".join(release.split(".")[:2])

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.viewcode",
]

# Google-style docstrings; ``Attributes:`` as :ivar: fields, so that an attribute that is
# also a documented property is not described twice.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True

autodoc_member_order = "bysource"
autodoc_typehints = "signature"

exclude_patterns = ["_build"]
templates_path: list[str] = []
html_theme = "alabaster"
html_static_path: list[str] = []
html_theme_options = {"description": "A synchronous containerd client for Python", "fixed_sidebar": True}
