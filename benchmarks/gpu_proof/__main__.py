"""python -m benchmarks.gpu_proof --out DIR [--budget-s S] [--dry-run] [--device-spec SPEC]
python -m benchmarks.gpu_proof prepare [--dest DIR]
python -m benchmarks.gpu_proof unpack DIR

The first runs the proof (see ``benchmarks/gpu_proof/__init__.py``) and writes its summary,
log, archive and figures into DIR; ``prepare`` (with network) writes the wheels an offline
machine installs from; ``unpack`` turns DIR, copied back, into
``benchmarks/results/gpu_proof_<device>/``.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import List, Optional

from . import WHEELS, WORK
from .plan import DEFAULT_BUDGET_S


def _parse(argv: Optional[List[str]]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks.gpu_proof", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", help="output folder (at most 8 files, no subfolders)")
    p.add_argument("--budget-s", type=float, default=DEFAULT_BUDGET_S,
                   help="wall time of the whole run, installs included (default %(default)s)")
    p.add_argument("--dry-run", action="store_true",
                   help="every step's CPU path at toy sizes: no GPU needed")
    p.add_argument("--device-spec", help="the model's device (see benchmarks/fit_model.py); "
                                         "default: from the name CuPy reports")
    p.add_argument("--work", default=str(WORK), help="installs and step results")
    p.add_argument("--wheels", default=str(WHEELS), help="prepared wheels (offline installs)")
    sub = p.add_subparsers(dest="cmd")
    pr = sub.add_parser("prepare", help="with network: the wheels for an offline machine")
    pr.add_argument("--dest", default=str(WHEELS))
    u = sub.add_parser("unpack", help="a returned output folder -> benchmarks/results/")
    u.add_argument("src")
    b = sub.add_parser("build-inplace-abn", help="(internal) the background build")
    b.add_argument("--sdist", required=True)
    b.add_argument("--dest", required=True)
    b.add_argument("--timeout", type=float, required=True)
    b.add_argument("--result", required=True)
    args = p.parse_args(argv)
    if args.cmd is None and not args.out:
        p.error("--out DIR is required (or a subcommand: prepare, unpack)")
    return args


def _build(args: argparse.Namespace) -> int:
    """The background build of inplace_abn; its outcome always written as JSON."""
    from .wheels import build_inplace_abn
    result = Path(args.result)
    try:
        res = build_inplace_abn(Path(args.sdist), Path(args.dest), args.timeout,
                                result.with_suffix(".log"))
    except Exception as e:
        res = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500]}
    result.write_text(json.dumps(res, indent=1) + "\n")
    return 0 if res["status"] in ("ok", "skipped") else 1


def main(argv: Optional[List[str]] = None) -> int:
    args = _parse(argv)
    if args.cmd == "prepare":
        from .wheels import prepare
        manifest = prepare(Path(args.dest))
        print(f"{args.dest}: {manifest['bytes'] / 2 ** 20:.1f} MiB")
        for name in manifest["files"]:
            print(f"  {name}")
        return 0
    if args.cmd == "unpack":
        from .unpack import unpack
        unpack(Path(args.src))
        return 0
    if args.cmd == "build-inplace-abn":
        return _build(args)
    from .proof import main_run
    return main_run(Path(args.out), args.budget_s, args.dry_run, args.device_spec,
                    Path(args.work), Path(args.wheels))


if __name__ == "__main__":
    sys.exit(main())
