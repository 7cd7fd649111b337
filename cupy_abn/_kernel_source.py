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

from ._precision import accum_dtype

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
    uses: Tuple[str, ...]   # subset of ("store", "param", "act", "t", "idx", "vec", "extrema",
    #                         "saturated", "residual")


_STREAM = ("store", "idx", "vec")   # kernels that stream x-sized tensors
FILES: Dict[str, KernelFile] = {
    "channel_moments": KernelFile("channel_moments.cu", ("channel_moments",),
                                  ("channel_reduce.cuh", "channel_stats.cuh",
                                   "channel_extrema.cuh"), _STREAM + ("param", "extrema")),
    "channel_train": KernelFile("channel_train.cu", ("channel_train", "channel_eval"),
                                ("channel_reduce.cuh", "channel_stats.cuh"), ("param",)),
    "normalize_activate": KernelFile("normalize_activate.cu", ("normalize_activate",),
                                     ("activation.cuh", "residual.cuh", "channel_reduce.cuh"),
                                     _STREAM + ("param", "act", "residual")),
    "grad_sums": KernelFile("grad_sums.cu", ("grad_sums",),
                            ("activation.cuh", "residual.cuh", "channel_reduce.cuh",
                             "grad_terms.cuh", "channel_grads.cuh", "channel_saturated.cuh"),
                            _STREAM + ("param", "act", "t", "saturated", "residual")),
    "channel_backward": KernelFile("channel_backward.cu", ("channel_backward",),
                                   ("channel_reduce.cuh", "channel_grads.cuh"), ("param", "t")),
    "channel_resident": KernelFile("channel_resident.cu",
                                   ("normalize_train_resident", "grad_resident"),
                                   ("activation.cuh", "residual.cuh", "channel_reduce.cuh",
                                    "channel_stats.cuh", "grad_terms.cuh", "channel_grads.cuh"),
                                   _STREAM + ("param", "act", "t", "residual")),
    "grad_input": KernelFile("grad_input.cu", ("grad_input",),
                             ("activation.cuh", "residual.cuh", "channel_reduce.cuh",
                              "grad_terms.cuh"), _STREAM + ("act", "t", "residual")),
    # Channels-last x, viewed as (M, C) with the channel fastest (channel_tile.cuh).
    "channel_moments_last": KernelFile("channel_moments_last.cu", ("channel_moments_last",),
                                       ("channel_reduce.cuh", "channel_stats.cuh",
                                        "channel_tile.cuh", "channel_extrema.cuh"),
                                       _STREAM + ("param", "extrema")),
    "normalize_activate_last": KernelFile("normalize_activate_last.cu",
                                          ("normalize_activate_last",),
                                          ("activation.cuh", "residual.cuh",
                                           "channel_reduce.cuh", "channel_tile.cuh"),
                                          _STREAM + ("param", "act", "residual")),
    "grad_sums_last": KernelFile("grad_sums_last.cu", ("grad_sums_last",),
                                 ("activation.cuh", "residual.cuh", "channel_reduce.cuh",
                                  "grad_terms.cuh", "channel_grads.cuh", "channel_tile.cuh",
                                  "channel_saturated.cuh"),
                                 _STREAM + ("param", "act", "t", "saturated", "residual")),
    "grad_input_last": KernelFile("grad_input_last.cu", ("grad_input_last",),
                                  ("activation.cuh", "residual.cuh", "channel_reduce.cuh",
                                   "grad_terms.cuh", "channel_tile.cuh"),
                                  _STREAM + ("act", "t", "residual")),
}

# Families compiled with 32-bit indices only (the backend never asks for IDX64 there).
INDEX32_ONLY = ("channel_resident",)

# Families whose hot loop streams an x-sized tensor (vector and scalar paths).
STREAMING = tuple(f for f, kf in FILES.items() if "vec" in kf.uses)

# Bytes one pack moves on the vector path (one 128-bit access).
PACK_BYTES = 16


def _kernel_dir():
    # A source checkout's own kernels/ first: an installed (or editable) cupy_abn elsewhere in
    # the environment must not lend this checkout its kernel files.
    checkout = Path(__file__).resolve().parent.parent / "kernels"
    if (checkout / PRELUDES["cuda"]).is_file():
        return checkout
    try:
        root = importlib.resources.files("cupy_abn.kernels")
        if root.joinpath(PRELUDES["cuda"]).is_file():
            return root
    except (ModuleNotFoundError, TypeError):
        pass
    return checkout


@functools.lru_cache(maxsize=None)
def read(name: str) -> str:
    return _kernel_dir().joinpath(name).read_text(encoding="utf-8")


