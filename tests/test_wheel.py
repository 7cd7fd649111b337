"""The distributions: ``python -m build`` makes an sdist and a wheel that carry the kernels and
``py.typed``, ``twine check`` accepts both, and the wheel, installed into a fresh virtual
environment outside the checkout, runs a forward and a backward on NumPy arrays.

Both artifacts are built once per module (into a temporary folder; the build runs in an isolated
environment, so it needs PyPI or a pip cache that has ``setuptools<81`` and ``wheel``).  The
fresh environment gets the wheel with ``--no-deps`` and the running NumPy version, so nothing
else can change what is tested.
"""
import json
import os
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy
import pytest

pytest.importorskip("build")

# Independent of the tox environment's NumPy/CuPy/Chainer (the wheel goes into its own venv).
pytestmark = pytest.mark.once

REPO = Path(__file__).resolve().parents[1]
KERNELS = sorted(p.name for p in (REPO / "kernels").iterdir() if p.suffix in (".cu", ".cuh", ".h"))
MODULES = sorted(str(p.relative_to(REPO)).replace(os.sep, "/")
                 for p in (REPO / "cupy_abn").rglob("*.py") if "__pycache__" not in p.parts)


def _run(cmd, **kw):
    out = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}\n--- stdout\n{out.stdout}\n--- stderr\n{out.stderr}"
    return out


def _clean_env():
    """The environment for child processes: nothing that points Python at the checkout."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "PYTHONHOME", "VIRTUAL_ENV", "PYTHONSTARTUP")}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def dist(tmp_path_factory):
    out = tmp_path_factory.mktemp("dist")
    env = _clean_env()
    # setuptools<81 in the isolated build environment, as pyproject.toml asks (tox's
    # PIP_CONSTRAINT already says so)
    env.setdefault("PIP_CONSTRAINT", str(REPO / ".ci" / "build-constraints.txt"))
    _run([sys.executable, "-m", "build", "--outdir", out, REPO], cwd=out, env=env, timeout=600)
    sdists, wheels = sorted(out.glob("*.tar.gz")), sorted(out.glob("*.whl"))
    assert len(sdists) == 1 and len(wheels) == 1, sorted(p.name for p in out.iterdir())
    return sdists[0], wheels[0]


def test_wheel_contents(dist):
    names = set(zipfile.ZipFile(dist[1]).namelist())
    assert {f"cupy_abn/kernels/{k}" for k in KERNELS} <= names, sorted(names)
    assert {"cupy_abn/kernels/__init__.py", "cupy_abn/py.typed"} <= names
    assert set(MODULES) <= names, sorted(set(MODULES) - names)
    # nothing of the checkout's tooling leaks into the installed package
    assert not {n for n in names if n.startswith(("tests/", "kernels/", "benchmarks/"))}
    # NumPy is the only dependency outside the extras
    meta = zipfile.ZipFile(dist[1]).read(
        next(n for n in names if n.endswith(".dist-info/METADATA"))).decode()
    requires = [line.split(":", 1)[1].strip() for line in meta.splitlines()
                if line.startswith("Requires-Dist:")]
    assert [r for r in requires if "extra ==" not in r] == ["numpy>=1.22"], requires


def test_sdist_contents(dist):
    sdist = dist[0]
    top = sdist.name[:-len(".tar.gz")]
    with tarfile.open(sdist) as tar:
        names = {n[len(top) + 1:] for n in tar.getnames() if n.startswith(top + "/")}
    assert {f"kernels/{k}" for k in KERNELS} <= names, sorted(names)
    assert {"cupy_abn/py.typed", "setup.cfg", "pyproject.toml", "MANIFEST.in", "README.md",
            "tox.ini", ".ci/build-constraints.txt", "tests/conftest.py", "LICENSE",
            "scripts/test.sh"} <= names
    assert set(MODULES) <= names, sorted(set(MODULES) - names)
    assert not {n for n in names if "__pycache__" in n or n.endswith(".pyc")}
    # the static report is a development record, not part of the distribution
    assert "benchmarks/results/static_report.json" not in names
    assert "benchmarks/static/check.py" in names


def test_twine_check(dist):
    pytest.importorskip("twine")
    out = _run([sys.executable, "-m", "twine", "check", "--strict", *dist], env=_clean_env(),
               timeout=300)
    assert out.stdout.count("PASSED") == 2, out.stdout


_PROBE = r"""
import importlib.metadata as md, importlib.resources, json, sys
import numpy as np
import cupy_abn
from cupy_abn import _kernel_source

