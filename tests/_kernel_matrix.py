"""The case matrix and the checks shared by the kernel-backend tests (OpenCL on a CPU, CuPy on
a GPU): run the public API on device arrays, compare with the float64 reference
(tests/_reference.py) and with the NumPy backend on the same inputs."""
from __future__ import annotations

import itertools
from dataclasses import dataclass
from typing import Callable, Tuple

import numpy as np

import cupy_abn
from tests._cases import ACTIVATIONS, SHAPES, case_id, make_inputs, rng_for
from tests._reference import assert_close, ref_backward, ref_forward

F16, F32, F64 = np.float16, np.float32, np.float64

# Kernel backend vs NumPy backend on the same inputs: the same algorithm with a different
# summation order, so a few ulps in the accumulation dtype, one ulp of float16 storage.
AGREE = {np.dtype(F64): 1e-11, np.dtype(F32): 2e-5, np.dtype(F16): 2e-3}

# Large enough that the reductions use several blocks per channel (B > 1) and full blocks on a
# device with 1 or 2 compute units (m = 9216 per channel).
BIG = (4, 2, 48, 48)


@dataclass(frozen=True)
class Case:
    shape_name: str
    shape: Tuple[int, ...]
    dtype: type
    act: str
    mode: str
    training: bool
    param_dtype: type = None
    hard: bool = False     # mean 1e4, std 1e-2
    full: bool = False     # the full tier only (the default tier runs a covering subset)

    @property
    def id(self) -> str:
        parts = [self.shape_name, self.dtype, self.act, self.mode,
                 "train" if self.training else "eval"]
        if self.param_dtype is not None:
            parts.append("p" + np.dtype(self.param_dtype).name)
        if self.hard:
            parts.append("mean1e4-std1e-2")
        return case_id(*parts)


def _matrix():
    """The whole case matrix; ``full`` marks the cases the default tier leaves out.  The
    default subset still takes every shape, dtype, mode, activation and train/eval, each
    (dtype, mode, train/eval) on one shape in turn (tests/test_pocl_coverage.py checks that
    it launches every kernel family per dtype class, path and mode the whole matrix does)."""
    cases = []
    modes = ("standard", "inplace", "inplace_v1")
    # Every shape (odd sizes included) x dtype x mode x train/eval, one activation.
    shapes = list(SHAPES.items())
    for k, (dt, mode, tr) in enumerate(itertools.product((F64, F32, F16), modes,
                                                         (True, False))):
        for i, (name, shape) in enumerate(shapes):
            cases.append(Case(name, shape, dt, "leaky_relu", mode, tr,
                              full=i != k % len(shapes)))
    # Every dtype x activation x mode x train/eval on one shape.
    for (ai, act), (mi, mode) in itertools.product(enumerate(("identity", "elu")),
                                                   enumerate(modes)):
        for di, dt in enumerate((F64, F32, F16)):
            for tr in (True, False):
                cases.append(Case("NCDHW" if dt == F64 else "NCHW",
                                  SHAPES["NCDHW" if dt == F64 else "NCHW"], dt, act, mode, tr,
                                  full=(di != (ai * 3 + mi) % 3 or tr != (mi % 2 == 0))))
    # relu (standard only), float16 parameters with float16 x.
    for di, (dt, tr) in enumerate(itertools.product((F64, F32, F16), (True, False))):
        cases.append(Case("NCL", SHAPES["NCL"], dt, "relu", "standard", tr,
                          full=di not in (0, 3, 4)))
    for mi, (mode, tr) in enumerate(itertools.product(modes, (True, False))):
        cases.append(Case("primes", SHAPES["primes"], F16, "leaky_relu", mode, tr,
                          param_dtype=F16, full=mi % 3 == 1))
    # Several blocks per channel.
    for dt, mode in ((F32, "inplace"), (F64, "standard"), (F16, "inplace_v1")):
        cases.append(Case("big", BIG, dt, "elu", mode, True))
    # Numerically hard data.
    for mode in modes:
        cases.append(Case("hard", (8, 3, 16, 16), F32, "identity", mode, True, hard=True))
    return cases


CASES = _matrix()


# Rows of whole 16-byte packs (the vector path) and rows that are not (the scalar path), per
# dtype: (shape, dtype, VEC of the streaming launches); test_kernels_opencl.py runs each on
# the resident and the two-pass path.
PATH_SHAPES = [((2, 3, 8, 8), F32, "4"), ((2, 3, 4, 4), F16, "8"), ((2, 3, 2, 3), F64, "2"),
               ((2, 3, 7, 7), F32, "1"), ((2, 3, 2, 6), F16, "1")]
