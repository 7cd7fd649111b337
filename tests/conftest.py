"""Only a missing GPU may skip a test where every optional part is installed.

The tox environments install every extra (PoCL, Oclgrind, NVRTC, Chainer, MPI) and set
``CUPY_ABN_ONLY_GPU_SKIPS=1``; there, a skip whose reason does not name a GPU or CUDA (an
``importorskip`` that failed, no OpenCL device, no mpiexec) is a broken install and is
reported as a failure instead of passing quietly.  Without the variable (a bare checkout, a
partial install) such skips stay skips.
"""
import os

import pytest

from tests import _hypothesis_profile

_hypothesis_profile.register()

_GPU_WORDS = ("GPU", "CUDA")


def _enforced() -> bool:
    return os.environ.get("CUPY_ABN_ONLY_GPU_SKIPS") == "1"


def _reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)


def _fail_non_gpu_skip(report) -> None:
    if _enforced() and report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not any(word in reason for word in _GPU_WORDS):
            report.outcome = "failed"
            report.longrepr = (f"skipped for a reason other than a missing GPU, where every "
                               f"optional part should be installed: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_non_gpu_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_non_gpu_skip(outcome.get_result())


def pytest_terminal_summary(terminalreporter):
    """The number of hypothesis examples each property test ran (tests/test_properties.py)."""
    for line in _hypothesis_profile.summary_lines():
        terminalreporter.write_line(line)
