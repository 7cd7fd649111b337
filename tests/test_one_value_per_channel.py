"""One value per channel in training (m == 1): Chainer's behaviour, not an error.

``F.batch_normalization`` warns (UserWarning) and computes: the batch variance is 0, so
xhat = 0 and y = beta; the running variance is updated with the factor m / max(m - 1, 1) = 1,
i.e. it decays towards 0.  The expectations here are computed independently in float64 from
those definitions (no library code), on the NumPy backend and on the kernels (PoCL), and for
the synchronized forward/backward when the global count is 1 (one rank holds the only sample).
"""
import os
import shutil
import signal
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest

import cupy_abn
from tests._backends import api_backends
from tests._cases import activation_params

ROOT = Path(__file__).resolve().parents[1]
DECAY, EPS = 0.9, 2e-5
ACTS = activation_params({"alpha": 0.7})
TOL = {np.dtype(np.float32): 2e-6, np.dtype(np.float64): 1e-12}


def _phi(y, act, p):
    if act == "identity":
        return y
    if act == "leaky_relu":
        return np.where(y >= 0, y, p * y)
    return np.where(y >= 0, y, p * np.expm1(np.minimum(y, 0)))


def _dphi(y, act, p):
    if act == "identity":
        return np.ones_like(y)
    if act == "leaky_relu":
        return np.where(y >= 0, 1.0, p)
    return np.where(y >= 0, 1.0, p * np.exp(np.minimum(y, 0)))


def _expected(x, gamma, beta, rm, rv, dz, act, mode):
    """float64, from the definitions: var 0, y = beta, dx = 0, dgamma = sum dy * xhat = 0."""
    x, gamma, beta, rm, rv, dz = (np.asarray(a, np.float64)
                                  for a in (x, gamma, beta, rm, rv, dz))
    c = x.shape[1]
    xc = np.moveaxis(x, 1, 0).reshape(c, -1)
    m = xc.shape[1]
    assert m == 1
    mean = xc.mean(axis=1)
    var = np.zeros(c)
    y = np.broadcast_to(beta.reshape((1, c) + (1,) * (x.ndim - 2)), x.shape)
    p = ACTS[act]
    dy = dz * _dphi(y, act, p)
    return dict(z=_phi(y, act, p), running_mean=DECAY * rm + (1 - DECAY) * mean,
                running_var=DECAY * rv + (1 - DECAY) * var * m / max(m - 1, 1),
                dx=np.zeros(x.shape), dgamma=np.zeros(c),
                dbeta=np.moveaxis(dy, 1, 0).reshape(c, -1).sum(axis=1))


def _inputs(shape, dtype, seed=0):
    rs = np.random.RandomState(seed)
    c = shape[1]
    x = (rs.randn(*shape) * 3 + 1).astype(dtype)
    gamma = (rs.uniform(0.5, 1.5, c) * rs.choice([-1, 1], c)).astype(dtype)
    beta = rs.randn(c).astype(dtype)
    rm = rs.randn(c).astype(dtype)
    rv = rs.uniform(0.5, 2, c).astype(dtype)
    dz = rs.randn(*shape).astype(dtype)
    return x, gamma, beta, rm, rv, dz


@pytest.mark.parametrize("dtype", [np.float32, np.float64], ids=["f32", "f64"])
@pytest.mark.parametrize("mode", ["standard", "inplace", "inplace_v1"])
@pytest.mark.parametrize("act", sorted(ACTS))
@pytest.mark.parametrize("shape", [(1, 5), (1, 4, 1, 1), (1, 3, 1)], ids=str)
@pytest.mark.parametrize("backend", api_backends())
def test_one_value_per_channel_warns_and_computes(backend, shape, act, mode, dtype):
    to_device, to_host = backend
    x, gamma, beta, rm, rv, dz = _inputs(shape, dtype)
    want = _expected(x, gamma, beta, rm, rv, dz, act, mode)
    dev = [to_device(a) for a in (x, gamma, beta, rm, rv, dz)]
    with pytest.warns(UserWarning, match="one value per channel"):
        z, saved = cupy_abn.abn_forward(*dev[:5], training=True, decay=DECAY, eps=EPS,
                                        activation=act, activation_param=ACTS[act],
                                        mode=mode)
    z_host = to_host(z).copy()
    dx, dg, db = cupy_abn.abn_backward(saved, dev[5])
    tol = TOL[np.dtype(dtype)]
    # beta is an exact float: y = beta up to the rounding of g * 0 + beta.
    np.testing.assert_allclose(z_host, want["z"], rtol=tol, atol=tol)
    np.testing.assert_allclose(to_host(dev[3]), want["running_mean"], rtol=tol, atol=tol)
    np.testing.assert_allclose(to_host(dev[4]), want["running_var"], rtol=tol, atol=tol)
    np.testing.assert_allclose(to_host(dx), want["dx"], atol=tol)
    np.testing.assert_allclose(to_host(dg), want["dgamma"], atol=tol)
    np.testing.assert_allclose(to_host(db), want["dbeta"], rtol=tol, atol=tol)
    assert np.isfinite(to_host(saved.stats)).all()