PATH_IDS = ["f32-8x8-packs", "f16-4x4-packs", "f64-2x3-packs", "f32-7x7-scalar",
            "f16-2x6-scalar"]


def params(cases):
    """pytest params of ``cases``, the full-tier ones marked ``full``."""
    import pytest
    return [pytest.param(c, id=c.id, marks=[pytest.mark.full] if c.full else [])
            for c in cases]

# Channels-last x (rows of C values, viewed as (M, C, 1)): the *_last kernels
# (kernels/channel_tile.cuh).  Tiles of 32 threads along C: C/VEC = 10 packs (one partial
# tile), 40 (two tiles), a scalar row (C = 37: 2 tiles); enough rows for B > 1 blocks per tile.
# float16 packs in one mode (train and eval): PoCL needs minutes per float16 reduction variant.
LAST_SHAPES = {"last-f32-packs10": ((640, 40), F32), "last-f16-packs40": ((384, 320), F16),
               "last-f64-packs35": ((260, 70), F64), "last-f32-scalar37": ((300, 37), F32),
               "last-f16-rows3": ((3, 24), F16)}
LAST_CASES = [Case(name, shape, dt, "leaky_relu", mode, tr)
              for (name, (shape, dt)), mode, tr in itertools.product(
                  LAST_SHAPES.items(), ("standard", "inplace", "inplace_v1"), (True, False))
              if (tr or mode == "inplace_v1") and (dt != F16 or mode == "inplace")] + [
              Case(name, shape, F16, "leaky_relu", "inplace", False)
              for name, (shape, dt) in LAST_SHAPES.items() if dt == F16] + [
              Case("last-f32-packs10", (640, 40), F32, act, "standard", True)
              for act in ("relu", "identity", "elu")]


def inputs(case: Case):
    x, gamma, beta, rm, rv, dz = make_inputs(case.shape, case.dtype, case.act, case.mode,
                                             case.training, param_dtype=case.param_dtype)
    if case.hard:
        rng = rng_for("hard", case.id)
        x = (1e4 + 1e-2 * rng.standard_normal(case.shape)).astype(case.dtype)
    return x, gamma, beta, rm, rv, dz


def _api(x, gamma, beta, rm, rv, dz, case, param):
    kw = dict(training=case.training, activation=case.act, activation_param=param,
              mode=case.mode)
    z, saved = cupy_abn.abn_forward(x, gamma, beta, rm, rv, **kw)
    z_value = z.copy()
    # dx into the buffer of dz (the memory-saving call) in the in-place modes.
    out = dz if case.mode != "standard" else None
    dx, dg, db = cupy_abn.abn_backward(saved, dz, out=out)
    return z, z_value, saved, dx, dg, db


def check_case(case: Case, to_device: Callable, to_host: Callable) -> None:
    """Run ``case`` through the API on device arrays; compare with float64 and with NumPy."""
    x, gamma, beta, rm, rv, dz = inputs(case)
    param = ACTIVATIONS.get(case.act, 0.0)
    dt = np.dtype(case.dtype)
    m = x.size // x.shape[1]

    dev = [to_device(a) for a in (x, gamma, beta, rm, rv, dz)]
    z, z_val, saved, dx, dg, db = _api(*dev, case, param)
    if case.mode != "standard":
        assert z is dev[0], "in-place modes must return the input buffer"
        assert dx is dev[5], "out=grad_output must be written in place"
    host = dict(z=to_host(z_val), dx=to_host(dx), dg=to_host(dg), db=to_host(db),
                rm=to_host(dev[3]), rv=to_host(dev[4]), stats=to_host(saved.stats))
    assert host["z"].dtype == dt and host["dx"].dtype == dt
    assert host["dg"].dtype == gamma.dtype and host["db"].dtype == beta.dtype

    npy = [a.copy() for a in (x, gamma, beta, rm, rv, dz)]
    nz, nz_val, nsaved, ndx, ndg, ndb = _api(*npy, case, param)

    ref = ref_forward(x, gamma, beta, rm, rv, training=case.training, activation=case.act,
                      param=param, mode=case.mode)
    rdx, rdg, rdb = ref_backward(x, gamma, beta, dz, training=case.training,
                                 activation=case.act, param=param, mode=case.mode,
                                 running_mean=rm, running_var=rv)
    sums = max(1.0, float(np.sqrt(m)))
    if case.hard:
        np.testing.assert_allclose(host["stats"][1], ref["var"], rtol=1e-3)
        np.testing.assert_allclose(host["stats"][0], ref["mean"], rtol=1e-7)
        np.testing.assert_allclose(host["rv"], ref["running_var"], rtol=1e-3)
        assert np.abs(host["z"].astype(F64) - ref["z"]).max() < 0.1
    else:
        assert_close(host["z"], ref["z"], dt, f"z {case.id}")
        stats_kind = "forward" if np.dtype(gamma.dtype) == F16 else "stats"
        pdt = F16 if np.dtype(gamma.dtype) == F16 else dt
        assert_close(host["rm"], ref["running_mean"], pdt, "running_mean", stats_kind)
        assert_close(host["rv"], ref["running_var"], pdt, "running_var", stats_kind)
        assert_close(host["dx"], rdx, dt, f"dx {case.id}", "backward")
        assert_close(host["dg"], rdg, dt, f"dgamma {case.id}", "backward", scale=sums)
        assert_close(host["db"], rdb, dt, f"dbeta {case.id}", "backward", scale=sums)

    # The NumPy backend on the same inputs.
    tol = AGREE[dt]
    for name, got, want, scale in (("z", host["z"], nz_val, 1.0), ("dx", host["dx"], ndx, 1.0),
                                   ("dgamma", host["dg"], ndg, sums),
                                   ("dbeta", host["db"], ndb, sums),
                                   ("running_mean", host["rm"], npy[3], 1.0),
                                   ("running_var", host["rv"], npy[4], 1.0),
                                   ("stats", host["stats"], nsaved.stats, 1.0)):
        if case.hard and name in ("z", "dx", "dgamma", "dbeta"):
            scale = 1e3    # 0.05 std from the float32 mean: both backends see it
        np.testing.assert_allclose(got.astype(F64), np.asarray(want, F64), rtol=tol,
                                   atol=tol * scale, err_msg=f"{name} vs NumPy {case.id}")


