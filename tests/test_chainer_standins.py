"""Chainer without ``numpy.distutils``, ``distutils``, setuptools and ``pkg_resources`` (Python
>= 3.12 with NumPy 2 and setuptools >= 81 or none): ``import cupy_abn.chainer`` serves its
stand-ins (cupy_abn/chainer/_standins.py), Chainer and ChainerMN import, InPlaceABN trains as
BatchNormalization + leaky_relu, and Chainer's version check reports what the real
``pkg_resources`` reports.  Where a module is installed, it wins.  Plus the ``pkg_resources``
stand-in's own functions, with ``packaging`` and with its PEP 440 fallback."""
import importlib.machinery
import importlib.util
import itertools
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

# Makes the named modules unfindable, as if not installed: sys.path's finder is replaced by one
# blind to them (later finders, the stand-ins' among them, are still asked), setuptools'
# distutils hook is removed, and what start-up imported of them is forgotten.
HIDE = r'''
import importlib.machinery, sys
_HIDDEN = ("numpy.distutils", "distutils", "setuptools", "pkg_resources", "_distutils_hack")
def _hidden(name):
    return any(name == h or name.startswith(h + ".") for h in _HIDDEN)
class _BlindPathFinder(importlib.machinery.PathFinder):
    @classmethod
    def find_spec(cls, fullname, path=None, target=None):
        return None if _hidden(fullname) else super().find_spec(fullname, path, target)
sys.meta_path[:] = [_BlindPathFinder if f is importlib.machinery.PathFinder else f
                    for f in sys.meta_path if type(f).__module__ != "_distutils_hack"]
for _m in [m for m in sys.modules if _hidden(m)]:
    del sys.modules[_m]
for _m in _HIDDEN:
    try:
        __import__(_m)
    except ModuleNotFoundError:
        pass
    else:
        raise AssertionError(_m + " is still importable")
'''

# Fake installed distributions (metadata only) for Chainer's optional-dependency check: a CuPy
# too old (a version conflict, reported with get_distribution's version), a second CuPy
# (a multiple-installations warning) and an iDeep that satisfies '>=2.0.0.post3, <2.1'.
FAKE_DISTS = {"cupy_cuda80": "7.0.0", "cupy_cuda90": "7.8.0", "ideep4py": "2.0.0.post3"}

CHECK_WARNINGS = r'''
import warnings
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    import cupy_abn.chainer as C
    import chainer
env_warnings = [" ".join(str(w.message).split()) for w in caught
                if w.filename.endswith("_environment_check.py")
                and not issubclass(w.category, DeprecationWarning)
                # setuptools 67-80's own notice on importing the real pkg_resources
                and not str(w.message).startswith("pkg_resources is deprecated")]
assert len(env_warnings) == 2, env_warnings
assert "CuPy (cupy-cuda80) version 7.0.0 may not be compatible" in env_warnings[0], env_warnings
assert "pip install 'cupy-cuda80>=7.7.0,<8.0.0'" in env_warnings[0], env_warnings
assert "Multiple installations of CuPy package" in env_warnings[1], env_warnings
'''

