"""pytest plugin of the proof's test step (``-p benchmarks.gpu_proof.pytest_plugin``).

- **Order**: breadth first, so that a budget that ends early has still run every test
  function at least once: the first case of every function (in collection order), then the
  second of every function, and so on.
- **Per-test timeout** (``CUPY_ABN_PROOF_TEST_TIMEOUT`` seconds, SIGALRM): a test that hangs
  fails and the next one runs.
- **Deadline** (``CUPY_ABN_PROOF_DEADLINE``, epoch seconds): no test starts after it; the
  session ends normally (its junit XML and durations written), the rest counted "not run";
  a test still running at the deadline is reported skipped as "cut".
- **Record** (``CUPY_ABN_PROOF_RECORD``): one JSON line per test phase report as it comes,
  so that the counts survive even a session killed from outside (``testrecord.counts``).
"""
from __future__ import annotations

import json
import os
import signal
import time
from contextlib import contextmanager
from typing import Any, Dict, Iterator

import pytest

from .testrecord import CUT, ENV_DEADLINE, ENV_RECORD, ENV_TIMEOUT, order_items


class PerTestTimeout(BaseException):
    """Raised in a test past its time (a BaseException: ``except Exception`` in the test
    must not swallow it)."""


def _record(line: Dict[str, Any]) -> None:
    path = os.environ.get(ENV_RECORD)
    if path:
        with open(path, "a") as f:
            f.write(json.dumps(line) + "\n")


def _deadline() -> float:
    return float(os.environ.get(ENV_DEADLINE) or "inf")


@contextmanager
def _alarm(nodeid: str) -> Iterator[None]:
    """SIGALRM at the per-test timeout (the test fails) or at the deadline, whichever comes
    first (the test is reported skipped as cut: the budget ended, not the code)."""
    timeout = float(os.environ.get(ENV_TIMEOUT) or "inf")
    to_deadline = _deadline() - time.time()
    limit = min(timeout, to_deadline)
    if limit == float("inf") or not hasattr(signal, "SIGALRM"):
        yield
        return

    def fire(signum, frame):
        if to_deadline < timeout:
            pytest.skip(f"{CUT} ({limit:.0f} s after the test began)")
        raise PerTestTimeout(f"{nodeid}: over the proof's per-test timeout of {limit:.0f} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, max(limit, 0.01))
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@pytest.hookimpl(trylast=True)
def pytest_collection_modifyitems(session, config, items):
    items[:] = order_items(items)


def pytest_collection_finish(session):
    _record({"collected": len(session.items)})


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_setup(item):
    with _alarm(item.nodeid):
        yield


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_call(item):
    with _alarm(item.nodeid):
        yield


def pytest_collectreport(report):
    if report.failed:
        _record({"collect_error": report.nodeid})
    elif report.skipped and isinstance(report.longrepr, tuple):     # a whole module
        _record({"collect_skip": report.nodeid, "reason": str(report.longrepr[2])[:200]})


def pytest_runtest_logreport(report):
    line = {"test": report.nodeid, "when": report.when, "outcome": report.outcome,
            "seconds": round(report.duration, 3)}
    if report.skipped and isinstance(report.longrepr, tuple):
        line["reason"] = str(report.longrepr[2])[:200]
    _record(line)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    yield
    if time.time() >= _deadline():
        # pytest stops before the next test and still writes its reports
        item.session.shouldstop = "the test step's share of the budget is spent"
