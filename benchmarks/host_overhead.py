"""Host time per API call (µs of Python), before and after, against a stub CuPy.

    python benchmarks/host_overhead.py                  # before = f788f24, after = this tree
    python benchmarks/host_overhead.py --before HEAD~3 --repeat 200

What runs for real: ``cupy_abn.abn_forward`` / ``abn_backward``, the validation, the kernel
backend (plans, variants, argument packing), ``CupyRuntime`` (its caches and locks, device
handling) and ``_kernel_source``.  What is stubbed: the ``cupy`` module itself.  A fake
``cupy`` is put into ``sys.modules`` before ``cupy_abn`` is imported, so no GPU, driver or
NVRTC is needed:

    cupy.empty/zeros/empty_like/ascontiguousarray   a small array object (shape, dtype, flags,
                                                    device, data.ptr) of a class whose
                                                    ``__module__`` is "cupy._stub", so that
                                                    ``array_family`` says "cupy"
    cupy.RawModule / get_function / RawKernel       no compilation; a kernel records launches
    cupy.cuda.Device                                a context manager that counts its entries
    cupy.cuda.driver.occupancy...                   the H100 thread/block limits
                                                    (min(32, 2048 // block))

The stub's own calls are cheap Python, lighter than CuPy's real ones (a real launch converts
every argument; a real ``get_function`` looks a module up by its whole source text), so the
"before" figures, which make more of those calls, are if anything underestimated.  Besides
the time, the counts of launches, device entries, allocations and kernel objects made per
call are reported: they do not depend on the machine.

"Before" is measured in a temporary ``git worktree`` of ``--before``, "after" in this checkout
(uncommitted changes included), in one run: each tree in fresh processes running this same
script (``--worker``), the two alternating for ``--rounds`` rounds so that a change of machine
load falls on both alike.  A time is the median over all samples (a sample: the mean of
``--inner`` consecutive calls, garbage collection held off), after ``--warmup`` calls that
compile (stubbed) and fill every cache.
Writes ``<out>/host_overhead.json`` and ``.png``.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_BEFORE = "f788f24"
KINDS = ("forward_train", "forward_eval", "backward")
LABELS = {"forward_train": "forward (training)", "forward_eval": "forward (evaluation)",
          "backward": "backward"}
# Where a call's time goes: cupy_abn module -> part.
PARTS = {"api": "api, validation, dispatch", "_validation": "api, validation, dispatch",
         "_dispatch": "api, validation, dispatch", "_state": "api, validation, dispatch",
         "_kernel_backend": "kernel backend, kernel source",
         "_kernel_source": "kernel backend, kernel source",
         "_numpy_backend": "kernel backend, kernel source",
         "_runtime_cupy": "CupyRuntime"}
COUNTERS = ("launches", "device_enters", "allocations", "kernel_objects", "modules")
STUBBED = ["cupy.empty, zeros, empty_like, ascontiguousarray (fake arrays, no memory)",
           "cupy.RawModule, RawKernel (no compilation; launches recorded, not run)",
           "cupy.cuda.Device (context manager that counts entries)",
           "cupy.cuda.driver.occupancyMaxActiveBlocksPerMultiprocessor (H100 limits)"]
REAL = ["cupy_abn.api", "cupy_abn._validation", "cupy_abn._dispatch",
        "cupy_abn._kernel_backend", "cupy_abn._runtime_cupy", "cupy_abn._kernel_source"]


# ---- the stub CuPy ---------------------------------------------------------------------------
class Counters:
    """What the stub saw: counts per kind of call, and the launches themselves."""

    def __init__(self):
        self.counts = dict.fromkeys(COUNTERS, 0)
        self.launches: List[Tuple[str, int, int, int]] = []   # (entry, grid, block, nargs)
        self.record = False

    def reset(self) -> None:
        self.counts.update(dict.fromkeys(COUNTERS, 0))   # in place: the stub holds it
        self.launches = []


def make_stub_cupy(sms: int = 132, max_block: int = 1024) -> Tuple[types.ModuleType, Counters]:
    """A fake ``cupy`` module with just what cupy-abn's CUDA runtime calls, and its counters.

    Parameters
    ----------
    sms, max_block : int
        ``MultiProcessorCount`` and ``MaxThreadsPerBlock`` of the pretended device (an H100).

    Returns
    -------
    module, Counters
    """
    c = Counters()
    counts = c.counts
    stub = types.ModuleType("cupy")
    stub.__path__ = []            # a package, so that "import cupy.cuda" style imports resolve
    stub.__stub__ = True

    class Flags:
        __slots__ = ("c_contiguous", "f_contiguous", "writeable")

        def __init__(self, c_contiguous=True):
            self.c_contiguous = c_contiguous
            self.f_contiguous = False
            self.writeable = True

    class Data:
        __slots__ = ("ptr",)

        def __init__(self, ptr):
            self.ptr = ptr

    next_ptr = itertools.count(1)

    class Device:
        def __init__(self, device_id=0):
            self.id = int(device_id)

        @property
        def attributes(self):
            return {"MultiProcessorCount": sms, "MaxThreadsPerBlock": max_block}

        compute_capability = "90"   # an H100 (cupy_abn._runtime_cupy.check_device)

        def __enter__(self):
            counts["device_enters"] += 1
            return self

        def __exit__(self, *exc):
            return False

        def synchronize(self):
            pass

    device0 = Device(0)

    contiguous, strided = Flags(True), Flags(False)    # shared: the stub never changes them
    layouts: Dict[Tuple, Tuple[int, tuple]] = {}        # (shape, itemsize) -> size, strides

    class ndarray:
        """Shape, dtype and the attributes validation and the backend read; no memory.

        Kept about as cheap to make as a real ``cupy.empty`` from the memory pool."""

        __slots__ = ("shape", "dtype", "ndim", "size", "itemsize", "nbytes", "strides",
                     "flags", "device", "data")

        def __init__(self, shape, dtype, strides=None, ptr=None):
            if ptr is None:                  # a view shares its base's memory
                counts["allocations"] += 1
            shape = tuple(shape) if isinstance(shape, (tuple, list)) else (int(shape),)
            dtype = np.dtype(dtype)
            itemsize = dtype.itemsize
            layout = layouts.get((shape, itemsize))
            if layout is None:
                layout = layouts[shape, itemsize] = (math.prod(shape),
                                                     _c_strides(shape, itemsize))
            self.shape, self.dtype, self.ndim = shape, dtype, len(shape)
            self.size, self.itemsize = layout[0], itemsize
            self.nbytes = layout[0] * itemsize
            if strides is None or strides == layout[1]:
                self.strides, self.flags = layout[1], contiguous
            else:
                self.strides, self.flags = tuple(strides), strided
            self.device = device0
            # 256-byte aligned, as CuPy's memory pool hands out
            self.data = Data(ptr if ptr is not None else 256 * next(next_ptr))

        def astype(self, dtype, copy=True):
            if not copy and np.dtype(dtype) == self.dtype:
                return self
            return ndarray(self.shape, dtype)

        def copy(self):
            return ndarray(self.shape, self.dtype)

        def reshape(self, *shape):
            shape = shape[0] if len(shape) == 1 and isinstance(shape[0], (tuple, list)) \
                else shape
            shape = np.empty(self.shape, np.bool_).reshape(shape).shape if -1 in shape \
                else shape
            return ndarray(shape, self.dtype, ptr=self.data.ptr)

        def ravel(self):
            return self.reshape(-1)

        def view(self, dtype=None):
            return ndarray(self.shape, self.dtype if dtype is None else dtype,
                           ptr=self.data.ptr)

        def __getitem__(self, index):
            shape = np.broadcast_to(np.empty((), np.bool_), self.shape)[index].shape
            return ndarray(shape, self.dtype, ptr=self.data.ptr)

        def __len__(self):
            return self.shape[0]

        def fill(self, value):
            pass

    ndarray.__module__ = "cupy._stub"
    ndarray.__qualname__ = ndarray.__name__ = "ndarray"

    def empty(shape, dtype=np.float64, order="C"):
        return ndarray(shape, dtype)

    def zeros(shape, dtype=np.float64, order="C"):
        return ndarray(shape, dtype)

    def empty_like(a, dtype=None, order="K", shape=None):
        return ndarray(a.shape if shape is None else shape, a.dtype if dtype is None else dtype)

    def ascontiguousarray(a, dtype=None):
        if a.flags.c_contiguous and (dtype is None or np.dtype(dtype) == a.dtype):
            return a
        return ndarray(a.shape, a.dtype if dtype is None else dtype)

    class Function:
        __slots__ = ("ptr",)

        def __init__(self):
            self.ptr = next(next_ptr)

    class RawKernel:
        def __init__(self, code=None, name="kernel", options=(), **kw):
            counts["kernel_objects"] += 1
            self.code, self.name, self.options = code, name, tuple(options)
            self.kernel = Function()

        def __call__(self, grid, block, args, **kw):
            counts["launches"] += 1
            if c.record:
                c.launches.append((self.name, int(grid[0]), int(block[0]), len(args)))

    class RawModule:
        def __init__(self, *, code=None, path=None, options=(), **kw):
            counts["modules"] += 1
            self.code, self.options = code, tuple(options)

        def get_function(self, name):
            return RawKernel(self.code, name, self.options)

        def compile(self, log_stream=None):
            pass

    def occupancy(func, block_size, dynamic_smem):
        return max(1, min(32, 2048 // int(block_size)))

    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = Device
    cuda.driver = types.SimpleNamespace(occupancyMaxActiveBlocksPerMultiprocessor=occupancy)
    cuda.runtime = types.SimpleNamespace(getDeviceCount=lambda: 1, getDevice=lambda: 0,
                                         runtimeGetVersion=lambda: 12090)
    # CuPy for CUDA 12 with NVRTC 12.9 (the runtime's once-per-device check reads these)
    cuda.nvrtc = types.SimpleNamespace(getVersion=lambda: (12, 9),
                                       getSupportedArchs=lambda: (50, 60, 70, 75, 80, 90))
    cuda.get_current_stream = lambda: None
    stub.cuda = cuda
    stub.ndarray = ndarray
    stub.empty, stub.zeros, stub.empty_like = empty, zeros, empty_like
    stub.ascontiguousarray = ascontiguousarray
    stub.RawKernel, stub.RawModule = RawKernel, RawModule
    stub.float16, stub.float32, stub.float64 = np.float16, np.float32, np.float64
    stub.uint32, stub.uint64, stub.int32 = np.uint32, np.uint64, np.int32
    return stub, c


def _c_strides(shape, itemsize) -> tuple:
    out, step = [], itemsize
    for s in reversed(shape):
        out.append(step)
        step *= max(int(s), 1)
    return tuple(reversed(out))


# ---- one tree, in this process ----------------------------------------------------------------
def _time_calls(fn, repeat: int, inner: int, bar=None) -> List[float]:
    """Per-call µs of ``fn``: one sample per block of ``inner`` calls, GC held off."""
    samples = []
    gc.collect()
    enabled = gc.isenabled()
    gc.disable()
    try:
        for _ in range(repeat):
            t0 = time.perf_counter()
            for _ in range(inner):
                fn()
            samples.append((time.perf_counter() - t0) / inner * 1e6)
            if bar is not None:
                bar.update()
    finally:
        if enabled:
            gc.enable()
    return samples


def _breakdown(fn, calls: int, tree: Path) -> Dict[str, float]:
    """Share of ``fn``'s own time per part of the code, from a profiled run (the profiler
    slows every call, so only the shares are kept)."""
    import cProfile
    import pstats

    prof = cProfile.Profile()
    prof.enable()
    for _ in range(calls):
        fn()
    prof.disable()
    parts = dict.fromkeys(PARTS.values(), 0.0)
    parts["stub CuPy"] = parts["other (numpy, builtins)"] = 0.0
    pkg = str(Path(tree).resolve() / "cupy_abn")
    for (path, _, _), (_, _, tottime, _, _) in pstats.Stats(prof).stats.items():
        if path.startswith(pkg):
            part = PARTS.get(Path(path).stem, "cupy_abn (other)")
        elif path == str(Path(__file__).resolve()):
            part = "stub CuPy"
        else:
            part = "other (numpy, builtins)"
        parts[part] = parts.get(part, 0.0) + tottime
    total = sum(parts.values()) or 1.0
    return {k: round(v / total, 4) for k, v in parts.items()}


def measure_tree(tree: Path, shape: Tuple[int, ...], dtype: str, repeat: int, inner: int,
                 warmup: int, progress: bool = True, label: str = "") -> Dict[str, Any]:
    """Host µs per call of each kind with the ``cupy_abn`` of ``tree`` on the stub CuPy.

    Must run in a fresh process: it installs the stub as ``sys.modules["cupy"]`` and imports
    ``cupy_abn`` from ``tree``.

    Returns
    -------
    dict
        ``{"module": path of cupy_abn imported, "kinds": {kind: {"us_median", "us_min",
        "samples", counters..., "launch_list", "breakdown"}}}``.
    """
    from tqdm.auto import tqdm

    if "cupy_abn" in sys.modules:
        raise RuntimeError("measure_tree needs a process where cupy_abn is not imported yet")
    stub, counters = make_stub_cupy()
    sys.modules["cupy"] = stub
    sys.modules["cupy.cuda"] = stub.cuda
    sys.path.insert(0, str(tree))
    import cupy_abn
    module = Path(cupy_abn.__file__).resolve()
    if Path(tree).resolve() not in module.parents:
        raise RuntimeError(f"imported {module}, not the cupy_abn of {tree}")

    dt = np.dtype(dtype)
    c = shape[1]
    x = stub.empty(shape, dt)
    gamma, beta = stub.empty((c,), dt), stub.empty((c,), dt)
    rm, rv = stub.empty((c,), dt), stub.empty((c,), dt)
    dz = stub.empty(shape, dt)
    _, saved = cupy_abn.abn_forward(x, gamma, beta, rm, rv, training=True)
    calls = {
        "forward_train": lambda: cupy_abn.abn_forward(x, gamma, beta, rm, rv, training=True),
        "forward_eval": lambda: cupy_abn.abn_forward(x, gamma, beta, rm, rv, training=False),
        "backward": lambda: cupy_abn.abn_backward(saved, dz),
    }
    kinds: Dict[str, Any] = {}
    bar = tqdm(total=len(KINDS) * repeat, desc=f"host µs {label or tree.name}",
               disable=not progress,
               file=sys.stderr, leave=False)
    for kind in KINDS:
        fn = calls[kind]
        for _ in range(warmup):             # compiles (stubbed) and fills every cache
            fn()
        counters.reset()
        counters.record = True
        fn()                                 # one call, counted
        counters.record = False
        row = dict(counters.counts)
        row["launch_list"] = [list(l) for l in counters.launches]
        samples = _time_calls(fn, repeat, inner, bar)
        row.update(us_median=statistics.median(samples), us_min=min(samples),
                   samples=[round(s, 3) for s in samples])
        row["breakdown"] = _breakdown(fn, max(100, 5 * repeat), tree)
        kinds[kind] = row
    bar.close()
    return {"module": str(module), "kinds": kinds}


# ---- both trees, each in a subprocess ----------------------------------------------------------
def _git(*args: str, cwd: Path = ROOT) -> str:
    return subprocess.run(["git", *args], cwd=cwd, check=True, capture_output=True,
                          text=True).stdout.strip()


def _run_worker(tree: Path, label: str, args: argparse.Namespace) -> Dict[str, Any]:
    """Measure ``tree`` in a fresh interpreter running this script with ``--worker``."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "result.json"
        cmd = [sys.executable, str(Path(__file__).resolve()), "--worker", str(tree),
               "--json-out", str(out), "--shape", args.shape, "--dtype", args.dtype,
               "--repeat", str(args.repeat), "--inner", str(args.inner),
               "--warmup", str(args.warmup), "--label", label] + ([] if args.progress else ["--no-progress"])
        env = dict(os.environ, PYTHONPATH="", PYTHONDONTWRITEBYTECODE="1")
        subprocess.run(cmd, check=True, cwd=tree, env=env)
        return json.loads(out.read_text())