@functools.lru_cache(maxsize=None)
def source(family: str, target: str) -> str:
    """The translation unit of a kernel family for ``target`` ("cuda" or "opencl")."""
    kf = FILES[family]
    parts = [PRELUDES[target], "storage.h", *kf.headers, kf.file]
    return "\n".join(f"/* ---- {p} ---- */\n{read(p)}" for p in parts)


def vec_width(store, vector: bool) -> int:
    """Elements per pack: 16 bytes of ``store`` on the vector path, 1 on the scalar path."""
    return PACK_BYTES // np.dtype(store).itemsize if vector else 1


@functools.lru_cache(maxsize=4096)   # one tuple per variant, not one per launch
def defines(family: str, *, store=None, param=None, act=None, t=None, idx64=None,
            vector=False, acc=None, extrema=False, saturated=False,
            residual=False) -> Tuple[str, ...]:
    """The ``-D`` options of a variant of ``family``, from the dtypes/codes it reads.

    ``store`` and ``param`` are dtypes (or None where the family does not read them);
    ``acc``, the accumulation dtype, defaults to the wider of what they need (float64 when
    either is float64).  ``vector`` selects 16-byte packs (``VEC`` elements) instead of single
    elements in the streaming kernels.  ``extrema`` and ``saturated`` select the finiteness
    check's variants (x's extrema in the statistics, the count of saturated ELU outputs in the
    backward's sums); ``residual`` the fused residual add's (kernels/residual.cuh).
    """
    uses = FILES[family].uses
    out, read = [], []
    if "store" in uses:
        out.append(f"-DSTORE_BITS={BITS[np.dtype(store)]}")
        read.append(store)
    if "param" in uses:
        out.append(f"-DPARAM_BITS={BITS[np.dtype(param)]}")
        read.append(param)
    if acc is None:   # the library's rule (cupy_abn/_precision.py) on what the family reads
        acc = accum_dtype(*read)
    out.append(f"-DACC_BITS={BITS[np.dtype(acc)]}")
    if "act" in uses:
        out.append(f"-DACT={int(act)}")
    if "t" in uses:
        out.append(f"-DT_KIND={int(t)}")
    out.append(f"-DIDX64={int(bool(idx64)) if 'idx' in uses else 0}")
    if "vec" in uses:
        out.append(f"-DVEC={vec_width(store, vector)}")
    if "extrema" in uses:   # 1: the finiteness check's variants
        out.append(f"-DEXTREMA={int(bool(extrema))}")
    if "saturated" in uses:   # 1: the check's variants for ELU in an in-place mode
        out.append(f"-DSATURATED={int(bool(saturated))}")
    if "residual" in uses:   # 1: z = phi(y + r) (kernels/residual.cuh)
        out.append(f"-DRESIDUAL={int(bool(residual))}")
    return tuple(out)


# (x dtype, parameter dtype) pairs the library accepts (cupy_abn/_validation.py): any float
# parameters with any float x, as Chainer; accumulation in the wider of the two.
FLOATS = (np.float16, np.float32, np.float64)
DTYPE_PAIRS = tuple(itertools.product(FLOATS, FLOATS))


def vector_fits(store, acc) -> bool:
    """Whether the vector path's packs fit in registers: float64 accumulators of float16 or
    float32 packs (8 or 4 doubles per pack, several packs in flight per tensor) would spill,
    so mixed float64 accumulation of narrower data takes the scalar path."""
    return np.dtype(acc) != np.float64 or np.dtype(store) == np.float64


def extrema_vector_fits(family: str, store, idx64: bool) -> bool:
    """Whether the EXTREMA variant of ``family`` may take 16-byte packs.  Not the
    channels-last one: a pack's VEC channels each need their own extrema and tree merges
    (float16 packs with 64-bit indices would spill, and PoCL takes over 10 minutes to build
    the float16 variant), while its scalar path is still coalesced (a warp reads 32
    consecutive channels).  The check is opt-in; its channels-last statistics launch moves
    single elements."""
    return family != "channel_moments_last"


def last_vector_fits(store, idx64: bool) -> bool:
    """Whether the channels-last kernels may take 16-byte packs: not float16 packs (8
    channels' constants and sums per thread) with 64-bit indices, which spill on sm_80 and
    with CUDA 12; those tensors (over 2^31 elements) take the scalar path, still coalesced."""
    return not (idx64 and vec_width(store, True) == 8)


