"""Write the local intersphinx inventories the docs link against: ``python make_inventories.py``.

The docs build must not need the network (CI reaches only PyPI), so instead of downloading
``objects.inv`` from NumPy, CuPy, Chainer and Python, this script writes small Sphinx
inventories (format version 2) by hand.  They list exactly the outside objects our pages and
docstrings refer to, each with its real address under the base URL that ``docs/conf.py``
maps the project to.  It is a hand-made subset, not a copy of those projects' inventories:
add an entry here (and rerun the script) when the build reports a new unresolved reference
to one of them.  ``tests/test_docs.py`` checks that the committed files are this script's
output.
"""
from __future__ import annotations

import sys
import zlib
from pathlib import Path

HERE = Path(__file__).resolve().parent

# project -> (display name, version, {object: (domain:role, uri)}); uri relative to the
# base URL in docs/conf.py's intersphinx_mapping.
_PY_EXC = "library/exceptions.html#"
INVENTORIES = {
    "python": ("Python", "3", {
        "FloatingPointError": ("py:exception", _PY_EXC + "FloatingPointError"),
        "NotImplementedError": ("py:exception", _PY_EXC + "NotImplementedError"),
        "RuntimeError": ("py:exception", _PY_EXC + "RuntimeError"),
        "TypeError": ("py:exception", _PY_EXC + "TypeError"),
        "UserWarning": ("py:exception", _PY_EXC + "UserWarning"),
        "ValueError": ("py:exception", _PY_EXC + "ValueError"),
    }),
    "numpy": ("NumPy", "stable", {
        "numpy.ndarray": ("py:class", "reference/generated/numpy.ndarray.html#numpy.ndarray"),
        "numpy.finfo": ("py:class", "reference/generated/numpy.finfo.html#numpy.finfo"),
    }),
    "cupy": ("CuPy", "stable", {
        "cupy.ndarray": ("py:class", "reference/generated/cupy.ndarray.html#cupy.ndarray"),
    }),
    "chainer": ("Chainer", "7.8.1", {
        "chainer.FunctionNode": ("py:class", "reference/generated/chainer.FunctionNode.html"
                                             "#chainer.FunctionNode"),
        "chainer.Link": ("py:class", "reference/generated/chainer.Link.html#chainer.Link"),
        "chainer.Variable": ("py:class",
                             "reference/generated/chainer.Variable.html#chainer.Variable"),
        "chainer.no_backprop_mode": ("py:function", "reference/generated/"
                                     "chainer.no_backprop_mode.html#chainer.no_backprop_mode"),
        "chainer.using_config": ("py:function", "reference/generated/"
                                 "chainer.using_config.html#chainer.using_config"),
        "chainer.functions.batch_normalization": (
            "py:function", "reference/generated/chainer.functions.batch_normalization.html"
                           "#chainer.functions.batch_normalization"),
        "chainer.functions.fixed_batch_normalization": (
            "py:function", "reference/generated/chainer.functions.fixed_batch_normalization"
                           ".html#chainer.functions.fixed_batch_normalization"),
        "chainer.functions.leaky_relu": (
            "py:function", "reference/generated/chainer.functions.leaky_relu.html"
                           "#chainer.functions.leaky_relu"),
        "chainer.links.BatchNormalization": (
            "py:class", "reference/generated/chainer.links.BatchNormalization.html"
                        "#chainer.links.BatchNormalization"),
        # ChainerMN's API reference is one page of Chainer's documentation.
        "chainermn.links.MultiNodeBatchNormalization": (
            "py:class", "chainermn/reference/index.html"
                        "#chainermn.links.MultiNodeBatchNormalization"),
    }),
}


def inventory(project: str) -> bytes:
    """The ``objects.inv`` bytes of one project (deterministic: sorted, fixed compression)."""
    name, version, objects = INVENTORIES[project]
    header = (f"# Sphinx inventory version 2\n# Project: {name}\n# Version: {version}\n"
              "# The remainder of this file is compressed using zlib.\n").encode()
    lines = "".join(f"{obj} {role} 1 {uri} -\n" for obj, (role, uri) in sorted(objects.items()))
    return header + zlib.compress(lines.encode(), 9)


def main(argv=None) -> int:
    for project in INVENTORIES:
        (HERE / f"{project}.inv").write_bytes(inventory(project))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