def _merge(rounds: List[Dict[str, Any]]) -> Dict[str, Any]:
    """One tree's rounds as one result: samples pooled, counts from the first round."""
    res = dict(rounds[0], kinds={})
    for kind in KINDS:
        row = dict(rounds[0]["kinds"][kind])
        samples = [s for r in rounds for s in r["kinds"][kind]["samples"]]
        row.update(us_median=statistics.median(samples), us_min=min(samples), samples=samples,
                   us_round_medians=[r["kinds"][kind]["us_median"] for r in rounds])
        res["kinds"][kind] = row
    return res


def _describe_tree() -> Dict[str, Any]:
    try:
        dirty = _git("status", "--porcelain", "--", "cupy_abn", "kernels")
        return dict(rev="working tree", commit=_git("rev-parse", "HEAD"),
                    uncommitted_changes=bool(dirty))
    except (OSError, subprocess.CalledProcessError):    # not a git checkout
        return dict(rev="working tree", commit="unknown", uncommitted_changes=None)


def measure(args: argparse.Namespace) -> Dict[str, Dict[str, Any]]:
    """"after" (this checkout, uncommitted changes included) and, unless ``--no-before``,
    "before" (``--before`` in a temporary worktree, removed afterwards).

    The two trees alternate for ``--rounds`` rounds, each a fresh process, so that a change
    of machine load over the run falls on both alike.
    """
    from tqdm.auto import tqdm

    trees = {"after": ROOT}
    with tempfile.TemporaryDirectory(prefix="host_overhead_") as tmp:
        if not args.no_before:
            commit = _git("rev-parse", "--verify", f"{args.before}^{{commit}}")
            wt = Path(tmp) / "before"
            _git("worktree", "add", "--detach", "--quiet", str(wt), commit)
            trees = {"before": wt, "after": ROOT}
        try:
            rounds: Dict[str, List[Dict[str, Any]]] = {name: [] for name in trees}
            steps = [(i, name) for i in range(args.rounds) for name in trees]
            for _, name in tqdm(steps, desc="trees x rounds", disable=not args.progress):
                rounds[name].append(_run_worker(trees[name], name, args))
        finally:
            if "before" in trees:
                subprocess.run(["git", "worktree", "remove", "--force", str(trees["before"])],
                               cwd=ROOT, capture_output=True)
    out = {name: _merge(r) for name, r in rounds.items()}
    if "before" in out:
        out["before"].update(rev=args.before, commit=commit)
    out["after"].update(_describe_tree())
    return out


