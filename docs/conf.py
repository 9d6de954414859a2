"""Sphinx configuration of the skafm documentation."""

import os
import sys
import warnings

import skafm

project = "skafm"
author = "skafm developers"
copyright = "2026, skafm developers"
version = release = skafm.__version__

extensions = [
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.intersphinx",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
    "numpydoc",
    "sphinx_gallery.gen_gallery",
]

exclude_patterns = ["_build", "auto_examples/*.ipynb", "auto_examples/*.py"]
default_role = "literal"

autosummary_generate = True
autodoc_default_options = {"members": True, "inherited-members": True}
numpydoc_show_class_members = False
numpydoc_xref_param_type = False
# every parameter documented, and only those (tests/test_docstrings.py too)
numpydoc_validation_checks = {"PR01", "PR02"}
numpydoc_validation_exclude = {r"\.__init__$", r"\.set_.*_request$"}

# The build runs offline: intersphinx inventories are not fetched, so
# references to scikit-learn, numpy and scipy objects render as plain text.
intersphinx_mapping = {}
nitpicky = False

html_theme = "pydata_sphinx_theme"
html_title = f"skafm {release}"
html_theme_options = {
    "navigation_with_keys": False,
    "show_toc_level": 2,
}
html_static_path = []

sphinx_gallery_conf = {
    "examples_dirs": os.path.join("..", "examples"),
    "gallery_dirs": "auto_examples",
    "filename_pattern": r"/plot_",
    "download_all_examples": False,
    "remove_config_comments": True,
    "reference_url": {"skafm": None},
    "within_subsection_order": "FileNameSortKey",
    "abort_on_example_error": True,
    "plot_gallery": "True",
    # the time an example took on the machine that built the docs says
    # nothing about skafm's speed on the reader's (benchmarks/README.md does)
    "min_reported_time": float("inf"),
    "write_computation_times": False,
}

# examples run short fits on purpose
warnings.filterwarnings("ignore", category=UserWarning, message=".*Maximum iterations")
warnings.filterwarnings(
    "ignore", category=UserWarning, message="Matplotlib is currently using agg"
)
sys.path.insert(0, os.path.abspath(".."))