# A forward and a backward, in float64, against the formulas (leaky_relu, gamma > 0).
rng = np.random.default_rng(0)
N, C, H, W = 4, 3, 5, 6
x = rng.standard_normal((N, C, H, W)) * 2.0 + 0.5
gamma, beta = rng.uniform(0.5, 1.5, C), rng.standard_normal(C)
rm, rv = np.zeros(C), np.ones(C)
dz = rng.standard_normal((N, C, H, W))
eps, slope = 2e-5, 0.01
b = lambda v: v.reshape(1, C, 1, 1)
mean, var = x.mean(axis=(0, 2, 3)), x.var(axis=(0, 2, 3))
xhat = (x - b(mean)) / np.sqrt(b(var) + eps)
y = xhat * b(gamma + eps) + b(beta)
want_z = np.where(y >= 0, y, slope * y)
dy = np.where(y >= 0, dz, slope * dz)
want_dbeta = dy.sum(axis=(0, 2, 3))
want_dgamma = (dy * xhat).sum(axis=(0, 2, 3))
want_dx = b((gamma + eps) / np.sqrt(var + eps)) * (
    dy - b(dy.mean(axis=(0, 2, 3))) - xhat * b((dy * xhat).mean(axis=(0, 2, 3))))

x_in = x.copy()
z, saved = cupy_abn.abn_forward(x_in, gamma, beta, rm, rv, training=True, eps=eps,
                                activation="leaky_relu", activation_param=slope)
dx, dgamma, dbeta = cupy_abn.abn_backward(saved, dz.copy())
err = lambda a, b: float(np.max(np.abs(a - b)))

dist = md.distribution("cupy-abn")
direct_url = dist.read_text("direct_url.json")
root = importlib.resources.files("cupy_abn.kernels")
print(json.dumps({
    "prefix": sys.prefix,
    "module": cupy_abn.__file__,
    "version": dist.version,
    "editable": bool(direct_url and json.loads(direct_url).get("dir_info", {}).get("editable")),
    "files": sorted(str(f).replace("\\", "/") for f in (dist.files or ())),
    "kernels": sorted(p.name for p in root.iterdir() if p.name.endswith((".cu", ".cuh", ".h"))),
    "py_typed": importlib.resources.files("cupy_abn").joinpath("py.typed").is_file(),
    "source_len": len(_kernel_source.source("normalize_activate", "cuda")),
    "numpy": np.__version__,
    "in_place": z is x_in,
    "err": {"z": err(z, want_z), "dx": err(dx, want_dx), "dgamma": err(dgamma, want_dgamma),
            "dbeta": err(dbeta, want_dbeta),
            "running_mean": err(rm, 0.1 * mean),
            "running_var": err(rv, 0.9 + 0.1 * var * x[:, 0].size / (x[:, 0].size - 1))},
}))
"""


def test_wheel_installs_and_runs(dist, tmp_path):
    venv = tmp_path / "venv"
    env = _clean_env()
    _run([sys.executable, "-m", "venv", venv], env=env, timeout=300)
    py = venv / ("Scripts" if os.name == "nt" else "bin") / "python"
    # the wheel alone (its only dependency, NumPy, pinned to the version running this test)
    _run([py, "-m", "pip", "install", "-q", "--no-deps", dist[1]], cwd=tmp_path, env=env,
         timeout=300)
    _run([py, "-m", "pip", "install", "-q", f"numpy=={numpy.__version__}"], cwd=tmp_path,
         env=env, timeout=600)
    work = tmp_path / "work"
    work.mkdir()
    # -I: no PYTHONPATH, no user site, no script or current folder on sys.path
    out = _run([py, "-I", "-c", _PROBE], cwd=work, env=env, timeout=300)
    info = json.loads(out.stdout.strip().splitlines()[-1])

    # the module imported is the wheel's, installed in the fresh environment
    assert Path(info["prefix"]).resolve() == venv.resolve()
    module = Path(info["module"]).resolve()
    assert module.is_relative_to(venv.resolve()), module
    assert not module.is_relative_to(REPO), module
    assert not info["editable"]
    assert info["version"] == dist[1].name.split("-")[1]
    assert info["numpy"] == numpy.__version__
    # with the kernel sources and py.typed inside
    assert info["kernels"] == KERNELS
    assert {f"cupy_abn/kernels/{k}" for k in KERNELS} <= set(info["files"])
    assert "cupy_abn/py.typed" in info["files"] and info["py_typed"]
    assert info["source_len"] > 0
    # and it computes
    assert info["in_place"]
    assert all(e < 1e-9 for e in info["err"].values()), info["err"]
