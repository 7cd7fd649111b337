"""What the GPU tests of the launch properties share with the CPU tests that prove, without a
GPU, that their shapes have those properties (issue 20).

* The shapes: channels-last NHWC x reduced over ``axis=(0, 1, 2)`` with several blocks per
  tile (``LAST``), and float16 NCS x on 8-element packs (``HALF_NCS``).  The GPU tests and the
  CPU plan tests both read them from here, so they cannot drift apart.
* :func:`h200_plan`: the launches the library makes for a shape on an H200 (132 SMs, 1,024
  threads per block, sm_90), recorded without a GPU by ``benchmarks/static/launches.py``'s
  ``RecordingRuntime`` through the public API.  Its occupancy is either what the driver
  reports for the compiled variant (``report_occupancy``: registers and shared memory of
  the NVRTC 13 sm_90 cubins of the committed static report, through the driver's occupancy
  formula, ``cupy_abn._occupancy``) or any fixed number of blocks per SM
  (``fixed_occupancy``), so that a test can ask for the property at every occupancy a
  driver could report.
* :func:`spy_launches`: the same launch summaries from a real runtime (CuPy or PoCL), so that
  the GPU test asserts the property on the launches it actually made.
* :func:`check_nhwc`, :func:`check_ncs`: the bodies of the GPU tests (device arrays through
  the API, channels-last with ``axis=(0, 1, 2)``, against the float64 reference and the
  NumPy backend), which run on PoCL too.
* :func:`away_from_kink`: test data whose outputs keep off the activation's kink (see there).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

import cupy_abn
from cupy_abn._kernel_backend import tile_width
from tests._cases import ACTIVATIONS, make_inputs
from tests._kernel_matrix import AGREE
from tests._reference import assert_close, ref_backward, ref_forward

F16, F32, F64 = np.float16, np.float32, np.float64
ROOT = Path(__file__).resolve().parents[1]

# ---- the H200 ---------------------------------------------------------------------------------
H200_SMS = 132            # NVIDIA H200 SXM: 132 SMs of sm_90 (as the H100 SXM)
H200_MAX_BLOCK = 1024     # MaxThreadsPerBlock
REPORT = ROOT / "benchmarks" / "results" / "static_report.json"
REPORT_MAJOR = 13         # the target machine's CuPy is for CUDA 13: NVRTC 13's sm_90 cubins
MAX_BLOCKS_PER_SM = 32    # sm_90: no driver reports more resident blocks per SM

MODES = ("standard", "inplace", "inplace_v1")
ACT = "leaky_relu"
PARAM = ACTIVATIONS[ACT]  # 0.1

# ---- the shapes -------------------------------------------------------------------------------
# Channels-last NHWC, normalized over axis=(0, 1, 2): the stages see (M, C, 1) with
# M = N*H*W = 2,048 rows.  A tile is tile_width(C / VEC) threads along C (at most a warp); the
# reduction of a tile runs on `parts` blocks.  Few tiles and 2,048 rows make parts > 1 at any
# occupancy (the plan test below proves it for 1 .. 32 blocks per SM).
LAST: Dict[str, Tuple[Tuple[int, int, int, int], type]] = {
    # 160 float32 = 40 packs of 4: two tiles of 32 threads, the second 8 packs wide
    "f32-C160": ((8, 16, 16, 160), F32),
    # 264 float16 = 33 packs of 8: two tiles, the second one pack wide
    "f16-C264": ((8, 16, 16, 264), F16),
    # 96 float16 = 12 packs of 8: one tile of 16 threads
    "f16-C96": ((8, 16, 16, 96), F16),
}
LAST_VEC = {np.dtype(F32): 4, np.dtype(F16): 8}

# float16 (N, C, H, W) with rows (H*W) of whole 8-element packs: VEC = 8 in every streaming
# kernel.  "two-pass": 2,048 packs per channel, more than one 1,024-thread block holds
# (channel_moments -> normalize_activate, grad_sums -> grad_input, parts > 1); "resident":
# 256 packs per channel, the one-launch kernels (normalize_train_resident, grad_resident).
HALF_NCS: Dict[str, Tuple[int, int, int, int]] = {
    "two-pass": (16, 16, 32, 32),
    "resident": (8, 16, 16, 16),
}

REDUCTIONS = ("channel_moments", "channel_moments_last", "grad_sums", "grad_sums_last")


def ncs_of(shape, channels_last: bool) -> Tuple[int, int, int]:
    """(N, C, S) as the stages see x: NHWC over axis (0, 1, 2) is (N*H*W, C, 1)."""
    if channels_last:
        return int(np.prod(shape[:-1])), int(shape[-1]), 1
    return int(shape[0]), int(shape[1]), int(np.prod(shape[2:]))


# ---- launch summaries -------------------------------------------------------------------------
@dataclass(frozen=True)
class Planned:
    """One launch: its kernel entry, VEC, grid, block, and for a reduction its blocks per
    channel (NCS) or per tile (channels-last), else None."""
    entry: str
    vec: int
    grid: int
    block: int
    parts: Optional[int]
    defines: Tuple[str, ...]

    def __str__(self) -> str:
        parts = "" if self.parts is None else f" parts={self.parts}"
        return f"{self.entry}[VEC={self.vec} grid={self.grid} block={self.block}{parts}]"


def summarize(entry: str, defines, grid: int, block: int, shape) -> Planned:
    """A launch on x of ``shape`` (as the stages see it: channels on axis 1) as
    :class:`Planned`; a reduction's parts are its grid over its groups (channels, or
    channels-last tiles of ``tile_width`` packs)."""
    vec = [int(d.split("=", 1)[1]) for d in defines if d.startswith("-DVEC=")]
    vec = vec[0] if vec else 1
    parts = None
    if entry in REDUCTIONS:
        c = int(shape[1])
        if entry.endswith("_last"):
            row = c // vec
            groups = -(-row // tile_width(row))
        else:
            groups = c
        assert grid % groups == 0, (entry, grid, groups)
        parts = grid // groups
    return Planned(entry, vec, int(grid), int(block), parts, tuple(defines))


@functools.lru_cache(maxsize=1)
def _report_index():
    from benchmarks.static import compact
    doc = compact.load(REPORT)
    return {(v["family"], tuple(v["defines"])): v["kernels"]
            for v in compact.decode_variants(doc)
            if v["major"] == REPORT_MAJOR and v["target"] == "sm_90"}


def report_occupancy(fn, block: int) -> int:
    """Blocks per SM the driver reports for ``fn`` (a recorded variant) at ``block`` threads:
    the occupancy formula on its NVRTC 13 sm_90 registers and shared memory."""
    from cupy_abn import _occupancy
    kernels = _report_index()[(fn.family, tuple(fn.defines))]   # KeyError: not in the report
    k = kernels[fn.entry]
    return _occupancy.blocks_per_sm(k["registers"], k["shared"], block,
                                    _occupancy.LIMITS[90]).blocks_per_sm


def fixed_occupancy(k: int) -> Callable:
    """A driver that reports ``k`` blocks per SM, or as many as the SM's 64 warps hold."""
    return lambda fn, block: max(1, min(k, 64 // max(1, block // 32)))


def h200_plan(shape, dtype, mode: str, kind: str, occupancy=report_occupancy
              ) -> List[Planned]:
    """The launches of one pass (``kind``: forward_train, forward_eval or backward) of x of
    ``shape`` (channels on axis 1: channels-last x as ``ncs_of`` gives it) on an H200,
    through the library's API, without a GPU (arrays 4 KiB aligned, as CuPy's pool gives
    them)."""
    from benchmarks.static import launches as L
    rt = L.RecordingRuntime(occupancy, multiprocessors=H200_SMS, max_block=H200_MAX_BLOCK)
    return [summarize(ln.fn.entry, ln.fn.defines, ln.grid, ln.block, shape)
            for ln in L.record_pass(rt, tuple(shape), dtype, mode, kind, ACT, PARAM)]


def spy_launches(monkeypatch, runtime_cls, shape) -> List[Planned]:
    """Every launch made on ``runtime_cls`` from now on, on x of ``shape`` as the stages see
    it (a list filled as they happen)."""
    real_function, real_launch = runtime_cls.function, runtime_cls.launch
    names: Dict[int, Tuple[str, Tuple[str, ...]]] = {}
    seen: List[Planned] = []

    def function(self, family, entry, defines):
        fn = real_function(self, family, entry, defines)
        names[id(fn)] = (entry, tuple(defines))
        return fn

    def launch(self, fn, grid, block, args):
        entry, defines = names[id(fn)]
        seen.append(summarize(entry, defines, grid, block, shape))
        return real_launch(self, fn, grid, block, args)

    monkeypatch.setattr(runtime_cls, "function", function)
    monkeypatch.setattr(runtime_cls, "launch", launch)
    return seen


# ---- test data --------------------------------------------------------------------------------
KINK_BAND = 1e-4


def away_from_kink(x, gamma, beta, rm, rv, *, mode: str, training: bool,
                   activation: str = ACT, param: float = PARAM, band: float = KINK_BAND,
                   eps: float = 2e-5):
    """``x`` (any shape, channels on axis 1) with every element whose output y lies within
    ``band`` of 0 moved away from it, as a new array.

    leaky_relu's derivative jumps at y = 0 (1 above, the slope below), ELU's too (1 and
    alpha).  Two correct backends whose y differ by an ulp (1e-7) take different slopes for
    an element with |y| below that, and their dx there, and dgamma, dbeta, differ by O(1); in
    float16 the in-place modes also read y back from z, whose |z| < 3e-8 rounds to a signed
    zero.  With 10^5 - 10^7 elements a tensor holds such elements with a probability of a few
    percent to near 1 (float16 x takes ~1e-3 steps, so a channel's y values sit on a lattice;
    the 26 M-element stem case of tests/test_cupy_gpu.py has 4 within 1e-7 of 0).  No
    element within 1e-4 of the kink: neither can happen, and every backend is compared
    everywhere.  Moving an element changes the statistics by ~band / m; the loop repeats
    until none is left within the band."""
    if activation not in ("leaky_relu", "elu", "relu"):
        return x
    x = np.array(x)
    c = x.shape[1]
    shape = (1, c) + (1,) * (x.ndim - 2)
    axes = (0,) + tuple(range(2, x.ndim))
    g = np.asarray(gamma, F64)
    s = (g if mode == "standard" else np.abs(g) + eps).reshape(shape)
    b = np.asarray(beta, F64).reshape(shape)
    xd = x.astype(F64)
    for _ in range(20):
        if training:
            mean = xd.mean(axis=axes).reshape(shape)
            var = xd.var(axis=axes).reshape(shape)
        else:
            mean = np.asarray(rm, F64).reshape(shape)
            var = np.asarray(rv, F64).reshape(shape)
        k = s / np.sqrt(var + eps)          # y = k * (x - mean) + beta
        y = xd - mean
        y *= k
        y += b
        near = np.flatnonzero((y > -band) & (y < band))
        if not near.size:
            return x
        ch = np.unravel_index(near, x.shape)[1]
        kn = k.reshape(-1)[ch]
        side = np.where(y.reshape(-1)[near] >= 0, 1.0, -1.0)
        # push each element 2 bands further from 0 on its side: x moves by 2 band / k
        step = side * 2 * band / np.where(kn == 0, 1.0, kn)
        flat, flat_d = x.reshape(-1), xd.reshape(-1)
        old = flat[near]
        moved = (flat_d[near] + step).astype(x.dtype)
        stuck = moved == old   # float16: a step below one ulp
        moved[stuck] = np.nextafter(old[stuck], np.where(step[stuck] > 0, np.inf,
                                                         -np.inf).astype(x.dtype))
        flat[near] = moved
        flat_d[near] = moved.astype(F64)
    raise AssertionError("could not move the test data off the activation's kink")


def last_inputs(shape, dtype, mode: str, training: bool, key=("gpu-nhwc",)):
    """NHWC inputs (x, gamma, beta, running mean, running var, dz) of ``LAST`` shapes, with
    x off the activation's kink."""
    m, c, _ = ncs_of(shape, True)
    x2, gamma, beta, rm, rv, dz2 = make_inputs((m, c), dtype, *key, mode, training)
    x2 = away_from_kink(x2, gamma, beta, rm, rv, mode=mode, training=training)
    return x2.reshape(shape), gamma, beta, rm, rv, dz2.reshape(shape)


def ncs_inputs(shape, dtype, mode: str, training: bool, key=("gpu-ncs",)):
    """Inputs of an (N, C, ...) shape, with x off the activation's kink."""
    x, gamma, beta, rm, rv, dz = make_inputs(shape, dtype, *key, mode, training)
    x = away_from_kink(x, gamma, beta, rm, rv, mode=mode, training=training)
    return x, gamma, beta, rm, rv, dz


# ---- the check bodies -------------------------------------------------------------------------
def _api(arrays, mode, training, axis, to_host):
    x, gamma, beta, rm, rv, dz = arrays
    z, saved = cupy_abn.abn_forward(x, gamma, beta, rm, rv, training=training, mode=mode,
                                    activation=ACT, activation_param=PARAM, axis=axis)
    if mode != "standard":
        assert z is x, "the in-place modes return x itself"
    z_host = np.array(to_host(z))   # before anything else may write it
    out = dz if mode != "standard" else None
    dx, dg, db = cupy_abn.abn_backward(saved, dz, out=out)
    if out is not None:
        assert dx is dz, "out=grad_output is written in place"
    return dict(z=z_host, dx=np.array(to_host(dx)), dgamma=np.array(to_host(dg)),
                dbeta=np.array(to_host(db)), running_mean=np.array(to_host(rm)),
                running_var=np.array(to_host(rv)))


def run_case(inputs, mode: str, training: bool, to_device, to_host, axis=None,
             ref_shape=None):
    """The API on device arrays of ``inputs``; compared with the float64 reference and with
    the NumPy backend on the same inputs.  ``ref_shape``: the shape (channels on axis 1) the
    reference sees x as (channels-last x: (M, C)).

    Tolerances (``|err| <= atol * scale + rtol * |want|``): against float64,
    ``tests/_reference.TOL`` (float32: 2e-5 forward, 1e-4 backward; float16: 4e-3, 2e-2;
    dgamma and dbeta with scale sqrt(m)); against NumPy, ``_kernel_matrix.AGREE`` (float32
    2e-5, float16 2e-3, the same scales)."""
    x, gamma, beta, rm, rv, dz = inputs
    dt = np.dtype(x.dtype)
    got = _api([to_device(np.ascontiguousarray(a)) for a in inputs], mode, training, axis,
               to_host)
    want = _api([np.array(a) for a in inputs], mode, training, axis, np.asarray)
    shape = ref_shape or x.shape
    m = int(np.prod(shape)) // shape[1]
    kw = dict(training=training, activation=ACT, param=PARAM, mode=mode)
    ref = ref_forward(x.reshape(shape), gamma, beta, rm, rv, **kw)
    rdx, rdg, rdb = ref_backward(x.reshape(shape), gamma, beta, dz.reshape(shape),
                                 running_mean=rm, running_var=rv, **kw)
    sums = max(1.0, float(np.sqrt(m)))
    pdt = np.dtype(gamma.dtype)
    stats_kind = "forward" if pdt == F16 else "stats"
    assert_close(got["z"].reshape(shape), ref["z"], dt, "z")
    assert_close(got["dx"].reshape(shape), rdx, dt, "dx", "backward")
    assert_close(got["dgamma"], rdg, dt, "dgamma", "backward", scale=sums)
    assert_close(got["dbeta"], rdb, dt, "dbeta", "backward", scale=sums)
    assert_close(got["running_mean"], ref["running_mean"], pdt, "running_mean", stats_kind)
    assert_close(got["running_var"], ref["running_var"], pdt, "running_var", stats_kind)
    tol = AGREE[dt]
    for name in got:
        scale = sums if name in ("dgamma", "dbeta") else 1.0
        np.testing.assert_allclose(got[name].astype(F64), want[name].astype(F64), rtol=tol,
                                   atol=tol * scale, err_msg=f"{name} vs the NumPy backend")
    return got


def check_nhwc(shape, dtype, mode: str, training: bool, to_device, to_host):
    """Channels-last NHWC ``shape`` through ``axis=(0, 1, 2)`` on device arrays."""
    m, c, _ = ncs_of(shape, True)
    return run_case(last_inputs(shape, dtype, mode, training), mode, training, to_device,
                    to_host, axis=(0, 1, 2), ref_shape=(m, c))


def check_ncs(shape, dtype, mode: str, training: bool, to_device, to_host):
    return run_case(ncs_inputs(shape, dtype, mode, training), mode, training, to_device,
                    to_host)
