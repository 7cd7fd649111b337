"""Compile every kernel variant with NVRTC, no GPU needed.

NVRTC is loaded from the ``nvidia-cuda-nvrtc-cu12`` wheel when it is installed (preloaded with
``RTLD_GLOBAL`` so that cupy's binding finds it), else from the system.  Used by
``tests/test_nvrtc_compile.py`` and as ``python -m cupy_abn._nvrtc`` (prints a summary).
"""
from __future__ import annotations

import ctypes
import glob
import os
import sys
import time
from typing import Dict, Iterable, List, Optional, Tuple

from . import _kernel_source as K

ARCHS = ("compute_70", "compute_80", "compute_90")


def _preload() -> None:
    try:
        import nvidia.cuda_nvrtc as pkg
    except ImportError:
        return
    for root in pkg.__path__:
        for lib in sorted(glob.glob(os.path.join(root, "lib", "libnvrtc.so.*"))):
            ctypes.CDLL(lib, mode=ctypes.RTLD_GLOBAL)
            return


def load():
    """cupy's NVRTC binding, or raise ImportError/OSError when NVRTC is not available."""
    _preload()
    from cupy_backends.cuda.libs import nvrtc
    nvrtc.getVersion()
    return nvrtc


def compile_variant(nvrtc, family: str, defines: Tuple[str, ...], arch: str) -> str:
    """PTX of one variant for ``arch``; raises RuntimeError with the log on failure."""
    src = K.source(family, "cuda")
    prog = nvrtc.createProgram(src, f"{family}.cu", [], [])
    try:
        try:
            nvrtc.compileProgram(prog, [f"--gpu-architecture={arch}", "--std=c++11",
                                        *defines])
        except nvrtc.NVRTCError as err:
            log = nvrtc.getProgramLog(prog)
            raise RuntimeError(f"{family} {' '.join(defines)} for {arch}: {err}\n{log}")
        ptx = nvrtc.getPTX(prog)
        return ptx.decode() if isinstance(ptx, bytes) else ptx
    finally:
        nvrtc.destroyProgram(prog)


def compile_all(archs: Iterable[str] = ARCHS, variants: Optional[List] = None
                ) -> Dict[Tuple[str, str, Tuple[str, ...]], str]:
    """PTX of every variant for every architecture, keyed by (arch, family, defines)."""
    nvrtc = load()
    variants = list(K.all_variants()) if variants is None else variants
    return {(arch, fam, d): compile_variant(nvrtc, fam, d, arch)
            for arch in archs for fam, d in variants}


def main(argv=None) -> int:
    try:
        nvrtc = load()
    except (ImportError, OSError) as err:
        print(f"NVRTC not available: {err}")
        return 1
    variants = list(K.all_variants())
    print(f"NVRTC {nvrtc.getVersion()}: {len(variants)} variants x {len(ARCHS)} archs")
    failed = 0
    for arch in ARCHS:
        t0 = time.perf_counter()
        sizes = []
        for fam, d in variants:
            try:
                sizes.append(len(compile_variant(nvrtc, fam, d, arch)))
            except RuntimeError as err:
                failed += 1
                print(err)
        print(f"  {arch}: {len(sizes)} compiled, PTX {sum(sizes) // 1024} KiB, "
              f"{time.perf_counter() - t0:.1f} s")
    print("OK" if not failed else f"{failed} FAILED")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
