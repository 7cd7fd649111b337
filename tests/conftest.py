"""Tiers, the environment split, and the skip guard.

**Tiers.** ``CUPY_ABN_TIER=full`` (``bash scripts/test.sh --full``) runs every test; by
default the tests marked ``full`` (the exhaustive NVRTC sweep and the fresh-compile report
tests, the whole PoCL case matrix, the 2^31-element case) are deselected, and the property
tests run their default hypothesis budget (the full tier loads the ``thorough`` profile: 10x).

**Environments.** Tests marked ``once`` give the same answer under any NumPy, CuPy or
Chainer version (the wheel, mypy, the static report, the NVRTC compiles); tox deselects them
in all but one environment (``CUPY_ABN_SKIP_ONCE=1``).

**Skips.** The tox environments install every extra (PoCL, Oclgrind, NVRTC, Chainer, MPI)
and set ``CUPY_ABN_ONLY_GPU_SKIPS=1``; there, the only skip allowed is a missing CUDA device,
whose reason starts with one of ``tests/_backends.GPU_SKIP_REASONS``.  Any other skip (an
``importorskip`` that failed, no NVRTC, no cuobjdump, no OpenCL device, no ``mpiexec``) is a
broken install and is reported as a failure.  Without the variable (a bare checkout, a
partial install) such skips stay skips.
"""
import os

import pytest

from tests import _hypothesis_profile
from tests._backends import GPU_SKIP_REASONS

_hypothesis_profile.register()


def tier() -> str:
    """``"full"`` or ``"default"`` (``CUPY_ABN_TIER``)."""
    return "full" if os.environ.get("CUPY_ABN_TIER") == "full" else "default"


def _enforced() -> bool:
    return os.environ.get("CUPY_ABN_ONLY_GPU_SKIPS") == "1"


def _reason(report) -> str:
    longrepr = report.longrepr
    return str(longrepr[-1]) if isinstance(longrepr, tuple) else str(longrepr)


def _is_gpu_skip(reason: str) -> bool:
    text = reason.split("Skipped: ", 1)[-1].strip()
    return text.startswith(GPU_SKIP_REASONS)


def _fail_non_gpu_skip(report) -> None:
    if _enforced() and report.skipped and not hasattr(report, "wasxfail"):
        reason = _reason(report)
        if not _is_gpu_skip(reason):
            report.outcome = "failed"
            report.longrepr = (f"skipped for a reason other than a missing CUDA device, where "
                               f"every optional part should be installed: {reason}")


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    outcome = yield
    _fail_non_gpu_skip(outcome.get_result())


@pytest.hookimpl(hookwrapper=True)
def pytest_make_collect_report(collector):
    outcome = yield
    _fail_non_gpu_skip(outcome.get_result())


def pytest_collection_modifyitems(config, items):
    skip_once = os.environ.get("CUPY_ABN_SKIP_ONCE") == "1"
    full = tier() == "full"
    keep, drop = [], []
    for item in items:
        if (not full and item.get_closest_marker("full")) or \
                (skip_once and item.get_closest_marker("once")):
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep


def pytest_report_header(config):
    return (f"cupy-abn tier: {tier()} (CUPY_ABN_TIER=full for the full tier); "
            f"environment-independent tests: "
            f"{'deselected here' if os.environ.get('CUPY_ABN_SKIP_ONCE') == '1' else 'run'}; "
            f"hypothesis profile {_hypothesis_profile.profile_name()!r}")


def pytest_terminal_summary(terminalreporter):
    """The number of hypothesis examples each property test ran (tests/test_properties.py)."""
    for line in _hypothesis_profile.summary_lines():
        terminalreporter.write_line(line)
