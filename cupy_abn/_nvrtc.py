"""Compile kernel variants with NVRTC 12 and NVRTC 13 side by side, no GPU and no CuPy needed.

NVRTC is loaded through ``ctypes`` from the pip wheels (``nvidia-cuda-nvrtc-cu12``:
``nvidia/cuda_nvrtc/lib/libnvrtc.so.12``; ``nvidia-cuda-nvrtc`` for CUDA 13:
``nvidia/cu13/lib/libnvrtc.so.13``), else from the system (``libnvrtc.so.<major>`` on the
loader path or under ``$CUDA_PATH``/``/usr/local/cuda``).  The two have different sonames, so
both live in one process.

Options are those CuPy 14 passes at run time for a ``RawModule``
(``cupy/cuda/compiler.py``: ``_compile_with_cache_cuda`` and ``_compile_using_nvrtc``):

    user options  (RUNTIME_OPTIONS + the variant's -D defines: cupy_abn/_runtime_cupy.py)
    -ftz=true
    -arch=sm_XX  -> a cubin, when XX <= NVRTC's maximum (12.0-12.7: 90, 12.8: 120, else 121)
    -arch=compute_XX -> PTX, otherwise
    --device-as-default-execution-space

CuPy also adds ``-I`` include directories (its headers, CCCL); the kernels include no header,
so those do not change the code and are left out here.

These checks load both NVRTC majors themselves; the CUDA runtime never uses them: CuPy loads
its own NVRTC (``cupy_abn/_runtime_cupy.py`` checks that its major is CuPy's CUDA major).  A
process that loads a library here and later compiles through CuPy 14 shares it, though:
``cuda.pathfinder`` returns an NVRTC that is already loaded, ``libnvrtc.so.13`` first.  Hence
the environments that have both (the ``nvrtc`` extra, tox) use CuPy for CUDA 13.

The oldest architecture each NVRTC major compiles for (``nvrtcGetSupportedArchs`` of the wheels:
12.9 sm_50 to sm_121, 13.5 sm_75 to sm_121) is the oldest GPU the kernels run on with it
(``NVRTC_MIN_ARCH``, ``min_arch``): the kernels themselves need nothing newer than sm_50
(``KERNEL_MIN_ARCH``).

``python -m cupy_abn._nvrtc`` compiles every variant for every target and prints a summary.
"""
from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Sequence, Tuple

from . import _kernel_source as K

# The options the CUDA runtime passes ahead of a variant's defines (cupy_abn/_runtime_cupy.py
# imports these, so that this module compiles exactly what the runtime compiles).
RUNTIME_OPTIONS: Tuple[str, ...] = ("--std=c++11",)

# Real architectures whose cubins are checked (A100, H100); PTX goes to the newest one known.
CUBIN_ARCHS: Tuple[int, ...] = (80, 90)

MAJORS: Tuple[int, ...] = (12, 13)

# The oldest architecture the kernels need (kernels/prelude_cuda.cuh: 32-bit atomicAdd,
# fences, the f16 cvt instructions; no double atomicAdd, which would need sm_60).  No supported
# NVRTC compiles below sm_50, so the NVRTC decides; tests/test_cuda_majors.py compiles every
# family at each major's minimum: raise this when a kernel needs more.
KERNEL_MIN_ARCH = 50

# The pip wheel of NVRTC for each CUDA major (the cuda12 and cuda13 extras install it with
# CuPy; the static report records its version).
NVRTC_WHEELS: Dict[int, str] = {12: "nvidia-cuda-nvrtc-cu12", 13: "nvidia-cuda-nvrtc"}

# The oldest architecture NVRTC of each CUDA major compiles for: CUDA 12.0 dropped Kepler
# (sm_35, sm_37), CUDA 13.0 Maxwell, Pascal and Volta (sm_50 to sm_72).
NVRTC_MIN_ARCH: Dict[int, int] = {12: 50, 13: 75}


def min_arch(major: int, supported: Optional[Iterable[int]] = None) -> int:
    """The oldest compute capability (as ``XY``: 75 for 7.5) the kernels run on when CuPy
    compiles them with NVRTC ``major``.

    Parameters
    ----------
    major : int
        NVRTC's major version (that of CUDA).
    supported : iterable of int, optional
        The architectures that NVRTC compiles for (``nvrtcGetSupportedArchs``).  Without it,
        the table ``NVRTC_MIN_ARCH``: for a major newer than it knows, its newest entry (a
        major drops architectures, never adds old ones); for an older one, none.

    Returns
    -------
    int
        The larger of ``KERNEL_MIN_ARCH`` and NVRTC's oldest architecture.
    """
    archs = [int(a) for a in supported] if supported is not None else []
    if archs:
        floor = min(archs)
    elif major in NVRTC_MIN_ARCH:
        floor = NVRTC_MIN_ARCH[major]
    elif major > max(NVRTC_MIN_ARCH):
        floor = NVRTC_MIN_ARCH[max(NVRTC_MIN_ARCH)]
    else:
        floor = KERNEL_MIN_ARCH
    return max(KERNEL_MIN_ARCH, floor)