def residual_vector_fits(family: str, store, t, idx64: bool, saturated: bool = False) -> bool:
    """Whether a RESIDUAL variant of ``family`` may take 16-byte packs: not float16 packs
    (8 channels or elements) in the channels-last ``grad_input`` with t = xhat rebuilt from z
    (INPLACE-ABN I: eight channels' coefficients, z, dz and r in registers), nor in
    ``grad_sums`` with 64-bit indices (z, dz and r packs and 16 sums), nor in the check's
    SATURATED ``grad_sums_last``.  ELU's log1p would get a stack frame there; they take the
    scalar path (still coalesced)."""
    from ._state import T_XHAT_FROM_Y
    wide = vec_width(store, True) == 8
    if family == "grad_input_last":
        return not (wide and t == T_XHAT_FROM_Y)
    if family == "grad_sums":
        return not (wide and idx64)
    if family == "grad_sums_last" and saturated:
        return not wide
    return True


def resident_fits(store, acc, vector: bool, residual: bool = False) -> bool:
    """Whether the channel-resident kernels hold at least one pack per thread: RES_ELEMS
    (8, or 4 float64 accumulators; half as many with a residual add) elements of VEC-wide
    packs (channel_resident.cu)."""
    elems = (4 if np.dtype(acc) == np.float64 else 8) // (2 if residual else 1)
    return elems >= vec_width(store, vector)


def all_variants() -> Iterator[Tuple[str, Tuple[str, ...]]]:
    """Every distinct (family, defines) the library can ask for.

    Activation and t kind come in the pairs a mode can ask for (``relu`` is not invertible:
    plain ABN only, whose t is computed from x).  The SATURATED variants exist for ELU where
    t is rebuilt from z (the in-place modes).  The RESIDUAL variants exist for every
    family that reads r or writes dr (``residual_read``).
    """
    from ._activations import ACTIVATIONS
    from ._state import MODES, t_kind
    pairs = sorted({(a.code, t_kind(mode, training))
                    for a in ACTIVATIONS.values() for mode in MODES for training in (True, False)
                    if a.invertible or mode == "standard"})
    seen = set()
    for family in FILES:
        for (xd, pd), (act, t), idx64, vector in itertools.product(
                DTYPE_PAIRS, pairs, (False, True), (False, True)):
            if idx64 and family in INDEX32_ONLY:
                continue
            acc = accum_dtype(xd, pd)
            if vector and "vec" in FILES[family].uses and not vector_fits(xd, acc):
                continue   # the scalar path (KernelBackend.vector_path)
            if family == "channel_resident" and not resident_fits(xd, acc, vector):
                continue
            if vector and family.endswith("_last") and not last_vector_fits(xd, idx64):
                continue   # the scalar path
            for (extrema, saturated), residual in itertools.product(
                    _check_flags(family, act, t), _residual_flags(family, t)):
                if extrema and vector and not extrema_vector_fits(family, xd, idx64):
                    continue   # the scalar path
                if residual and vector and not residual_vector_fits(family, xd, t, idx64,
                                                                    saturated):
                    continue   # the scalar path
                if residual and family == "channel_resident" and not resident_fits(
                        xd, acc, vector, True):
                    continue   # two passes
                key = (family, defines(family, store=xd, param=pd, act=act, t=t, idx64=idx64,
                                       vector=vector, acc=acc, extrema=extrema,
                                       saturated=saturated, residual=residual))
                if key not in seen:
                    seen.add(key)
                    yield key


def saturation_counted(act: int, t: int) -> bool:
    """Whether a checked backward may count saturated outputs: an activation whose inverse
    clamps (ELU, at its asymptote -alpha) with t rebuilt from z (the in-place modes)."""
    from ._activations import ACTIVATIONS
    from ._state import T_XHAT_FROM_X
    return t != T_XHAT_FROM_X and any(a.code == act and a.saturated is not None
                                      for a in ACTIVATIONS.values())


def residual_read(family: str, t) -> bool:
    """Whether ``family`` has a RESIDUAL variant for ``t``: every family that takes the
    flag, but the backward's reductions only where t is rebuilt from z (plain ABN's t comes
    from x: they never read r there)."""
    from ._state import T_XHAT_FROM_X
    uses = FILES[family].uses
    return "residual" in uses and not ("saturated" in uses and t == T_XHAT_FROM_X)


def _residual_flags(family: str, t):
    return (False, True) if residual_read(family, t) else (False,)


def _check_flags(family: str, act, t):
    """(extrema, saturated) of the variants of ``family``: unchecked, then the check's."""
    uses = FILES[family].uses
    if "extrema" in uses:
        return ((False, False), (True, False))
    if "saturated" in uses and saturation_counted(act, t):
        return ((False, False), (False, True))
    return ((False, False),)
