"""The documentation builds: Sphinx's html and doctest builders, warnings as errors, nitpicky,
without network (intersphinx reads docs/_intersphinx/).  The doctest build runs the
quickstart's examples (the README's, tests/test_readme.py) and the docstrings' ``>>>``
examples; an InPlaceFallbackWarning in them fails its cleanup (docs/conf.py).

Both builds share one doctree directory, so the doctest build does not parse the sources
again.  Marked ``once``: the answer does not depend on NumPy's, CuPy's or Chainer's version.
"""
import importlib
import re
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.once

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "docs"


def _sphinx(builder: str, out: Path, doctrees: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "sphinx", "-W", "--keep-going", "-n",
                           "-b", builder, str(DOCS), str(out / builder), "-d", str(doctrees)],
                          capture_output=True, text=True, timeout=300, cwd=ROOT)


@pytest.fixture(scope="module")
def builds(tmp_path_factory):
    import sphinx  # noqa: F401 - the docs extra; a missing Sphinx fails here, it does not skip
    out = tmp_path_factory.mktemp("docs")
    html = _sphinx("html", out, out / "doctrees")
    doctest = _sphinx("doctest", out, out / "doctrees")
    return {"html": html, "doctest": doctest, "out": out}


def _log(proc: subprocess.CompletedProcess) -> str:
    return (proc.stdout[-4000:] + "\n" + proc.stderr[-6000:]).strip()


def test_html_build(builds):
    proc = builds["html"]
    assert proc.returncode == 0, _log(proc)
    html = builds["out"] / "html"
    for page in ("index", "quickstart", "math", "api", "faq", "guide/finite-check"):
        assert (html / f"{page}.html").is_file(), page


def test_doctest_build(builds):
    proc = builds["doctest"]
    assert proc.returncode == 0, _log(proc)
    summary = re.search(r"Doctest summary\s*=+\s*(\d+) tests?", proc.stdout)
    assert summary, _log(proc)
    assert int(summary.group(1)) > 0, _log(proc)
    for failures in ("0 failures in tests", "0 failures in setup code",
                     "0 failures in cleanup code"):
        assert failures in proc.stdout, _log(proc)
    # the quickstart's two examples ran, each in its own group
    quickstart = proc.stdout.split("Document: quickstart", 1)[-1]
    assert "Document: quickstart" in proc.stdout, _log(proc)
    assert re.search(r"1 tests? in array\b", quickstart), _log(proc)
    assert re.search(r"1 tests? in chainer\b", quickstart), _log(proc)


def test_intersphinx_inventories_are_the_scripts_output():
    sys.path.insert(0, str(DOCS / "_intersphinx"))
    try:
        make = importlib.import_module("make_inventories")
    finally:
        sys.path.remove(str(DOCS / "_intersphinx"))
    for project in make.INVENTORIES:
        committed = (DOCS / "_intersphinx" / f"{project}.inv").read_bytes()
        assert committed == make.inventory(project), \
            f"docs/_intersphinx/{project}.inv: rerun python docs/_intersphinx/make_inventories.py"


def _documented_names(rst: str) -> set:
    """Full names listed by the autosummary directives of docs/api.rst."""
    names, module, in_summary = set(), None, False
    for line in rst.splitlines():
        current = re.match(r"\.\. (?:currentmodule|automodule|py:module):: (\S+)", line)
        if current:
            module, in_summary = current.group(1), False
        elif line.startswith(".. autosummary::"):
            in_summary = True
        elif in_summary and line.strip() and not line.startswith(" "):
            in_summary = False
        elif in_summary and line.strip() and not line.strip().startswith(":"):
            names.add(f"{module}.{line.strip()}")
    return names


@pytest.mark.parametrize("module", ["cupy_abn", "cupy_abn.chainer", "cupy_abn.sync"])
def test_api_reference_lists_every_public_name(module):
    public = {f"{module}.{name}" for name in importlib.import_module(module).__all__}
    documented = {n for n in _documented_names((DOCS / "api.rst").read_text())
                  if n.rsplit(".", 1)[0] == module}
    assert public - documented == set(), "in __all__ but not in docs/api.rst"
    assert documented - public == set(), "in docs/api.rst but not in __all__"
