"""Synchronized InPlace-ABN under MPI: 2 and 3 processes against one process on the whole batch.

Each test launches ``mpiexec -n R python tests/mpi_sync_worker.py --part P`` (the checks are
in the worker's docstring) with a timeout, so that a hang fails the test instead of stalling
the suite.  Skipped only where mpi4py or mpiexec are missing.
"""
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import pytest

pytest.importorskip("mpi4py")

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "mpi_sync_worker.py"
TIMEOUT_S = 120

pytestmark = pytest.mark.mpi


def _mpiexec():
    """mpiexec next to the interpreter (a venv with the mpich wheel), else on PATH."""
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def _importable(*modules):
    try:
        for m in modules:
            __import__(m)
    except Exception:  # noqa: BLE001 - missing, or broken by the NumPy version
        return False
    return True


def _run(ranks, part, comm=None):
    """Run the worker; ``comm`` defaults to a ChainerMN communicator where chainermn imports,
    else the bare mpi4py one (the array-level parts need no Chainer)."""
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    if comm is None:
        comm = "chainermn" if _importable("cupy_abn.chainer", "chainermn") else "mpi4py"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    cmd = [mpiexec, "-n", str(ranks), sys.executable, str(WORKER), "--part", part,
           "--comm", comm]
    # Own process group, so that a timeout ends mpiexec and every rank it started.
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{' '.join(cmd)} did not finish in {TIMEOUT_S} s (hang?)\n{out}{err}")
    assert proc.returncode == 0, (f"{' '.join(cmd)} exited with {proc.returncode}\n"
                                  f"{out}\n{err[-4000:]}")
    assert " ok " in out, out


@pytest.mark.parametrize("ranks", [2, 3])
def test_array_api_matches_one_process(ranks):
    _run(ranks, "array")


def test_array_api_with_bare_mpi4py_communicator():
    _run(3, "array", comm="mpi4py")


@pytest.mark.full
def test_fused_residual_matches_one_process():
    """sync_abn_forward(residual=): NumPy and the kernels on PoCL, 2 ranks."""
    pytest.importorskip("pyopencl")
    _run(2, "residual", comm="mpi4py")


@pytest.mark.parametrize("ranks", [2, 3])
def test_rejections_raise_everywhere_and_eval_does_not_communicate(ranks):
    _run(ranks, "errors")


@pytest.mark.parametrize("ranks", [2, 3])
def test_chainer_link_matches_one_process(ranks):
    if not _importable("cupy_abn.chainer.sync", "chainermn"):
        pytest.skip("cupy_abn.chainer.sync or chainermn not importable")
    _run(ranks, "chainer")


# 3 ranks on PoCL repeats 2 ranks' launches (each rank's kernels are a one-process call)
@pytest.mark.parametrize("ranks", [2, pytest.param(3, marks=pytest.mark.full)])
def test_kernel_backend_on_pocl_matches_one_process(ranks):
    """The kernel backend (GPU code, here on PoCL) merges the gathered (C, R) partials."""
    pytest.importorskip("pyopencl")
    _run(ranks, "opencl")


@pytest.mark.parametrize("ranks", [2, 3])
def test_ranks_that_disagree_all_raise(ranks):
    """C, x's dtype, gamma's dtype, mode, activation, activation_param, eps or decay differing
    on one rank: a ValueError naming it on every rank (the header exchanged before the
    statistics), no hang, and the next agreeing call is right."""
    _run(ranks, "mismatch", comm="mpi4py")


@pytest.mark.parametrize("ranks", [2, 3])
def test_empty_rank_every_step_and_global_one_value(ranks):
    """A rank without samples at every step, and a global batch of one value per channel,
    behave as one process (NumPy and the kernels on PoCL)."""
    pytest.importorskip("pyopencl")
    _run(ranks, "empty", comm="mpi4py")
