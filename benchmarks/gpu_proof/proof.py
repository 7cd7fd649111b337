"""One run of the proof: the steps in order within the budget, then the output folder.

The output folder receives at most ``MAX_FILES`` files, none in subfolders:
``gpu_proof.json`` (the summary: device, per-step status, seconds, share, skip reasons,
test counts; rewritten after every step, so a run stopped from outside still says how far
it got), ``gpu_proof.log`` (the console), ``gpu_proof.tar.gz`` (every result, log and
report of the steps) and the figures.
"""
from __future__ import annotations

import json
import shutil
import sys
import tarfile
import time
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional

from . import WHEELS, WORK, steps, wheels
from .child import child_env, run_logged
from .plan import STEPS, Budget, Step, skip_reason

SUMMARY, LOG, ARCHIVE = "gpu_proof.json", "gpu_proof.log", "gpu_proof.tar.gz"
MAX_FILES = 8


class Proof:
    """The state of one run.

    Parameters
    ----------
    out : Path
        The output folder (created; only this run's file names in it are replaced).
    budget_s : float
        Wall time of the whole run, installs included.
    dry_run : bool
        Every step's CPU path at toy sizes (no GPU needed).
    work : Path
        Installed wheels, the inplace_abn build and the steps' results.
    wheel_dir : Path
        Prepared wheels (``prepare``), installed from offline where needed.
    spec : str, optional
        ``--device-spec`` of the model (see ``benchmarks/fit_model.py``).
    clock : callable
        Monotonic seconds (a fake one in the tests).
    """

    def __init__(self, out: Path, budget_s: float, dry_run: bool = False, work: Path = WORK,
                 wheel_dir: Path = WHEELS, spec: Optional[str] = None,
                 clock: Callable[[], float] = time.monotonic):
        self.out, self.dry_run, self.wheel_dir, self.spec_text = out, dry_run, wheel_dir, spec
        self.results, self.site, self.built = work / "results", work / "site", work / "built"
        self.budget = Budget(budget_s, clock=clock)
        self.gpu = False
        self.build: Optional[wheels.Build] = None
        self.inplace_abn_timed = False
        # a dry run is the CPU's path even where a GPU is there
        self.hide = {"CUDA_VISIBLE_DEVICES": ""} if dry_run else {}
        self.summary: Dict[str, Any] = {
            "command": "python -m benchmarks.gpu_proof " + " ".join(sys.argv[1:]),
            "dry_run": dry_run, "budget_s": budget_s,
            "started": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "device": {"name": "unknown", "slug": "unknown"}, "steps": {}}

    # ------------------------------------------------------------ console and summary
    def say(self, msg: str) -> None:
        """Print ``msg`` with the time spent, and keep it in the log."""
        line = f"[gpu_proof {self.budget.elapsed():4.0f}/{self.budget.total_s:.0f} s] {msg}"
        print(line, flush=True)
        with open(self.out / LOG, "a") as f:
            f.write(line + "\n")

    def save(self) -> None:
        (self.out / SUMMARY).write_text(json.dumps(self.summary, indent=1) + "\n")

    # ------------------------------------------------------------ the run
    def run(self) -> Dict[str, Any]:
        """Every step in order (each skipped with its reason when it cannot run), then the
        archive; returns the summary."""
        self._fresh()
        self.say(f"{'dry run (CPU, toy sizes)' if self.dry_run else 'GPU proof'}, "
                 f"budget {self.budget.total_s:.0f} s, into {self.out}")
        try:
            for s in STEPS:
                self._step(s)
        finally:
            if self.build is not None:
                self.build.stop()
                self.summary["inplace_abn_build"] = self._build_outcome()
            self.finish()
        return self.summary

    def _fresh(self) -> None:
        """An empty results folder; an earlier run's files removed from the output folder
        (``check_out`` allows no other)."""
        shutil.rmtree(self.results, ignore_errors=True)
        self.results.mkdir(parents=True)
        self.out.mkdir(parents=True, exist_ok=True)
        for p in self.out.iterdir():
            p.unlink()

    def _step(self, s: Step) -> None:
        t0 = self.budget.clock()
        limit = self.budget.left(s.name)
        reason = skip_reason(s, self.budget, self.gpu, self.dry_run)
        if reason:
            res: Dict[str, Any] = {"status": "skipped", "reason": reason}
        else:
            self.say(f"{s.name}: {s.what} (up to {limit:.0f} s)")
            try:
                res = getattr(self, f"_{s.name}")(limit)
            except Exception as e:          # recorded; the next step runs
                res = {"status": "failed", "reason": f"{type(e).__name__}: {e}"[:500]}
            res["limit_s"] = round(limit, 1)
        res.update(seconds=round(self.budget.clock() - t0, 1),
                   share_s=round(self.budget.share_s(s.name), 1))
        if res["status"] not in ("failed", "timeout"):
            res.pop("tail", None)
        self.summary["steps"][s.name] = res
        self._label()
        self.save()
        self.say(f"{s.name}: {res['status']} in {res['seconds']:.0f} s"
                 + (f" ({res['reason']})" if res.get("reason") else ""))

    def _env(self, extra: Optional[Dict[str, str]] = None) -> Dict[str, str]:
        return child_env(self.site, {**self.hide, **(extra or {})})

    def _label(self) -> None:
        """Name the device in every result JSON (the fit reads its architecture there)."""
        for path in self.results.glob("*.json"):
            try:
                data = json.loads(path.read_text())
            except ValueError:
                continue
            if isinstance(data, dict) and data.get("gpu_proof_device") != self.device:
                data["gpu_proof_device"] = self.device
                path.write_text(json.dumps(data, indent=1) + "\n")

    @property
    def device(self) -> Dict[str, Any]:
        return self.summary["device"]

    # ------------------------------------------------------------ the steps
    def _environment(self, limit: float) -> Dict[str, Any]:
        """inplace_abn's build started in the background, missing wheels installed, then
        the device and the versions."""
        build = self._start_build()
        installs = self._install()
        if installs["missing"]:
            self.say(f"  not installed and not prepared: {', '.join(installs['missing'])} "
                     "(run `python -m benchmarks.gpu_proof prepare` where there is network)")
        smi = steps.nvidia_smi()
        versions = steps.probe_versions(self.site, self.budget.left("environment"), self.hide)
        device = steps.describe_device(smi, versions, self.dry_run)
        self.gpu = device["gpu"]
        self.summary["device"] = device
        spec = steps.device_spec(device, self.spec_text, self.dry_run)
        self.summary["device_spec"] = spec
        if spec:
            (self.results / "device_spec.json").write_text(json.dumps(spec, indent=1) + "\n")
        (self.results / "environment.json").write_text(json.dumps(
            {"device": device, "versions": versions, "installs": installs}, indent=1) + "\n")
        self.say(f"  device: {device['name']}"
                 + ("" if self.gpu or self.dry_run else " (no CUDA device: the GPU steps "
                    "will be skipped)") + (f"; model device: {spec['name']}" if spec else ""))
        return {"status": "ok", "device": device["name"], "installed": installs["installed"],
                "missing": installs["missing"], "inplace_abn_build": build,
                **({"reason": installs["error"]} if "error" in installs else {})}

    def _install(self) -> Dict[str, Any]:
        """The prepared wheels the steps lack; a failure is recorded, not fatal (the device
        is still probed, and the steps show what is missing)."""
        try:
            got = wheels.install_missing(self.wheel_dir, self.site)
        except Exception as e:
            got = {"installed": [], "present": [], "missing": [],
                   "error": f"installing the prepared wheels: {type(e).__name__}: {e}"[:500]}
        self.summary["installs"] = got
        return got

    def _start_build(self) -> str:
        """A built wheel of an earlier run installed, else the build started from the
        sdist, else why not."""
        if wheels.importable(["inplace_abn"], self.site)["inplace_abn"]:
            self.inplace_abn_timed = True
            return "already installed"
        prebuilt = sorted((self.wheel_dir / "built").glob("inplace_abn-*.whl"))
        if prebuilt:
            wheels.install_wheels(prebuilt[-1:], self.site)
            self.inplace_abn_timed = True
            return f"installed {prebuilt[-1].name}, built by an earlier run"
        sdist = self.wheel_dir / wheels.INPLACE_ABN[0]
        if not sdist.exists():
            return f"not built: no {sdist.name} in {self.wheel_dir} (run prepare)"
        # it may run until the step that would time it begins
        until = self.budget.end("fit") - self.budget.clock()
        self.build = wheels.Build(sdist, self.built, self.results / "build_inplace_abn.json",
                                  until, self.hide)
        return "building in the background"

    def _build_outcome(self) -> Dict[str, Any]:
        res = self.build.outcome() if self.build else {"status": "not started"}
        return {k: v for k, v in res.items() if k != "tail"}

    def _take_build(self) -> Optional[str]:
        """Install the background build's wheel if it has finished; its name, or None."""
        if self.build is None or not self.build.done():
            return None
        res = self.build.outcome()
        wheel = Path(res["wheel"]) if res.get("wheel") else None
        if wheel is None or not wheel.exists():
            return None
        wheels.install_wheels([wheel], self.site)
        try:                                 # kept for the next run on this machine
            (self.wheel_dir / "built").mkdir(parents=True, exist_ok=True)
            shutil.copy2(wheel, self.wheel_dir / "built" / wheel.name)
        except OSError:
            pass
        return wheel.name

    def _tests(self, limit: float) -> Dict[str, Any]:
        # pytest stops starting tests 10 s before the step's end, to write its reports
        deadline = time.time() + max(limit - 10.0, limit / 2)
        res = run_logged(steps.tests_argv(self.results), self.results / "tests.log", limit,
                         self._env(steps.tests_vars(self.results, deadline)), desc="tests",
                         note=lambda: steps.tests_done(self.results))
        got = steps.tests_counts(self.results)
        self.summary["tests"] = got
        if res["status"] == "timeout":
            status = "timeout"
        elif got["failed"] or got["errors"] or got["collect_errors"]:
            status = "failed"
            res["reason"] = (f"{got['failed']} failed, {got['errors']} errors, "
                             f"{got['collect_errors']} test files not collected")
        elif res["rc"] not in (0, 2) or not got["collected"]:
            status, res["reason"] = "failed", f"pytest exited {res['rc']}"
        elif got["not_run"] or got["cut"]:
            status = "partial"
            res["reason"] = f"{got['not_run'] + got['cut']} tests not run in the step's time"
        else:
            status = "ok"
        return dict(res, status=status, counts=got,
                    modules_skipped=steps.skipped_modules(self.results))

    def _kernels(self, limit: float) -> Dict[str, Any]:
        taken = self._take_build()
        self.inplace_abn_timed |= taken is not None
        res = run_logged(steps.kernels_argv(self.results, self.gpu, max(limit - 15, limit / 2)),
                         self.results / "kernels.log", limit, self._env(), desc="kernels")
        got = steps.kernels_summary(self.results / f"kernels_{self._where()}.json")
        if res["status"] == "ok" and got.get("cases_not_run"):
            res.update(status="partial",
                       reason=f"{got['cases_not_run']} cases not run in the step's time")
        return dict(res, **got)

    def _memory(self, limit: float) -> Dict[str, Any]:
        res = run_logged(steps.memory_argv(self.results, self.gpu),
                         self.results / "memory.log", limit, self._env(), desc="memory")
        return dict(res, **steps.memory_summary(self.results / f"memory_{self._where()}.json"))

    def _fit(self, limit: float) -> Dict[str, Any]:
        measured = self.results / "kernels_gpu.json"
        if not self.dry_run and not measured.exists():
            why = self.summary["steps"].get("kernels", {}).get("status", "not run")
            return {"status": "skipped", "reason": f"no kernel times (kernels: {why})"}
        name = "static_fit_gpu.json" if self.gpu else "static_fit_synthetic.json"
        res = run_logged(steps.fit_argv(self.results, self.gpu), self.results / "fit.log",
                         limit, self._env(), desc="fit")
        return dict(res, **steps.fit_summary(self.results / name))

    def _inplace_abn(self, limit: float) -> Dict[str, Any]:
        if self.inplace_abn_timed:
            return {"status": "skipped", "reason": "timed in the kernels step"}
        if self.build is None:
            return {"status": "skipped",
                    "reason": self.summary["steps"]["environment"].get("inplace_abn_build",
                                                                      "no build")}
        if not self.build.done():
            self.build.stop()
            return {"status": "skipped", "reason": "its build had not finished in time"}
        taken = self._take_build()
        if taken is None:
            out = self.build.outcome()
            return {"status": "skipped", "reason": "its build gave no wheel: "
                    + str(out.get("reason") or out.get("status"))}
        stem = f"kernels_{self._where()}_inplace_abn"
        res = run_logged(steps.kernels_argv(self.results, self.gpu, max(limit - 10, limit / 2),
                                            impls="inplace_abn", stem=stem),
                         self.results / "inplace_abn.log", limit, self._env(),
                         desc="inplace_abn")
        return dict(res, wheel=taken, **steps.kernels_summary(self.results / f"{stem}.json"))

    def _where(self) -> str:
        return "gpu" if self.gpu else "cpu"

    # ------------------------------------------------------------ the output folder
    def finish(self) -> None:
        """Summary, log and archive; the figures next to them (at most ``MAX_FILES``)."""
        s = self.summary
        s["finished"] = time.strftime("%Y-%m-%d %H:%M:%S %Z")
        s["seconds"] = round(self.budget.elapsed(), 1)
        bad = [n for n, r in s["steps"].items() if r["status"] in ("failed", "timeout")]
        s["ok"] = not bad and (self.gpu or self.dry_run)
        if not (self.gpu or self.dry_run):
            s["why_not_ok"] = "no CUDA device: the GPU steps were skipped"
        elif bad:
            s["why_not_ok"] = f"steps failed: {', '.join(bad)}"
        figures = sorted(self.results.glob("*.png"))[:MAX_FILES - 3]
        s["files"] = [SUMMARY, LOG, ARCHIVE] + [p.name for p in figures]
        self.say(self._table())
        self.say(f"{'all ok' if s['ok'] else 'NOT ok: ' + s['why_not_ok']}; "
                 f"{len(s['files'])} files in {self.out}")
        self.save()
        shutil.copy2(self.out / SUMMARY, self.results / SUMMARY)
        shutil.copy2(self.out / LOG, self.results / LOG)
        with tarfile.open(self.out / ARCHIVE, "w:gz") as tar:
            for p in sorted(self.results.iterdir()):
                if p.is_file():
                    tar.add(p, arcname=p.name)
        for p in figures:
            shutil.copy2(p, self.out / p.name)

    def _table(self) -> str:
        lines = ["step          status    seconds  share  note"]
        for name, r in self.summary["steps"].items():
            note = r.get("reason") or ""
            if name == "tests" and "counts" in r:
                c = r["counts"]
                note = (f"{c['passed']} passed, {c['failed']} failed, {c['skipped']} skipped, "
                        f"{c['errors']} errors, {c['cut'] + c['not_run']} not run "
                        f"of {c['collected']}; {c['modules_skipped']} files skipped whole"
                        ) + (f"; {note}" if note else "")
            lines.append(f"{name:<13} {r['status']:<9} {r['seconds']:7.1f} {r['share_s']:6.0f}"
                         f"  {note}")
        return "\n".join(lines)


def ours(path: Path) -> bool:
    """A file a run writes into its output folder."""
    return path.is_file() and (path.name.startswith("gpu_proof.") or (
        path.suffix == ".png" and path.name.startswith(("kernels_", "memory_"))))


def check_out(out: Path) -> None:
    """The output folder must be new, empty or an earlier run's: its files are replaced.

    Raises
    ------
    SystemExit
        It holds anything else.
    """
    others = [p.name for p in out.iterdir() if not ours(p)] if out.is_dir() else []
    if others:
        raise SystemExit(f"--out {out}: holds {', '.join(sorted(others)[:5])}: give a new "
                         "or empty folder (or an earlier run's)")


def main_run(out: Path, budget_s: float, dry_run: bool, spec: Optional[str] = None,
             work: Path = WORK, wheel_dir: Path = WHEELS) -> int:
    """Run the proof; 0 when every step that ran passed (and a GPU was there, or the run
    was a dry run)."""
    check_out(out)
    summary = Proof(out, budget_s, dry_run, work, wheel_dir, spec).run()
    return 0 if summary["ok"] else 1


__all__: List[str] = ["Proof", "main_run", "check_out", "MAX_FILES", "SUMMARY", "LOG",
                       "ARCHIVE"]
