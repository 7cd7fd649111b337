"""Child processes of the proof: their environment, a time limit, a log, and progress."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional, Sequence

from . import ROOT

# Thread pools of the host references (NumPy's BLAS, OpenMP, Numba): every core.
THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
               "NUMEXPR_NUM_THREADS", "NUMBA_NUM_THREADS", "VECLIB_MAXIMUM_THREADS",
               "BLIS_NUM_THREADS")


def child_env(site: Optional[Path] = None, extra: Optional[Dict[str, str]] = None
              ) -> Dict[str, str]:
    """The environment of every step.

    Installed wheels (``site``) and the checkout come first on ``sys.path``; the host
    references use every core; the tox-only skip rule is off (only GPU tests run here, and
    a missing optional part must be a skip, not a failure).
    """
    env = dict(os.environ)
    env.pop("CUPY_ABN_ONLY_GPU_SKIPS", None)
    paths = ([str(site)] if site else []) + [str(ROOT)] + [
        p for p in env.get("PYTHONPATH", "").split(os.pathsep) if p]
    cores = str(os.cpu_count() or 1)
    env.update({v: cores for v in THREAD_VARS})
    env.update(PYTHONPATH=os.pathsep.join(dict.fromkeys(paths)), PYTHONUNBUFFERED="1",
               MPLBACKEND="Agg", PYTHONDONTWRITEBYTECODE="1")
    env.update(extra or {})
    return env


class Progress:
    """Seconds spent against a step's limit: a tqdm bar on a terminal, else a line every
    ``every`` seconds (tqdm is optional; logs stay readable without carriage returns)."""

    def __init__(self, desc: str, total_s: float, every: float = 30.0):
        self.desc, self.total_s, self.every = desc, total_s, every
        self._bar, self._last, self._start = None, 0.0, time.monotonic()
        if sys.stderr.isatty():
            try:
                from tqdm.auto import tqdm
                self._bar = tqdm(total=round(total_s), desc=desc, unit="s", leave=False,
                                 bar_format="{desc}: {bar} {n:.0f}/{total:.0f} s {postfix}")
            except ImportError:
                pass

    def update(self, note: str = "") -> None:
        """Show the seconds spent so far and ``note`` (e.g. tests done)."""
        spent = time.monotonic() - self._start
        if self._bar is not None:
            self._bar.n = min(round(spent), self._bar.total)
            self._bar.set_postfix_str(note, refresh=False)
            self._bar.refresh()
        elif spent - self._last >= self.every:
            self._last = spent
            print(f"  {self.desc}: {spent:.0f}/{self.total_s:.0f} s {note}", flush=True)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


def _kill(proc: subprocess.Popen) -> None:
    """The child and everything it started (its own session)."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def run_logged(argv: Sequence[Any], log: Path, timeout: float, env: Dict[str, str],
               desc: str = "", note: Optional[Callable[[], str]] = None,
               cwd: Path = ROOT) -> Dict[str, Any]:
    """Run ``argv`` with its output in ``log``, killed at ``timeout`` seconds.

    Parameters
    ----------
    argv : sequence
        The command.
    log : Path
        Receives the command line, then stdout and stderr.
    timeout : float
        Seconds; the child's process group is killed then.
    env : dict
        Its environment (see :func:`child_env`).
    desc : str
        Label of the progress display (none when empty).
    note : callable, optional
        Returns a short progress note (e.g. tests done), polled every second.

    Returns
    -------
    dict
        ``status`` ("ok", "failed" or "timeout"), ``rc``, ``seconds``, ``log`` (its name)
        and ``tail`` (its last lines).
    """
    start = time.monotonic()
    log.parent.mkdir(parents=True, exist_ok=True)
    progress = Progress(desc, timeout) if desc else None
    with open(log, "w") as out:
        out.write("$ " + " ".join(map(str, argv)) + "\n")
        out.flush()
        proc = subprocess.Popen([str(a) for a in argv], stdout=out, stderr=subprocess.STDOUT,
                                env=env, cwd=cwd, start_new_session=True)
        status = None
        try:
            while status is None:
                try:
                    rc = proc.wait(timeout=1.0)
                    status = "ok" if rc == 0 else "failed"
                except subprocess.TimeoutExpired:
                    if time.monotonic() - start >= timeout:
                        _kill(proc)
                        rc, status = proc.returncode, "timeout"
                    elif progress:
                        progress.update(note() if note else "")
        finally:
            if proc.poll() is None:          # interrupted: leave no child behind
                _kill(proc)
            if progress:
                progress.close()
    text = log.read_text(errors="replace")
    return {"status": status, "rc": rc, "seconds": round(time.monotonic() - start, 1),
            "log": log.name, "tail": "\n".join(text.splitlines()[-12:])}