def runtime_options(defines: Iterable[str]) -> Tuple[str, ...]:
    """The user options the CUDA runtime gives ``cupy.RawModule`` for a variant.

    Parameters
    ----------
    defines : iterable of str
        The variant's ``-D`` options (``cupy_abn._kernel_source.defines``).

    Returns
    -------
    tuple of str
    """
    return RUNTIME_OPTIONS + tuple(defines)


def cupy_max_arch(version: Tuple[int, int]) -> int:
    """The largest ``sm_XX`` CuPy 14 compiles to a cubin with NVRTC ``version``."""
    major, minor = version
    if major == 12 and minor < 8:
        return 90
    if major == 12 and minor == 8:
        return 120
    return 121


def cupy_arch_option(arch: int, version: Tuple[int, int]) -> Tuple[str, str]:
    """CuPy's ``-arch`` option for a device of compute capability ``arch``, and the output kind.

    Returns
    -------
    (option, kind) : (str, str)
        ``("-arch=sm_90", "cubin")`` or ``("-arch=compute_XX", "ptx")``.
    """
    if arch <= cupy_max_arch(version):
        return f"-arch=sm_{arch}", "cubin"
    return f"-arch=compute_{arch}", "ptx"


def cupy_options(user_options: Sequence[str], arch_option: str) -> Tuple[str, ...]:
    """The full option list CuPy hands NVRTC, in CuPy's order."""
    return tuple(user_options) + ("-ftz=true", arch_option,
                                  "--device-as-default-execution-space")


class NvrtcError(RuntimeError):
    """A failed NVRTC call; the message carries the program log."""


@dataclass(frozen=True)
class Target:
    """One compile target: ``kind`` "cubin" (``-arch=sm_XX``) or "ptx" (``-arch=compute_XX``)."""
    arch: int
    kind: str

    @property
    def option(self) -> str:
        return f"-arch={'sm' if self.kind == 'cubin' else 'compute'}_{self.arch}"

    @property
    def name(self) -> str:
        return f"{'sm' if self.kind == 'cubin' else 'compute'}_{self.arch}"


@dataclass(frozen=True)
class Compiled:
    """The output of one compile: ``data`` is the cubin (bytes) or the PTX (bytes, no NUL)."""
    target: Target
    options: Tuple[str, ...]
    data: bytes
    log: str

    @property
    def ptx(self) -> str:
        return self.data.decode() if self.target.kind == "ptx" else ""


def _candidates(major: int) -> List[str]:
    """Paths of libnvrtc.so.<major> to try, wheels first."""
    sub = {12: ("cuda_nvrtc", "lib"), 13: ("cu13", "lib")}.get(major, ("cu%d" % major, "lib"))
    roots = []
    try:
        import nvidia   # namespace package of the NVIDIA wheels
        roots += list(nvidia.__path__)
    except ImportError:
        pass
    roots += [os.path.join(p, "nvidia") for p in sys.path if p]
    out = []
    for root in roots:
        out += sorted(glob.glob(os.path.join(root, *sub, f"libnvrtc.so.{major}*")))
    for home in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home:
            out += sorted(glob.glob(os.path.join(home, "lib64", f"libnvrtc.so.{major}*")))
    out.append(f"libnvrtc.so.{major}")   # the loader's own search
    seen, uniq = set(), []
    for p in out:
        if p not in seen and "builtins" not in p and not p.endswith(".alt"):
            seen.add(p)
            uniq.append(p)
    return uniq