TRAIN = r'''
import sys
import numpy as np
import chainer.functions as F
import chainer.links as L
import chainer.testing
import chainermn
from cupy_abn.chainer import _standins
import chainer._environment_check as check
import numpy.distutils.system_info
import pkg_resources

# the stand-ins are what Chainer uses, and nothing hidden came back
assert _standins.is_stand_in(pkg_resources) and check.pkg_resources is pkg_resources
assert _standins.is_stand_in(numpy.distutils.system_info)
assert check.numpy.distutils.system_info is numpy.distutils.system_info
assert numpy.distutils.system_info.get_info("blas_opt") == {}
assert not [m for m in sys.modules if m.split(".")[0] in ("setuptools", "distutils",
                                                         "_distutils_hack")]
assert pkg_resources.get_distribution("chainer").version == chainer.__version__ == "7.8.1"
skipped = chainer.testing.with_requires("numpy<1")(lambda: None)
kept = chainer.testing.with_requires("numpy>=1")(lambda: None)
assert getattr(skipped, "__unittest_skip__", False)
assert not getattr(kept, "__unittest_skip__", False)

# one training step of InPlaceABN against L.BatchNormalization + F.leaky_relu (float64)
rs = np.random.RandomState(0)
x = rs.randn(6, 4, 3, 3)
gy = rs.randn(*x.shape)
bn = L.BatchNormalization(4, dtype=np.float64)
bn.gamma.array[...] = rs.uniform(0.5, 1.5, 4)
bn.beta.array[...] = rs.uniform(-0.5, 0.5, 4)
layer = C.InPlaceABN(4, dtype=np.float64, activation_param=0.1)
layer.gamma.array[...] = bn.gamma.array - layer.eps   # in place, the scale is |gamma| + eps
layer.beta.array[...] = bn.beta.array
results = []
for link, fn in ((bn, lambda h: F.leaky_relu(bn(h), 0.1)), (layer, layer)):
    opt = chainer.optimizers.SGD(lr=0.1)
    opt.setup(link)
    xv = chainer.Variable(x.copy())
    y = fn(xv * 1)            # an intermediate: in place, a leaf would be copied
    out = y.array.copy()
    link.cleargrads()
    y.grad = gy.copy()
    y.backward()
    grads = (xv.grad.copy(), link.gamma.grad.copy(), link.beta.grad.copy())
    opt.update()
    results.append((out, grads, link.gamma.array.copy(), link.beta.array.copy(),
                    link.avg_mean.copy(), link.avg_var.copy()))
(want, want_g, *want_rest), (got, got_g, *got_rest) = results
np.testing.assert_allclose(got, want, rtol=1e-10, atol=1e-12)
for g, w, name in zip(got_g, want_g, ("dx", "dgamma", "dbeta")):
    assert np.abs(w).max() > 1e-3, name
    np.testing.assert_allclose(g, w, rtol=1e-9, atol=1e-11, err_msg=name)
for i, (g, w) in enumerate(zip(got_rest, want_rest)):
    np.testing.assert_allclose(g + (layer.eps if i == 0 else 0), w, rtol=1e-9, atol=1e-12)
print("TRAINED", chainermn.__name__)
'''


def _real_pkg_resources() -> bool:
    """Whether ``pkg_resources`` is installed (asked of sys.path's finder: the stand-ins'
    finder may be on sys.meta_path in this process)."""
    return importlib.machinery.PathFinder.find_spec("pkg_resources") is not None


def _needs_chainer():
    # located, not imported: in an environment without pkg_resources, importing Chainer here
    # (before cupy_abn.chainer) would fail
    if importlib.util.find_spec("chainer") is None:
        pytest.skip("Chainer is not installed")


def _fake_dists(where: Path) -> Path:
    for name, version in FAKE_DISTS.items():
        info = where / f"{name}-{version}.dist-info"
        info.mkdir(parents=True)
        (info / "METADATA").write_text(
            f"Metadata-Version: 2.1\nName: {name.replace('_', '-')}\nVersion: {version}\n")
    return where


