"""Sphinx configuration of the cupy-abn documentation.

Build (from the repository root; ``pip install -e ".[docs,chainer]"`` first)::

    python -m sphinx -W --keep-going -n -b html docs build/docs/html -d build/docs/doctrees
    python -m sphinx -W --keep-going -n -b doctest docs build/docs/doctest -d build/docs/doctrees

The build needs no network: intersphinx reads the hand-made inventories in
``docs/_intersphinx/`` (``make_inventories.py``), and autosummary writes its stubs into
``docs/generated/`` (ignored by git) at every build.
"""
from __future__ import annotations

import sys
from pathlib import Path

DOCS = Path(__file__).resolve().parent
ROOT = DOCS.parent
sys.path.insert(0, str(ROOT))   # the checkout's cupy_abn, also without an install

import cupy_abn  # noqa: E402

project = "cupy-abn"
author = "the cupy-abn authors"
copyright = "the cupy-abn authors"   # noqa: A001 - Sphinx's name
release = version = cupy_abn.__version__

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.autosummary",
    "sphinx.ext.napoleon",
    "sphinx.ext.intersphinx",
    "sphinx.ext.doctest",
    "sphinx.ext.mathjax",
]

source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build", "_intersphinx", "Thumbs.db", ".DS_Store"]
templates_path = ["_templates"]
html_theme = "alabaster"
html_static_path: list = []
html_theme_options = {"description": "In-Place Activated BatchNorm for CuPy, NumPy and Chainer",
                      "fixed_sidebar": True}

# -- MyST: Markdown pages with $...$ / $$...$$ math and \begin{...} environments ------------
myst_enable_extensions = ["dollarmath", "amsmath"]
myst_heading_anchors = 3        # [text](math.md#backward) links to a section

# -- API reference -----------------------------------------------------------------------------
autosummary_generate = True                 # stubs into docs/generated/ (git-ignored)
autodoc_typehints = "none"                  # the NumPy-style docstrings give the types
autodoc_inherit_docstrings = False          # no Chainer docstrings on our overrides
autodoc_member_order = "bysource"
napoleon_google_docstring = False
napoleon_numpy_docstring = True
napoleon_use_param = False                  # types as text: "array, shape (N, C, ...)" is no class
napoleon_use_rtype = False
# "Attributes" like "Parameters": types as text, not as cross-references
napoleon_custom_sections = [("Attributes", "params_style")]

# -- Cross-references: nitpicky, against local inventories -----------------------------------
nitpicky = True
nitpick_ignore = [
    # Raised by Chainer's type check; Chainer's reference documents the module's other
    # classes but not this one, so there is no page to link to.
    ("py:exc", "chainer.utils.type_check.InvalidType"),
]
_INV = DOCS / "_intersphinx"
intersphinx_mapping = {
    "python": ("https://docs.python.org/3/", str(_INV / "python.inv")),
    "numpy": ("https://numpy.org/doc/stable/", str(_INV / "numpy.inv")),
    "cupy": ("https://docs.cupy.dev/en/stable/", str(_INV / "cupy.inv")),
    "chainer": ("https://docs.chainer.org/en/v7.8.1/", str(_INV / "chainer.inv")),
}

# -- Doctest: the quickstart's examples and the docstrings' examples --------------------------
# Without a CUDA device, NumPy stands in for CuPy (the array API takes either), as the plain
# loop's comment says.  Every example must stay in place: an InPlaceFallbackWarning (an
# in-place layer that had to compute on a copy) fails the group's cleanup.
doctest_global_setup = """
import sys as _sys
import warnings as _warnings
import numpy as _numpy

def _cuda_devices():
    try:
        import cupy
        return cupy.cuda.runtime.getDeviceCount()
    except Exception:
        return 0

_gpus = _cuda_devices()                 # imports the real CuPy where it is installed
_saved_cupy = _sys.modules.get("cupy")
if not _gpus:
    _sys.modules["cupy"] = _numpy
_caught = _warnings.catch_warnings(record=True)
_warned = _caught.__enter__()
_warnings.simplefilter("always")
"""
doctest_global_cleanup = """
_caught.__exit__(None, None, None)
if _saved_cupy is None:
    _sys.modules.pop("cupy", None)
else:
    _sys.modules["cupy"] = _saved_cupy
_fallbacks = [str(w.message) for w in _warned
              if w.category.__name__ == "InPlaceFallbackWarning"]
assert not _fallbacks, _fallbacks
"""
doctest_test_doctest_blocks = "default"     # ">>>" examples in docstrings run too


def _public_name(cls) -> str:
    """``chainer.Link`` for ``chainer.link.Link``: the shortest import path of a class."""
    parts = cls.__module__.split(".")
    for i in range(1, len(parts) + 1):
        module = sys.modules.get(".".join(parts[:i]))
        if getattr(module, cls.__qualname__, None) is cls:
            return ".".join(parts[:i] + [cls.__qualname__])
    return f"{cls.__module__}.{cls.__qualname__}"


def _public_bases(app, name, obj, options, bases):
    """Bases as documented: a private base is replaced by its public ancestor, and each is
    named by its public import path (``chainer.Link``, ``chainer.FunctionNode``)."""
    out = []
    for base in bases:
        while base.__name__.startswith("_") and base.__bases__:
            base = base.__bases__[0]
        out.append(base if base.__module__ == "builtins" else f":py:class:`{_public_name(base)}`")
    bases[:] = out


def _data_doc_comment(app, what, name, obj, options, lines):
    """A constant re-exported by a package (``cupy_abn.MODES``) is documented by the ``#:``
    comment at its definition in a submodule, not by its type's docstring."""
    if what != "data":
        return
    from sphinx.pycode import ModuleAnalyzer
    attr = name.rsplit(".", 1)[-1]
    for modname, module in sorted(sys.modules.items()):
        if modname.startswith("cupy_abn.") and getattr(module, attr, None) is obj:
            try:
                doc = ModuleAnalyzer.for_module(modname).find_attr_docs().get(("", attr))
            except Exception:   # noqa: BLE001 - no source: keep what autodoc found
                continue
            if doc:
                lines[:] = list(doc)
                return


def setup(app):
    app.connect("autodoc-process-bases", _public_bases)
    app.connect("autodoc-process-docstring", _data_doc_comment)