class Nvrtc:
    """One loaded NVRTC library (``ctypes``)."""

    def __init__(self, path: str):
        self.path = path
        self.lib = ctypes.CDLL(path, mode=ctypes.RTLD_LOCAL)
        lib = self.lib
        lib.nvrtcGetErrorString.restype = ctypes.c_char_p
        lib.nvrtcGetErrorString.argtypes = [ctypes.c_int]
        major, minor = ctypes.c_int(), ctypes.c_int()
        self._check(lib.nvrtcVersion(ctypes.byref(major), ctypes.byref(minor)), "nvrtcVersion")
        self.version: Tuple[int, int] = (major.value, minor.value)

    def _check(self, rc: int, what: str, log: str = "") -> None:
        if rc != 0:
            msg = self.lib.nvrtcGetErrorString(rc).decode()
            raise NvrtcError(f"{what}: {msg}" + (f"\n{log}" if log else ""))

    def supported_archs(self) -> List[int]:
        """The ``-arch`` values this NVRTC accepts (``nvrtcGetSupportedArchs``)."""
        n = ctypes.c_int()
        self._check(self.lib.nvrtcGetNumSupportedArchs(ctypes.byref(n)), "archs")
        arr = (ctypes.c_int * n.value)()
        self._check(self.lib.nvrtcGetSupportedArchs(arr), "archs")
        return sorted(arr)

    def newest_arch(self) -> int:
        """The newest architecture known to this NVRTC (PTX target)."""
        return max(self.supported_archs())

    def targets(self) -> List[Target]:
        """Cubin for sm_80 and sm_90 (as CuPy builds on an A100/H100), PTX for the newest arch."""
        out = [Target(a, cupy_arch_option(a, self.version)[1]) for a in CUBIN_ARCHS]
        return out + [Target(self.newest_arch(), "ptx")]

    def compile(self, source: str, options: Sequence[str], kind: str,
                name: str = "kern.cu") -> Tuple[bytes, str]:
        """Compile ``source``; returns (cubin or PTX bytes, program log).

        Raises
        ------
        NvrtcError
            With the program log, when the compile fails.
        """
        lib = self.lib
        prog = ctypes.c_void_p()
        self._check(lib.nvrtcCreateProgram(ctypes.byref(prog), source.encode(), name.encode(),
                                           0, None, None), "nvrtcCreateProgram")
        try:
            opts = (ctypes.c_char_p * len(options))(*[o.encode() for o in options])
            rc = lib.nvrtcCompileProgram(prog, len(options), opts)
            size = ctypes.c_size_t()
            self._check(lib.nvrtcGetProgramLogSize(prog, ctypes.byref(size)), "log size")
            buf = ctypes.create_string_buffer(size.value)
            self._check(lib.nvrtcGetProgramLog(prog, buf), "log")
            log = buf.value.decode(errors="replace")
            self._check(rc, f"nvrtcCompileProgram {' '.join(options)}", log)
            getsize, get = ((lib.nvrtcGetCUBINSize, lib.nvrtcGetCUBIN) if kind == "cubin"
                            else (lib.nvrtcGetPTXSize, lib.nvrtcGetPTX))
            self._check(getsize(prog, ctypes.byref(size)), f"{kind} size")
            out = ctypes.create_string_buffer(size.value)
            self._check(get(prog, out), kind)
            data = out.raw[:size.value]
            return (data.rstrip(b"\0") if kind == "ptx" else data), log
        finally:
            lib.nvrtcDestroyProgram(ctypes.byref(prog))


_LOADED: Dict[int, Optional[Nvrtc]] = {}
_ERRORS: Dict[int, str] = {}
_LOAD_LOCK = threading.Lock()


def load(major: int) -> Nvrtc:
    """NVRTC ``major`` (12 or 13), loaded once per process.

    Raises
    ------
    OSError
        When no library of that major version loads.
    """
    with _LOAD_LOCK:   # threads compiling at once load each library once
        return _load_locked(major)


def _load_locked(major: int) -> Nvrtc:
    if major not in _LOADED:
        errors = []
        for path in _candidates(major):
            try:
                nv = Nvrtc(path)
            except (OSError, NvrtcError, AttributeError) as err:
                errors.append(f"{path}: {err}")
                continue
            if nv.version[0] == major:
                _LOADED[major] = nv
                break
            errors.append(f"{path}: version {nv.version}")
        else:
            _LOADED[major] = None
            _ERRORS[major] = "; ".join(errors[-2:])
    loaded = _LOADED[major]
    if loaded is None:
        raise OSError(f"NVRTC {major} not found ({_ERRORS[major]})")
    return loaded


def available(majors: Iterable[int] = MAJORS) -> Dict[int, Nvrtc]:
    """The NVRTC versions that load, by major version."""
    out = {}
    for major in majors:
        try:
            out[major] = load(major)
        except OSError:
            pass
    return out


