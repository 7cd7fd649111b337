"""Kernel sources and compile-time variants, shared by every runtime.

A kernel file in ``kernels/`` is compiled as one translation unit made by concatenation:
the runtime's prelude (``prelude_cuda.cuh`` or ``prelude_opencl.h``), ``storage.h``, the headers
the file needs, then the file itself, so that OpenCL needs no include path.  What varies is
passed as ``-D`` defines; each file takes only the defines it reads, so that e.g. the
per-channel kernels are not rebuilt for every activation.
"""
from __future__ import annotations

import functools
import importlib.resources
import itertools
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, Tuple

import numpy as np

PRELUDES = {"cuda": "prelude_cuda.cuh", "opencl": "prelude_opencl.h"}

# Values of the BITS defines per dtype.
BITS = {np.dtype(np.float16): 16, np.dtype(np.float32): 32, np.dtype(np.float64): 64}

# Elements of x from which 64-bit indexing is compiled in.
IDX64_FROM = 2 ** 31


@dataclass(frozen=True)
class KernelFile:
    """One kernel family: its file, entry points, headers and the defines it reads."""
    file: str
    entries: Tuple[str, ...]
    headers: Tuple[str, ...]
    uses: Tuple[str, ...]   # subset of ("store", "param", "act", "t", "idx")


FILES: Dict[str, KernelFile] = {
    "channel_moments": KernelFile("channel_moments.cu", ("channel_moments",), (),
                                  ("store", "idx")),
    "channel_train": KernelFile("channel_train.cu", ("channel_train", "channel_eval"), (),
                                ("param",)),
    "normalize_activate": KernelFile("normalize_activate.cu", ("normalize_activate",),
                                     ("activation.cuh",), ("store", "act", "idx")),
    "grad_sums": KernelFile("grad_sums.cu", ("grad_sums",), ("activation.cuh",
                            "grad_terms.cuh"), ("store", "act", "t", "idx")),
    "channel_backward": KernelFile("channel_backward.cu", ("channel_backward",), (),
                                   ("param", "t")),
    "grad_input": KernelFile("grad_input.cu", ("grad_input",), ("activation.cuh",
                             "grad_terms.cuh"), ("store", "act", "t", "idx")),
}


def _kernel_dir():
    try:
        root = importlib.resources.files("cupy_abn.kernels")
        if root.joinpath(PRELUDES["cuda"]).is_file():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    return Path(__file__).resolve().parent.parent / "kernels"   # a source checkout


@functools.lru_cache(maxsize=None)
def read(name: str) -> str:
    return _kernel_dir().joinpath(name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def source(family: str, target: str) -> str:
    """The translation unit of a kernel family for ``target`` ("cuda" or "opencl")."""
    kf = FILES[family]
    parts = [PRELUDES[target], "storage.h", *kf.headers, kf.file]
    return "\n".join(f"/* ---- {p} ---- */\n{read(p)}" for p in parts)


def accum_bits(store_bits: int) -> int:
    return 64 if store_bits == 64 else 32


def defines(family: str, *, store=None, param=None, act=None, t=None, idx64=None
            ) -> Tuple[str, ...]:
    """The ``-D`` options of a variant of ``family``, from the dtypes/codes it reads.

    ``store`` and ``param`` are dtypes (or None where the family does not read them); the
    accumulation dtype follows from them (float64 only for float64 data).
    """
    uses = FILES[family].uses
    out = []
    if "store" in uses:
        out.append(f"-DSTORE_BITS={BITS[np.dtype(store)]}")
        acc = accum_bits(BITS[np.dtype(store)])
    if "param" in uses:
        out.append(f"-DPARAM_BITS={BITS[np.dtype(param)]}")
        acc = accum_bits(BITS[np.dtype(param)])
    out.append(f"-DACC_BITS={acc}")
    if "act" in uses:
        out.append(f"-DACT={int(act)}")
    if "t" in uses:
        out.append(f"-DT_KIND={int(t)}")
    out.append(f"-DIDX64={int(bool(idx64)) if 'idx' in uses else 0}")
    return tuple(out)


# (x dtype, parameter dtype) pairs the library accepts (cupy_abn/_validation.py).
DTYPE_PAIRS = ((np.float16, np.float16), (np.float16, np.float32), (np.float32, np.float32),
               (np.float64, np.float64))


def all_variants() -> Iterator[Tuple[str, Tuple[str, ...]]]:
    """Every distinct (family, defines) the library can ask for."""
    from ._activations import ACTIVATIONS
    from ._state import T_XHAT_FROM_X, T_XHAT_FROM_Y, T_Y
    acts = sorted(a.code for a in ACTIVATIONS.values())
    seen = set()
    for family in FILES:
        for (xd, pd), act, t, idx64 in itertools.product(
                DTYPE_PAIRS, acts, (T_XHAT_FROM_X, T_XHAT_FROM_Y, T_Y), (False, True)):
            key = (family, defines(family, store=xd, param=pd, act=act, t=t, idx64=idx64))
            if key not in seen:
                seen.add(key)
                yield key
