"""Hypothesis settings of the property tests (tests/test_properties.py), and the count of
examples each property ran, printed at the end of the session by tests/conftest.py.

Profiles: ``ci`` (derandomized: the same examples on every run; a fixed example budget; no
deadline, since the first call of a kernel variant compiles it) is loaded under tox/CI
(``CI`` or ``CUPY_ABN_ONLY_GPU_SKIPS`` set) and ``dev`` (random, same budget) otherwise;
``thorough`` (derandomized, 10x the examples) in the full tier (``CUPY_ABN_TIER=full``);
``HYPOTHESIS_PROFILE`` picks one explicitly.
"""
from __future__ import annotations

import collections
import os

try:
    from hypothesis import HealthCheck, settings
except ImportError:   # hypothesis missing: the property tests skip (importorskip)
    settings = None

# Examples per property (NumPy; the kernels on PoCL take fewer: each new variant compiles).
BUDGET = {"numpy": 60, "kernels": 25}
EXAMPLES: "collections.Counter[str]" = collections.Counter()


def profile_name() -> str:
    if os.environ.get("HYPOTHESIS_PROFILE"):
        return os.environ["HYPOTHESIS_PROFILE"]
    if os.environ.get("CUPY_ABN_TIER") == "full":
        return "thorough"
    ci = os.environ.get("CI") or os.environ.get("CUPY_ABN_ONLY_GPU_SKIPS") == "1"
    return "ci" if ci else "dev"


def register() -> None:
    if settings is None:
        return
    common = dict(deadline=None, print_blob=True,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.filter_too_much])
    settings.register_profile("ci", derandomize=True, database=None, **common)
    settings.register_profile("dev", **common)
    settings.register_profile("thorough", derandomize=True, database=None, **common)
    settings.load_profile(profile_name())


def budget(kind: str) -> int:
    """max_examples of a property on backend ``kind``."""
    n = BUDGET[kind]
    return n * 10 if profile_name() == "thorough" else n


def summary_lines():
    if not EXAMPLES:
        return []
    lines = [f"hypothesis profile {profile_name()!r}: examples run per property"]
    lines += [f"  {name}: {n}" for name, n in sorted(EXAMPLES.items())]
    return lines
