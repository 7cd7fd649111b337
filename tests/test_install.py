"""The README's install commands work verbatim in a fresh virtual environment.

The commands of the README's "Install" section are run one by one, as written, in a copy of
the checkout (its tracked and unignored files), with a fresh venv's ``bin`` first on ``PATH``
and none of tox's pip settings, as a newcomer would run them.  Before them the venv gets the
newest setuptools where it has one (Python 3.11's venv ships setuptools 65; 3.12+ has none),
so that ``pkg_resources`` is gone as on a current machine.  Then Chainer must import and an
``InPlaceABN`` layer must train, forward and backward, against ``L.BatchNormalization`` +
``F.leaky_relu``.

One case per Python found: the one running the tests, and ``python3.12`` / ``python3.13``
where they are on ``PATH`` or
installed by pyenv.  Slow (Chainer's sdist is built each time): the full tier only.
"""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = [pytest.mark.full, pytest.mark.once]

ROOT = Path(__file__).resolve().parents[1]


def readme_install_commands() -> list:
    """The lines of the ```bash block of the README's "Install" section, comments removed."""
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = re.search(r"^## Install\n(.*?)^## ", text, re.S | re.M)
    assert section, "README.md has no '## Install' section"
    blocks = re.findall(r"^```bash\n(.*?)^```", section.group(1), re.S | re.M)
    assert len(blocks) == 1, blocks
    lines = [re.sub(r"\s+#.*$", "", line).strip() for line in blocks[0].splitlines()]
    return [line for line in lines if line and not line.startswith("#")]


def test_readme_install_is_one_chainer_line():
    """The issue's contract: the CPU install of the Chainer layers is a single line."""
    commands = readme_install_commands()
    assert any("pip install" in c and "chainer" in c for c in commands), commands


def _pythons() -> list:
    found = {sys.version_info[:2]: sys.executable}
    pyenv = Path(os.environ.get("PYENV_ROOT", Path.home() / ".pyenv")) / "versions"
    for name in ("python3.12", "python3.13"):
        # on PATH, or installed by pyenv without being selected (its shim then fails)
        for path in [shutil.which(name), *sorted(map(str, pyenv.glob(f"3.*/bin/{name}")))]:
            if not path:
                continue
            out = subprocess.run([path, "-c", "import sys; print(*sys.version_info[:2])"],
                                 capture_output=True, text=True)
            if out.returncode == 0:
                found.setdefault(tuple(map(int, out.stdout.split())), path)
                break
    return [pytest.param(path, id=f"py{major}.{minor}")
            for (major, minor), path in sorted(found.items())]


def _copy_checkout(dest: Path) -> None:
    files = subprocess.run(["git", "ls-files", "-co", "--exclude-standard", "-z"], cwd=ROOT,
                           capture_output=True, check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        src = ROOT / name
        if src.is_file():
            (dest / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / name)


def _run(cmd, **kw):
    out = subprocess.run(cmd, capture_output=True, text=True, **kw)
    assert out.returncode == 0, f"{cmd}\n--- stdout\n{out.stdout[-4000:]}\n--- stderr\n" \
                                f"{out.stderr[-4000:]}"
    return out


_TRAIN = r"""
import importlib.util, sys
# as on a current machine: no pkg_resources (Chainer imports it) before cupy_abn.chainer
assert importlib.util.find_spec("pkg_resources") is None
import numpy as np
import cupy_abn.chainer as abn
import chainer, chainer.functions as F, chainer.links as L
rng = np.random.default_rng(0)
x = rng.standard_normal((4, 3, 5, 5)).astype(np.float64)
dz = rng.standard_normal(x.shape)
layer = abn.InPlaceABN(3, dtype=np.float64)
ref = L.BatchNormalization(3, dtype=np.float64)
ref.gamma.array[:] = layer.gamma.array + layer.eps      # the in-place scale is |gamma| + eps
h = chainer.Variable(x.copy()) * 1.0                    # an intermediate: stays in place
z = layer(h)
z.grad = dz.copy()
z.backward()
v = chainer.Variable(x.copy())
zr = F.leaky_relu(ref(v), 0.01)
zr.grad = dz.copy()
zr.backward()
err = max(float(np.abs(z.array - zr.array).max()),
          float(np.abs(layer.gamma.grad - ref.gamma.grad).max()),
          float(np.abs(layer.beta.grad - ref.beta.grad).max()))
assert err < 1e-9, err
print("ok", chainer.__version__, np.__version__, sys.version.split()[0])
"""


@pytest.mark.parametrize("python", _pythons())
def test_readme_install_commands_verbatim(python, tmp_path):
    work = tmp_path / "cupy-abn"
    work.mkdir()
    _copy_checkout(work)
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("PIP_", "PYTHON", "VIRTUAL_ENV", "CUPY_ABN_", "SETUPTOOLS_"))}
    venv = tmp_path / "venv"
    _run([python, "-m", "venv", str(venv)], env=env, timeout=300)
    env["PATH"] = f"{venv / 'bin'}{os.pathsep}{env.get('PATH', '')}"
    env["VIRTUAL_ENV"] = str(venv)
    py = str(venv / "bin" / "python")
    has_setuptools = subprocess.run([py, "-c", "import setuptools"], env=env).returncode == 0
    if has_setuptools:   # the newest, without pkg_resources, as on a current machine
        _run([py, "-m", "pip", "install", "-q", "--upgrade", "setuptools"], env=env,
             timeout=600)
    for command in readme_install_commands():
        _run(["bash", "-c", command], cwd=work, env=env, timeout=900)
    probe = tmp_path / "probe"
    probe.mkdir()
    out = _run([py, "-I", "-c", _TRAIN], cwd=probe, env=env, timeout=300)
    assert out.stdout.startswith("ok 7.8.1"), out.stdout