# ---- report ------------------------------------------------------------------------------------
def table(result: Dict[str, Any]) -> str:
    """The before/after table as text."""
    runs = [(name, result[name]) for name in ("before", "after") if name in result]
    head = f"{'call':<22}" + "".join(f"{name + ' µs':>12}{'(best)':>8}" for name, _ in runs)
    if len(runs) == 2:
        head += f"{'speed-up':>10}"
    head += "   launches / device enters / allocations / kernel objects per call"
    lines = ["µs: median (and best) sample; a sample is the mean of --inner calls", head]
    for kind in KINDS:
        line = f"{LABELS[kind]:<22}" + "".join(
            f"{r['kinds'][kind]['us_median']:12.1f}{r['kinds'][kind]['us_min']:8.1f}"
            for _, r in runs)
        if len(runs) == 2:
            line += f"{result['speedup'][kind]:9.2f}x"
        line += "   " + "  |  ".join(
            f"{name}: {r['kinds'][kind]['launches']} / {r['kinds'][kind]['device_enters']} / "
            f"{r['kinds'][kind]['allocations']} / {r['kinds'][kind]['kernel_objects']}"
            for name, r in runs)
        lines.append(line)
    for name, r in runs:
        lines.append(f"{name}: share of host time by part (profiled)")
        for kind in KINDS:
            shares = r["kinds"][kind].get("breakdown", {})
            lines.append(f"  {LABELS[kind]:<22}" + ", ".join(
                f"{part} {100 * v:.0f}%" for part, v in shares.items()))
    return "\n".join(lines)


