"""scripts/demo.sh installs the package once, and again only when the packaging changes.

Runs the script in a copy of the repository's layout whose ``.venv/bin/python`` is a stub that
records its arguments, so nothing is installed and no demo runs."""
import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

STUB = """#!/bin/sh
case "$2" in *hashlib*) cksum; exit 0;; esac   # the stamp's hash: a checksum of stdin
echo "$*" >> "$DEMO_STUB_LOG"
exit 0
"""


@pytest.fixture
def tree(tmp_path):
    if shutil.which("bash") is None:
        pytest.skip("no bash")
    (tmp_path / "scripts").mkdir()
    shutil.copy2(ROOT / "scripts" / "demo.sh", tmp_path / "scripts" / "demo.sh")
    for name in ("setup.cfg", "pyproject.toml"):
        (tmp_path / name).write_text(f"# {name}\n")
    (tmp_path / ".ci").mkdir()
    (tmp_path / ".ci" / "build-constraints.txt").write_text("setuptools<81\n")
    python = tmp_path / ".venv" / "bin" / "python"
    python.parent.mkdir(parents=True)
    python.write_text(STUB)
    python.chmod(python.stat().st_mode | stat.S_IEXEC)
    return tmp_path


def _run(tree, *args):
    log = tree / "calls.log"
    log.write_text("")
    env = dict(os.environ, DEMO_STUB_LOG=str(log), PATH="/usr/bin:/bin")
    subprocess.run(["bash", str(tree / "scripts" / "demo.sh"), *args], check=True, env=env,
                   cwd=tree, timeout=60)
    calls = log.read_text().splitlines()
    installs = [c for c in calls if c.startswith("-m pip install")]
    assert calls[-1].startswith("-m cupy_abn.demo --out demo_out")
    return installs, calls


def test_demo_script_installs_once_and_again_when_packaging_changes(tree):
    installs, _ = _run(tree)
    assert len(installs) == 1 and "-e .[chainer,progress" in installs[0]
    installs, calls = _run(tree, "--steps", "6")
    assert installs == []                                   # second call: no pip at all
    assert calls[-1] == "-m cupy_abn.demo --out demo_out --steps 6"
    (tree / "setup.cfg").write_text("# setup.cfg, new extras\n")
    installs, _ = _run(tree)
    assert len(installs) == 1                               # packaging changed
    installs, _ = _run(tree)
    assert installs == []
    (tree / ".venv" / ".cupy-abn-demo-install").unlink()   # stamp gone: install again
    installs, _ = _run(tree)
    assert len(installs) == 1