def compile_variant(nv: Nvrtc, family: str, defines: Sequence[str], target: Target
                    ) -> Compiled:
    """Compile one kernel variant as CuPy's ``RawModule`` does at run time.

    Parameters
    ----------
    nv : Nvrtc
    family : str
        A key of ``cupy_abn._kernel_source.FILES``.
    defines : sequence of str
        The variant's ``-D`` options.
    target : Target

    Returns
    -------
    Compiled

    Raises
    ------
    NvrtcError
        With the log, naming the family and the defines.
    """
    opts = cupy_options(runtime_options(defines), target.option)
    src = K.source(family, "cuda")
    cached = _cache_path(nv, src, opts, target)
    if cached is not None and cached.exists():
        return Compiled(target, opts, cached.read_bytes(), "")
    try:
        data, log = nv.compile(src, opts, target.kind)
    except NvrtcError as err:
        raise NvrtcError(f"NVRTC {nv.version} {family} {' '.join(defines)} "
                         f"{target.name}: {err}") from None
    if cached is not None:
        _store(cached, data)
    return Compiled(target, opts, data, log)


# Where compiled variants are kept between processes (the tests of two tox environments, the
# static report): a directory named by CUPY_ABN_NVRTC_CACHE, unset by default.  Keyed by the
# NVRTC version, the whole translation unit and the options, so a stale entry cannot match.
CACHE_ENV = "CUPY_ABN_NVRTC_CACHE"


def _cache_path(nv: "Nvrtc", src: str, opts: Sequence[str], target: Target):
    root = os.environ.get(CACHE_ENV)
    if not root:
        return None
    key = repr((nv.version, src, tuple(opts), target.kind))
    key = hashlib.sha256(key.encode()).hexdigest()
    return Path(root) / key[:2] / f"{key}.{target.kind}"


def _store(path, data: bytes) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        # per process and thread: two threads storing the same variant never share a file
        tmp = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        tmp.write_bytes(data)
        os.replace(tmp, path)   # atomic: parallel workers never read half a file
    except OSError:
        pass   # a read-only place: no cache, the same result


Job = Tuple[int, str, Tuple[str, ...], Target]   # (NVRTC major, family, defines, target)


def _run_job(job: Job) -> Compiled:
    major, family, defines, target = job
    return compile_variant(load(major), family, defines, target)


def compile_many(jobs: Sequence[Job], workers: Optional[int] = None,
                 progress: Optional[Callable[[int], None]] = None) -> List[Compiled]:
    """Compile many variants, in a pool of processes (NVRTC is single-threaded per program).

    Parameters
    ----------
    jobs : sequence of (major, family, defines, target)
    workers : int, optional
        Processes; default the CPU count.  1 compiles in this process.
    progress : callable, optional
        Called with the number of jobs just finished.

    Returns
    -------
    list of Compiled, in the order of ``jobs``.  A failed compile raises its NvrtcError.
    """
    workers = min(workers or os.cpu_count() or 1, max(len(jobs), 1))
    if workers <= 1:
        out = []
        for job in jobs:
            out.append(_run_job(job))
            if progress:
                progress(1)
        return out
    import concurrent.futures as cf
    import multiprocessing as mp
    ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else "spawn")
    results: List[Optional[Compiled]] = [None] * len(jobs)
    with cf.ProcessPoolExecutor(workers, mp_context=ctx) as pool:
        futures = {pool.submit(_run_job, job): i for i, job in enumerate(jobs)}
        for fut in cf.as_completed(futures):
            results[futures[fut]] = fut.result()
            if progress:
                progress(1)
    return results   # type: ignore[return-value]


def main(argv: Optional[Sequence[str]] = None) -> int:
    found = available()
    if not found:
        print("NVRTC not available (pip install nvidia-cuda-nvrtc-cu12 nvidia-cuda-nvrtc)")
        return 1
    variants = list(K.all_variants())
    jobs = [(major, fam, d, t) for major, nv in found.items() for t in nv.targets()
            for fam, d in variants]
    t0 = time.perf_counter()
    try:
        done = compile_many(jobs)
    except NvrtcError as err:
        print(err)
        print("FAILED")
        return 1
    for major, nv in found.items():
        print(f"NVRTC {nv.version[0]}.{nv.version[1]} ({nv.path}): {len(variants)} variants")
        for t in nv.targets():
            sizes = [len(c.data) for j, c in zip(jobs, done) if j[0] == major and j[3] == t]
            print(f"  {t.name:12s} {t.kind:5s}: {len(sizes)} compiled, {sum(sizes) // 1024} KiB")
    print(f"OK: {len(jobs)} compiles in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