def _run(code: str, tmp_path: Path, *paths: Path) -> subprocess.CompletedProcess:
    env = dict(os.environ, CHAINER_WARN_VERSION_MISMATCH="1", PYTHONDONTWRITEBYTECODE="1",
               PYTHONPATH=os.pathsep.join([str(p) for p in paths] + [str(ROOT)] + [
                   p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    env.pop("SETUPTOOLS_USE_DISTUTILS", None)
    p = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, env=env,
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout[-3000:] + p.stderr[-5000:]
    return p


def test_without_distutils_setuptools_and_pkg_resources_inplace_abn_trains(tmp_path):
    """As on Python >= 3.12 with NumPy 2 and setuptools >= 81 (or none): Chainer and
    ChainerMN import through the stand-ins, Chainer's version check warns as it does with
    the real pkg_resources, and an InPlaceABN training step matches BN + leaky_relu."""
    _needs_chainer()
    p = _run(HIDE + CHECK_WARNINGS + TRAIN, tmp_path, _fake_dists(tmp_path / "site"))
    assert "TRAINED chainermn" in p.stdout


def test_installed_modules_win_and_apply_is_idempotent(tmp_path):
    """An installed ``pkg_resources`` (here a minimal one first on sys.path) and the real
    ``numpy.distutils`` (or, where NumPy has none, a minimal one on ``numpy.__path__``) are
    found before the stand-ins; the finder is after sys.path's, once."""
    _needs_chainer()
    site = tmp_path / "site"
    (site / "numpy_extra" / "distutils").mkdir(parents=True)
    (site / "pkg_resources.py").write_text(textwrap.dedent("""\
        INSTALLED_HERE = True
        class ResolutionError(Exception): pass
        class DistributionNotFound(ResolutionError): pass
        class VersionConflict(ResolutionError): pass
        def require(req): raise DistributionNotFound(req)
        def get_distribution(name): raise DistributionNotFound(name)
        """))
    (site / "numpy_extra" / "distutils" / "__init__.py").write_text("")
    (site / "numpy_extra" / "distutils" / "system_info.py").write_text(
        "INSTALLED_HERE = True\ndef get_info(name): return {}\n")
    code = textwrap.dedent(f"""\
        import sys
        from importlib.machinery import PathFinder
        import numpy
        numpy.__path__.append({str(site / "numpy_extra")!r})
        import cupy_abn.chainer
        import chainer._environment_check as check
        from cupy_abn.chainer import _standins
        import numpy.distutils.system_info as info
        import pkg_resources
        assert check.pkg_resources is pkg_resources and pkg_resources.INSTALLED_HERE
        assert not _standins.is_stand_in(pkg_resources)
        assert not _standins.is_stand_in(info) and check.numpy.distutils.system_info is info
        assert _standins.apply() is False and _standins.apply() is False
        ours = [f for f in sys.meta_path if getattr(f, "_cupy_abn_stand_ins", False)]
        # appended when applied (finders appended later, six's, come after it)
        assert len(ours) == 1, sys.meta_path
        assert sys.meta_path.index(ours[0]) > sys.meta_path.index(PathFinder), sys.meta_path
        print("REAL", getattr(info, "INSTALLED_HERE", False))
        """)
    p = _run(code, tmp_path, site)
    assert "REAL" in p.stdout


def test_version_check_warnings_as_installed(tmp_path):
    """The same warnings in this environment as it is (the real ``pkg_resources`` where
    setuptools < 81 is installed, the stand-in elsewhere): the expectations of the hidden
    run above are those of the real module."""
    _needs_chainer()
    code = CHECK_WARNINGS + textwrap.dedent("""
        import sys
        from cupy_abn.chainer._standins import is_stand_in
        print("STANDIN" if is_stand_in(sys.modules["pkg_resources"]) else "REAL")
        """)
    p = _run(code, tmp_path, _fake_dists(tmp_path / "site"))
    assert p.stdout.split()[-1] == ("REAL" if _real_pkg_resources() else "STANDIN")


# ---------------------------------------------------------------- the pkg_resources stand-in
def _load():
    """cupy_abn/chainer/_standins.py on its own (no Chainer needed)."""
    spec = importlib.util.spec_from_file_location(
        "standins_under_test", ROOT / "cupy_abn" / "chainer" / "_standins.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(params=["packaging", "fallback"])
def S(request, monkeypatch):
    mod = _load()
    if request.param == "fallback":
        monkeypatch.setattr(mod, "_packaging", lambda: None)
    return mod


def test_require_and_get_distribution(S):
    import numpy
    version = numpy.__version__
    major = int(version.split(".")[0])
    got = S.require(f"numpy>={major},<{major + 1}", "NumPy")
    assert [d.version for d in got] == [version, version]
    assert S.get_distribution("numpy").version == version
    assert S.get_distribution("numpy").project_name.lower() == "numpy"
    assert S.WorkingSet().require(f"numpy=={version}")[0].version == version
    with pytest.raises(S.VersionConflict) as e:
        S.require(f"numpy>={major + 1}")
    assert isinstance(e.value, S.ResolutionError) and e.value.dist.version == version
    assert str(e.value.req) == f"numpy>={major + 1}"
    with pytest.raises(S.VersionConflict):
        S.get_distribution(f"numpy<{major}")
    with pytest.raises(S.DistributionNotFound) as e:
        S.require("no-such-distribution-here>=1")
    assert isinstance(e.value, S.ResolutionError) and "no-such-distribution-here" in str(e.value)
    with pytest.raises(ValueError):
        S.require("numpy>=>1")
    S.fixup_namespace_packages("/nowhere")          # pytest's syspath_prepend calls it


def test_require_with_a_marker():
    S = _load()
    assert S.require('no-such-distribution-here; python_version < "3"') == []
    assert S.require('numpy; python_version >= "3"')[0].key == "numpy"


def test_stand_in_modules_from_the_finder(monkeypatch):
    """What the finder serves: only its three names, stand-ins marked, unknown attributes
    explained."""
    S = _load()
    finder = S._Finder()
    assert finder.find_spec("pkg_resources.extern") is None
    assert finder.find_spec("numpy") is None
    mods = {}
    for name in ("numpy.distutils", "numpy.distutils.system_info", "pkg_resources"):
        spec = finder.find_spec(name)
        assert (spec.submodule_search_locations is not None) == (name == "numpy.distutils")
        mods[name] = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(mods[name])
        assert S.is_stand_in(mods[name])
    assert mods["numpy.distutils.system_info"].get_info("blas_opt") == {}
    pr = mods["pkg_resources"]
    assert pr.require is S.require and pr.VersionConflict is S.VersionConflict
    assert not hasattr(pr, "_namespace_packages")
    with pytest.raises(AttributeError, match="stand-in"):
        pr.iter_entry_points
    import numpy
    assert not S.is_stand_in(numpy)
    # (this process may hold cupy_abn.chainer's finder already: apply() would keep it)
    monkeypatch.setattr(sys, "meta_path", [f for f in sys.meta_path
                                           if not getattr(f, "_cupy_abn_stand_ins", False)])
    assert S.apply() is True and S.apply() is False
    assert getattr(sys.meta_path[-1], "_cupy_abn_stand_ins", False)


def test_the_stand_in_agrees_with_the_real_pkg_resources_where_it_is_installed():
    """Where setuptools < 81 is installed (tox's environments), the same outcome for the
    requirements Chainer passes and a few more."""
    S = _load()
    import numpy
    major = int(numpy.__version__.split(".")[0])
    cases = [f"numpy>={major},<{major + 1}", f"numpy>={major + 1}", "numpy>=1.9.0",
             "no-such-distribution-here>=7.7.0,<8.0.0", f"numpy>=2.0.0.post3, <{major + 1}",
             f"numpy~={major}.0", "numpy!=0.1", f"pytest>={pytest.__version__}",
             f"pytest<{pytest.__version__}"]
    outcome = {}
    for req in cases:
        try:
            outcome[req] = [d.version for d in S.require(req)]
        except S.ResolutionError as e:
            outcome[req] = type(e).__name__
    assert outcome[cases[0]] == [numpy.__version__] == outcome[cases[2]]
    assert outcome[cases[1]] == "VersionConflict"
    assert outcome[cases[3]] == "DistributionNotFound"
    if not _real_pkg_resources():
        return                          # no real pkg_resources here: the checks above only
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pkg_resources as real
    for req in cases:
        try:
            want = [real.get_distribution(req).version]
        except (real.VersionConflict, real.DistributionNotFound) as e:
            want = type(e).__name__
        assert outcome[req] == want, req


VERSIONS = ["1.0", "1.0.0", "1.0.dev0", "1.0a1", "1.0a1.dev2", "1.0b2", "1.0rc1", "1.0.post1",
            "1.0.post1.dev3", "1.0+local.7", "1.0.1", "1.1", "2.0", "0.9", "1!0.5",
            "7.7.0", "7.6.9", "7.8.0rc1", "8.0.0a1", "8.0.0", "8.0", "2.0.0.post3",
            "2.0.0.post2", "2.0.0", "2.1.0.dev0", "2.1", "13.6.0", "14.2.0", "1.0-1",
            "1.0.0.0", "2.0.0.post3+x"]
SPECS = [">=7.7.0,<8.0.0", ">=2.0.0.post3, <2.1", ">=1.0", ">1.0", "<1.0", "<=1.0",
         "==1.0", "==1.0.*", "!=1.0", "!=1.0.*", "~=1.0", "~=1.0.0", "==1.0+local.7",
         ">1.0.post1", "<1.0a1", "==1!0.5", "~=2.0.0.post1", "===1.0",
         "==2.*"]
# '<V' and '>V' next to a pre-release bound: packaging <= 25 (which pkg_resources vendors)
# excludes pre- and post-releases of V's release here, packaging 26 does not.  The fallback
# decides as pkg_resources does.
EDGES = [("1.0.dev0", ">=1.0.dev0,<1.0.post2", False), ("1.0rc1", "<1.0.post2", False),
         ("1.0.post1.dev3", "<1.0.post2", False), ("1.0.post1", ">1.0.dev0", False),
         ("1.0+local.7", ">1.0.dev0", False), ("1.0.1", ">1.0.dev0", True),
         ("0.9", "<1.0.post2", True)]


def _fallback_contains(S, version, spec):
    return all(S._satisfies(version, *S._parse_clause(c)) for c in spec.split(","))


def test_pep440_fallback_agrees_with_packaging():
    """The fallback (no ``packaging`` importable) decides every clause as ``packaging`` does
    with pre-releases allowed (as ``pkg_resources.require`` does)."""
    from packaging.specifiers import SpecifierSet
    S = _load()
    for version, spec in itertools.product(VERSIONS, SPECS):
        want = SpecifierSet(spec).contains(version, prereleases=True)
        assert _fallback_contains(S, version, spec) == want, (version, spec)
    for version, spec, want in EDGES:
        assert _fallback_contains(S, version, spec) == want, (version, spec)
    for bad in ("1.0.x", "one", "1.0-"):
        with pytest.raises(ValueError):
            S._satisfies(bad, ">=", "1.0")
