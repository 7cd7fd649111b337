"""Command line of the static report: ``python -m benchmarks.static --help``.

    python -m benchmarks.static            # regenerate benchmarks/results/static_report.*
    python -m benchmarks.static --check    # the committed report still holds (about a minute)
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Optional

ROOT = Path(__file__).resolve().parents[2]
DEFAULT_BEFORE = "f788f24"
# This report's own files, laid over an older tree so that it reads that tree's kernels and
# launch logic with today's tools.
TOOL_FILES = ("cupy_abn/_nvrtc.py", "cupy_abn/_occupancy.py", "benchmarks/__init__.py",
              "benchmarks/static")


def _bar_factory(position: int = 0):
    try:
        from tqdm import tqdm
    except ImportError:
        return None

    def make(desc, total):
        # not a terminal (CI logs): a line every 10 s rather than every update
        return tqdm(total=total, desc=desc, position=position, leave=True, file=sys.stderr,
                    dynamic_ncols=True, mininterval=0.1 if sys.stderr.isatty() else 10.0)
    return make


def collect_here(out: Optional[str], modes) -> dict:
    from .collect import collect
    rep = collect(str(ROOT), _bar_factory(), modes=modes)
    if out:
        Path(out).write_text(json.dumps(rep))
    return rep


def collect_revision(rev: str, modes) -> dict:
    """The report of git revision ``rev``, in a temporary worktree, in a child process."""
    tmp = Path(tempfile.mkdtemp(prefix="abn-static-"))
    tree = tmp / "tree"
    subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", "--force",
                    str(tree), rev], check=True, capture_output=True)
    try:
        for rel in TOOL_FILES:
            src, dst = ROOT / rel, tree / rel
            if src.is_dir():
                shutil.rmtree(dst, ignore_errors=True)
                shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                dst.parent.mkdir(parents=True, exist_ok=True)
                shutil.copy2(src, dst)
        # cupy_abn.kernels is the package dir kernels/ (setup.cfg): without this link an
        # editable install of this checkout would serve today's kernel files to the old tree
        link = tree / "cupy_abn" / "kernels"
        if not link.exists():
            link.symlink_to(tree / "kernels", target_is_directory=True)
        out = tmp / "report.json"
        env = dict(os.environ, PYTHONPATH=str(tree), PYTHONDONTWRITEBYTECODE="1")
        print(f"[before] {rev} in {tree}", file=sys.stderr)
        subprocess.run([sys.executable, "-m", "benchmarks.static", "--worker", str(out),
                        "--modes", *modes], cwd=tree, env=env, check=True)
        rep = json.loads(out.read_text())
        rep["tree"]["revision"] = rev
        return rep
    finally:
        subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(tree)],
                       capture_output=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _before(args, modes):
    """(rows by pass key, header) of the older tree: collected live (``--before REV``) or
    carried over from a report file (``--before-from``)."""
    from . import compact, summary
    if args.before_from:
        doc = json.loads(Path(args.before_from).read_text())
        return compact.before_rows(doc), compact.before_header(doc)
    if args.before.lower() == "none":
        return {}, None
    tree = collect_revision(args.before, modes)
    t = tree["tree"]
    return summary.before_of(tree), {"revision": t.get("revision", t["commit"]),
                                     "commit": t["commit"], "subject": t["subject"]}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.static", description=__doc__)
    ap.add_argument("--check", action="store_true",
                    help="check the committed report against this tree (its inputs' hash, "
                         "the passes, the facts, a recompiled sample) instead of writing one")
    ap.add_argument("--report", default=str(ROOT / "benchmarks" / "results" /
                                            "static_report.json"),
                    help="the report --check reads")
    ap.add_argument("--before", default=DEFAULT_BEFORE,
                    help=f"git revision to compare with (default {DEFAULT_BEFORE}); "
                         f"'none' to skip")
    ap.add_argument("--before-from", metavar="JSON",
                    help="take the before numbers from this report instead of compiling "
                         "--before (the older tree's numbers do not change with this tree)")
    ap.add_argument("--after", default=None,
                    help="git revision to report instead of this working tree")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                    help="directory of static_report.json and static_report.png")
    ap.add_argument("--modes", nargs="+", default=["inplace", "inplace_v1", "standard"])
    ap.add_argument("--worker", metavar="JSON", help=argparse.SUPPRESS)
    args = ap.parse_args(argv)

    if args.check:
        from .check import run
        return run(Path(args.report), _bar_factory())
    from . import compact, summary
    from .sass import tools_missing
    missing = tools_missing()
    if missing:
        print(f"missing CUDA tools: {missing} (pip install .[nvrtc])", file=sys.stderr)
        return 1
    if args.worker:
        collect_here(args.worker, args.modes)
        return 0
    t0 = time.perf_counter()
    before_rows, before_header = _before(args, args.modes)
    after = (collect_revision(args.after, args.modes) if args.after
             else collect_here(None, args.modes))
    head = summary.header(time.perf_counter() - t0, after["tree"], after["nvrtc"],
                          after["inputs"], before_header, args.modes)
    doc = compact.encode(after["variants"], summary.table(after["passes"], before_rows), head)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    compact.write(doc, out / "static_report.json")
    summary.plot(doc, out / "static_report.png")
    print(summary.markdown(doc))
    size = (out / "static_report.json").stat().st_size
    print(f"wrote {out / 'static_report.json'} ({size / 1e6:.2f} MB) and "
          f"{out / 'static_report.png'} ({time.perf_counter() - t0:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
