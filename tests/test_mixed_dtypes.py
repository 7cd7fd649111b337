"""x and parameters of different float dtypes, as Chainer allows them: the computation
accumulates in the wider of x's accumulation type (float32 for float16 x) and the parameters'
dtype; z and dx keep x's dtype, dgamma/dbeta and the running statistics the parameters'.

Every (x, parameter) pair of float16/float32/float64, on NumPy and on the kernels (PoCL; CuPy
on a GPU), against the float64 reference computed from the same (rounded) inputs.  A quantity
is held to the tolerance of the narrower dtype it passes through."""
import numpy as np
import pytest

import cupy_abn
from cupy_abn._precision import accum_dtype
from tests._backends import api_backends
from tests._cases import case_id, make_inputs
from tests._reference import TOL, assert_close, ref_backward, ref_forward

FLOATS = (np.float16, np.float32, np.float64)
PAIRS = [(x, p) for x in FLOATS for p in FLOATS]
SHAPE = (4, 3, 8, 8)     # rows of whole packs: the vector path (8x8 = 64 elements)
SHAPE_SCALAR = (3, 2, 5, 7)


def _looser(kind, *dtypes):
    """The TOL kind of whichever dtype has the larger tolerance."""
    return max((np.dtype(d) for d in dtypes), key=lambda d: TOL[d][kind][0])


def test_accumulation_rule():
    f16, f32, f64 = (np.dtype(d) for d in FLOATS)
    assert accum_dtype(f16) == f32 and accum_dtype(f16, f16) == f32
    assert accum_dtype(f32, f64) == f64 and accum_dtype(f64, f16) == f64
    assert accum_dtype(f16, f32) == f32 and accum_dtype(f32, f16) == f32


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("mode", ["standard", "inplace"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
@pytest.mark.parametrize("shape", [SHAPE, SHAPE_SCALAR], ids=case_id)
@pytest.mark.parametrize("xd,pd", PAIRS, ids=[case_id(x, p) for x, p in PAIRS])
def test_mixed_dtypes_against_float64(backend, mode, training, shape, xd, pd):
    to_device, to_host = backend
    x, gamma, beta, rm, rv, dz = make_inputs(shape, xd, "mixed", np.dtype(pd).name,
                                             param_dtype=pd)
    m = x.size // x.shape[1]
    ref = ref_forward(x, gamma, beta, rm, rv, training=training, mode=mode)
    rdx, rdg, rdb = ref_backward(x, gamma, beta, dz, training=training, mode=mode,
                                 running_mean=rm, running_var=rv)
    rmd, rvd = to_device(rm), to_device(rv)
    z, saved = cupy_abn.abn_forward(to_device(x), to_device(gamma), to_device(beta), rmd, rvd,
                                    training=training, mode=mode)
    assert saved.stats.dtype == accum_dtype(xd, pd)
    zh = to_host(z)
    assert zh.dtype == np.dtype(xd)
    assert_close(zh, ref["z"], _looser("forward", xd, pd), "z")
    for name, got in (("running_mean", rmd), ("running_var", rvd)):
        got = to_host(got)
        assert got.dtype == np.dtype(pd), name
        assert_close(got, ref[name], _looser("forward", xd, pd), name)
    dx, dg, db = cupy_abn.abn_backward(saved, to_device(dz))
    dx, dg, db = to_host(dx), to_host(dg), to_host(db)
    assert dx.dtype == np.dtype(xd) and dg.dtype == db.dtype == np.dtype(pd)
    assert_close(dx, rdx, _looser("backward", xd, pd), "dx", "backward")
    for name, got, want in (("dgamma", dg, rdg), ("dbeta", db, rdb)):
        assert_close(got, want, _looser("backward", xd, pd), name, "backward",
                     scale=max(1.0, float(np.abs(want).max())) * np.sqrt(m))


@pytest.mark.parametrize("xd,pd", [(np.float32, np.float64), (np.float64, np.float32),
                                   (np.float16, np.float64), (np.float32, np.float16)],
                         ids=lambda d: np.dtype(d).name)
def test_chainer_link_with_other_parameter_dtype_matches_batch_normalization(xd, pd):
    """ABN(identity) with parameters of another dtype than x computes what Chainer's
    L.BatchNormalization does with the same dtypes (output, gradients, running statistics)."""
    C = pytest.importorskip("cupy_abn.chainer")
    import chainer
    import chainer.links as L
    x = make_inputs((5, 3, 4), xd, "mixed-chainer")[0]
    ours = C.ABN(3, dtype=pd, activation="identity")
    theirs = L.BatchNormalization(3, dtype=pd)
    outs = []
    for link in (ours, theirs):
        v = chainer.Variable(x.copy())
        link.cleargrads()
        y = link(v)
        chainer.functions.sum(y * y).backward()
        outs.append((y.array, v.grad, link.gamma.grad, link.beta.grad, link.avg_mean,
                     link.avg_var))
    for name, a, b in zip(("y", "dx", "dgamma", "dbeta", "avg_mean", "avg_var"), *outs):
        assert a.dtype == b.dtype, name
        kind = "forward" if name in ("y", "avg_mean", "avg_var") else "backward"
        assert_close(a, b, _looser(kind, xd, pd), name, kind,
                     scale=max(1.0, float(np.abs(b.astype(np.float64)).max())) * (
                         np.sqrt(20) if name in ("dgamma", "dbeta") else 1))


def test_float64_accumulation_of_narrow_data_takes_the_scalar_path():
    """float16/float32 packs with float64 accumulators would spill (8 or 4 doubles a pack,
    several packs in flight): the backend takes the scalar path, and no such vector variant
    is listed (so none is compiled, and the no-spill test covers what runs)."""
    from cupy_abn import _kernel_source as K
    f16, f32, f64 = np.float16, np.float32, np.float64
    assert not K.vector_fits(f32, f64) and not K.vector_fits(f16, f64)
    assert K.vector_fits(f64, f64) and K.vector_fits(f16, f32) and K.vector_fits(f32, f32)
    for family, defines in K.all_variants():
        d = dict(s[2:].split("=") for s in defines)
        if int(d.get("VEC", 1)) > 1 and d.get("STORE_BITS") != "64":
            assert d["ACC_BITS"] == "32", (family, defines)