def test_running_variance_factor_is_unbiased_for_m2_and_one_for_m1():
    """m / max(m - 1, 1): 2 for two values per channel, 1 (not a division by 0) for one."""
    for m, factor in ((2, 2.0), (1, 1.0)):
        x = np.arange(2 * m, dtype=np.float64).reshape(m, 2) * 3.0
        rv = np.full(2, 5.0)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            cupy_abn.abn_forward(x.copy(), np.ones(2), np.zeros(2), np.zeros(2), rv,
                                 decay=0.5, mode="standard")
        np.testing.assert_allclose(rv, 0.5 * 5.0 + 0.5 * x.var(axis=0) * factor, rtol=1e-15)


def _mpiexec():
    here = Path(sys.executable).parent / "mpiexec"
    return str(here) if here.exists() else shutil.which("mpiexec")


def test_synchronized_global_count_one():
    """Two ranks, one holding the only sample and the other an empty batch: the same warning,
    outputs, running statistics and gradients as one process (and the float64 expectation)."""
    pytest.importorskip("mpi4py")
    mpiexec = _mpiexec()
    if mpiexec is None:
        pytest.skip("mpiexec not found (pip install mpich)")
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]),
        OMP_NUM_THREADS="1")
    cmd = [mpiexec, "-n", "2", sys.executable, str(Path(__file__).resolve()), "--mpi-worker"]
    proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"mpiexec did not finish in 120 s\n{out}{err}")
    assert proc.returncode == 0, f"{out}\n{err[-4000:]}"
    assert out.count("global-count-1 ok") == 2, out + err[-2000:]


def _mpi_worker() -> None:
    """Rank 0: x of shape (1, C); rank 1: (0, C).  Checked against the single-process API."""
    from mpi4py import MPI

    from cupy_abn.sync import sync_abn_backward, sync_abn_forward

    comm = MPI.COMM_WORLD
    x, gamma, beta, rm, rv, dz = _inputs((1, 3), np.float64, seed=4)
    want = _expected(x, gamma, beta, rm, rv, dz, "leaky_relu", "inplace")
    kw = dict(decay=DECAY, eps=EPS, activation="leaky_relu", activation_param=0.1,
              mode="inplace")
    local = slice(0, 1) if comm.rank == 0 else slice(1, 1)
    xl, dzl = x[local].copy(), dz[local].copy()
    srm, srv = rm.copy(), rv.copy()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        z, saved = sync_abn_forward(xl, gamma, beta, srm, srv, comm, **kw)
    assert any("one value per channel" in str(w.message) for w in caught), caught
    dx, dg, db = sync_abn_backward(saved, dzl, comm)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        z1, saved1 = cupy_abn.abn_forward(x.copy(), gamma, beta, rm, rv, **kw)
    dx1, dg1, db1 = cupy_abn.abn_backward(saved1, dz.copy())
    np.testing.assert_allclose(z, z1[local], rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(z, want["z"][local], rtol=1e-12, atol=1e-12)
    for got, one, exp in ((srm, rm, want["running_mean"]), (srv, rv, want["running_var"])):
        np.testing.assert_allclose(got, one, rtol=1e-14, atol=1e-14)
        np.testing.assert_allclose(got, exp, rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(dx, dx1[local], atol=1e-14)
    np.testing.assert_allclose(dg, dg1, atol=1e-14)
    np.testing.assert_allclose(db, db1, rtol=1e-14, atol=1e-14)
    np.testing.assert_allclose(db, want["dbeta"], rtol=1e-12, atol=1e-12)
    print(f"rank {comm.rank} global-count-1 ok", flush=True)


if __name__ == "__main__" and "--mpi-worker" in sys.argv:
    _mpi_worker()