def plot(result: Dict[str, Any], path: Path) -> None:
    """Before/after bars of µs per call, one group per call kind."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(name, result[name]) for name in ("before", "after") if name in result]
    fig, ax = plt.subplots(figsize=(7.5, 4.5))
    width = 0.8 / len(runs)
    colors = {"before": "tab:gray", "after": "tab:green"}
    for i, (name, r) in enumerate(runs):
        xs = [k + (i - (len(runs) - 1) / 2) * width for k in range(len(KINDS))]
        ys = [r["kinds"][kind]["us_median"] for kind in KINDS]
        if r["commit"].startswith(str(r["rev"])):
            label = f"{name} ({r['commit'][:7]})"
        else:
            label = f"{name} ({r['rev']}{' with changes' if r.get('uncommitted_changes') else ''}"\
                    f", {r['commit'][:7]})"
        bars = ax.bar(xs, ys, width, label=label, color=colors[name])
        ax.bar_label(bars, fmt="%.0f", fontsize=8)
    ax.set_xticks(range(len(KINDS)), [LABELS[k] for k in KINDS])
    ax.set_ylabel("host µs per call (median)")
    shape = "x".join(str(s) for s in result["shape"])
    ax.set_title(f"cupy-abn host overhead per call, stub CuPy, {shape} {result['dtype']}\n"
                 f"{result['python']} on {result['cpu']}", fontsize=9)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main(argv: Optional[List[str]] = None) -> Dict[str, Any]:
    """Run the benchmark; returns what it writes to ``<out>/host_overhead.json``."""
    p = argparse.ArgumentParser(description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", default=DEFAULT_BEFORE,
                   help="revision measured as 'before' (default %(default)s)")
    p.add_argument("--no-before", action="store_true", help="measure this tree only")
    p.add_argument("--shape", default="32x64x56x56")
    p.add_argument("--dtype", default="float32")
    p.add_argument("--rounds", type=int, default=3,
                   help="fresh processes per tree, before and after alternating")
    p.add_argument("--repeat", type=int, default=300,
                   help="samples per call kind and round")
    p.add_argument("--inner", type=int, default=5,
                   help="calls per sample (short samples: a preempted one is an outlier "
                        "the median ignores)")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"))
    p.add_argument("--no-progress", dest="progress", action="store_false")
    p.add_argument("--worker", metavar="TREE", help=argparse.SUPPRESS)
    p.add_argument("--json-out", help=argparse.SUPPRESS)
    p.add_argument("--label", default="", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    shape = tuple(int(s) for s in args.shape.split("x"))

    if args.worker:
        res = measure_tree(Path(args.worker), shape, args.dtype, args.repeat, args.inner,
                           args.warmup, args.progress, args.label)
        Path(args.json_out).write_text(json.dumps(res))
        return res

    result: Dict[str, Any] = {
        "shape": list(shape), "dtype": args.dtype, "rounds": args.rounds, "repeat": args.repeat,
        "inner": args.inner, "warmup": args.warmup,
        "python": f"Python {platform.python_version()}",
        "cpu": platform.processor() or platform.machine(),
        "stubbed": STUBBED, "real": REAL,
        "command": "python benchmarks/host_overhead.py " + " ".join(
            argv if argv is not None else sys.argv[1:]),
    }
    result.update(measure(args))
    if "before" in result:
        result["speedup"] = {k: result["before"]["kinds"][k]["us_median"] /
                             result["after"]["kinds"][k]["us_median"] for k in KINDS}
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    stem = out / "host_overhead"
    stem.with_suffix(".json").write_text(json.dumps(result, indent=1) + "\n")
    plot(result, stem.with_suffix(".png"))
    print(table(result))
    print(f"wrote {stem.with_suffix('.json')} and {stem.with_suffix('.png')}", file=sys.stderr)
    return result


if __name__ == "__main__":
    main()
