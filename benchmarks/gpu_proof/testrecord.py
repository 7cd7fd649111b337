"""The test step's settings and record, without pytest (the proof reads them where pytest
is not installed yet)."""
from __future__ import annotations

from collections import OrderedDict
from typing import Any, Dict, List

ENV_DEADLINE = "CUPY_ABN_PROOF_DEADLINE"
ENV_TIMEOUT = "CUPY_ABN_PROOF_TEST_TIMEOUT"
ENV_RECORD = "CUPY_ABN_PROOF_RECORD"
CUT = "cut by the end of the test step's budget"


def order_items(items: List[Any]) -> List[Any]:
    """Breadth first over test functions: every function's first case, then every
    function's second, ...; the order within a function and between functions kept."""
    groups: "OrderedDict[str, List[Any]]" = OrderedDict()
    for item in items:
        groups.setdefault(item.nodeid.split("[", 1)[0], []).append(item)
    out: List[Any] = []
    depth = max((len(g) for g in groups.values()), default=0)
    for i in range(depth):
        out.extend(g[i] for g in groups.values() if i < len(g))
    return out


def counts(lines: List[Dict[str, Any]]) -> Dict[str, int]:
    """Tests collected, passed, failed, skipped, errors (setup or teardown failed), cut (by
    the step's deadline), not run, test files that failed to collect and test files skipped
    whole, from the record's lines."""
    collected = next((ln["collected"] for ln in lines if "collected" in ln), 0)
    collect_errors = sum("collect_error" in ln for ln in lines)
    modules_skipped = sum("collect_skip" in ln for ln in lines)
    outcome: Dict[str, str] = {}
    for ln in lines:
        if "test" not in ln:
            continue
        node, when, out = ln["test"], ln["when"], ln["outcome"]
        if out == "failed" and when != "call":
            outcome[node] = "errors"
        elif outcome.get(node) != "errors" and (when == "call" or out == "skipped"):
            cut = out == "skipped" and CUT in ln.get("reason", "")
            outcome[node] = "cut" if cut else out
    got = {k: 0 for k in ("passed", "failed", "skipped", "errors", "cut")}
    for out in outcome.values():
        got[out] = got.get(out, 0) + 1
    return {"collected": collected, **got, "not_run": max(collected - len(outcome), 0),
            "collect_errors": collect_errors, "modules_skipped": modules_skipped}