# A small set for Oclgrind (an interpreter with race detection: slow): every kernel, each
# dtype, each t kind, and one shape with several blocks per channel (B > 1 on 1 compute unit).
OCLGRIND_CASES = [
    Case("NCHW", SHAPES["NCHW"], F32, "leaky_relu", "inplace", True),
    Case("NCL", SHAPES["NCL"], F64, "elu", "standard", True),
    Case("NCDHW", SHAPES["NCDHW"], F16, "elu", "inplace", True),
    Case("primes", (2, 3, 5, 3), F16, "identity", "inplace_v1", False, param_dtype=F16),
    Case("C1", SHAPES["C1"], F32, "relu", "standard", False),
    Case("spatial1x1", SHAPES["spatial1x1"], F64, "leaky_relu", "inplace_v1", True),
    Case("N1", SHAPES["N1"], F32, "identity", "inplace", False),
    Case("big", (4, 2, 32, 32), F32, "elu", "inplace_v1", True),
    Case("big", (4, 2, 32, 32), F16, "leaky_relu", "standard", True),
    # Channels-last x (the *_last kernels): two tiles, the second partial, B > 1 blocks per
    # tile, on the vector path (float64 packs) and the scalar one (C = 37).
    Case("last", (300, 100), F64, "elu", "inplace", True),
    Case("last", (192, 37), F32, "leaky_relu", "standard", True),
    # The last-block hand-off of the fused reductions (B > 1 in forward and backward), in
    # float32 (one 32-bit word per partial) and float64 (two): channels too large for the
    # one-block resident kernels, which the smaller cases above take.
    Case("handoff", (16, 2, 32, 32), F32, "leaky_relu", "inplace", True),
    Case("handoff", (16, 2, 32, 32), F64, "elu", "standard", True),
]


def opencl_launches(queue, shape, dtype, monkeypatch, mode: str = "inplace"):
    """(kernel entry, VEC define) of every launch, in order, of a training forward and
    backward of ``shape`` on the OpenCL runtime (kernels are built before the first launch,
    so launches are recorded, not builds)."""
    import pyopencl.array as cla
    from cupy_abn import _runtime_opencl
    rt = _runtime_opencl.OpenCLRuntime
    real, real_launch = rt.function, rt.launch
    names, seen = {}, []

    def spy(self, family, entry, defines):
        vec = [d for d in defines if d.startswith("-DVEC=")]
        fn = real(self, family, entry, defines)
        names[id(fn)] = (entry, vec[0][6:] if vec else None)
        return fn

    def launch_spy(self, fn, grid, block, args):
        seen.append(names[id(fn)])
        return real_launch(self, fn, grid, block, args)

    monkeypatch.setattr(rt, "function", spy)
    monkeypatch.setattr(rt, "launch", launch_spy)
    check_case(Case("path", shape, dtype, "leaky_relu", mode, True),
               lambda a: cla.to_device(queue, np.ascontiguousarray(a)), lambda a: a.get())
    return seen
