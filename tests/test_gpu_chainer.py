"""Chainer on CuPy arrays (issue 20, part 4): the links ``ABN`` and ``InPlaceABN`` in a small
network, and the demo's ResNet, trained a few steps on a GPU and on NumPy from the same
initial weights and data; every parameter and running statistic must agree after the steps.

Both sides run the same Chainer graph; what differs is the array library: the kernel backend
against the NumPy backend inside the layers, cuBLAS convolutions against NumPy's, and Chainer's
GPU paths (``FunctionNode`` on CuPy arrays, the in-place graph bookkeeping of
``cupy_abn/chainer/_graph.py``, ``to_device``).

Tolerances, ``|gpu - cpu| <= atol * max(1, max|cpu|) + rtol * |cpu|`` per array:

* float64 links: 1e-9 and 1e-9 (the two backends agree to ~1e-15 per operation);
* float32 demo network: 1e-4 and 1e-4.  The same network in float32 and in float64 on NumPy
  differ by at most 2.4e-7 (relative to each array's largest value) after these steps:
  float32 rounding, which a different summation order on the GPU changes by as much
  again; a real error (a wrong gradient, a missed update) moves parameters by 1e-3 or more.

``test_*_body_on_numpy`` (CPU, default tier) run the same bodies with NumPy on both sides, so
that the GPU tests' code runs here.  GPU time: 4 small trainings (under 1 s each once
compiled; float64 and float32 variants to compile).
"""
import copy
import warnings

import numpy as np
import pytest

from tests._backends import NO_GPU, gpu_count

GPU = [pytest.mark.gpu, pytest.mark.skipif(gpu_count() < 1, reason=NO_GPU)]
SLOPE = 0.1
LINK_KINDS = ("abn", "inplace", "inplace_v1")
LINK_STEPS, LINK_BATCH = 4, 8
TOL = {np.dtype(np.float64): (1e-9, 1e-9), np.dtype(np.float32): (1e-4, 1e-4)}


def _chainer():
    """cupy_abn.chainer (first: it makes Chainer importable under NumPy 2), then Chainer."""
    import cupy_abn.chainer as C
    import chainer
    return C, chainer


def _device(name):
    C, chainer = _chainer()
    device = chainer.get_device(name)
    if device.xp is not np:
        from chainer.backends import cuda
        assert cuda.available, (
            f"Chainer cannot use CuPy here: {getattr(cuda, '_resolution_error', None)!r}")
    return device


def _state(net):
    """Every parameter and running statistic of ``net``, as float64 NumPy arrays."""
    C, chainer = _chainer()
    host = chainer.get_device("@numpy")
    out = {name: np.asarray(host.send(p.array), np.float64) for name, p in net.namedparams()}
    for name, link in net.namedlinks():
        for stat in ("avg_mean", "avg_var"):
            value = getattr(link, stat, None)
            if value is not None:
                out[f"{name}/{stat}"] = np.asarray(host.send(value), np.float64)
    return out


def assert_same_state(got, want, dtype, what):
    rtol, atol = TOL[np.dtype(dtype)]
    assert got.keys() == want.keys()
    for name, w in want.items():
        g = got[name]
        err = np.abs(g - w)
        bound = atol * max(1.0, float(np.abs(w).max())) + rtol * np.abs(w)
        assert (err <= bound).all(), (
            f"{what} {name}: {int((err > bound).sum())}/{w.size} values off, worst "
            f"|err| {err.max():.3g} (rtol {rtol}, atol {atol})")


# ---- the links in a small network ------------------------------------------------------------
def _link_net(kind, dtype=np.float64, seed=0):
    from tests._chainer_nets import Net, abn_norm   # imports Chainer: only where it runs
    np.random.seed(seed)
    return Net(abn_norm(kind, dtype, SLOPE), width=8, dtype=dtype)


def _train_links(net, device, dtype):
    C, chainer = _chainer()
    import chainer.functions as F
    opt = chainer.optimizers.MomentumSGD(lr=0.05)
    opt.setup(net)
    losses = []
    for i in range(LINK_STEPS):
        rs = np.random.RandomState(100 + i)
        x = device.send(rs.randn(LINK_BATCH, 3, 8, 8).astype(dtype))
        t = device.send(rs.randint(0, 5, LINK_BATCH).astype(np.int32))
        with warnings.catch_warnings():
            # n1 reads the first convolution's output; should Chainer hand it over as a leaf,
            # the in-place layer copies it, with a warning
            warnings.simplefilter("ignore", C.InPlaceFallbackWarning)
            loss = F.softmax_cross_entropy(net(x), t)
        net.cleargrads()
        loss.backward()
        opt.update()
        losses.append(float(loss.array))
    return np.array(losses)


def check_links(kind, device_name, dtype=np.float64):
    """The network with ``kind`` layers trained on ``device_name`` and on NumPy from the same
    weights and data: losses and every parameter and running statistic agree."""
    net = _link_net(kind, dtype)
    other = copy.deepcopy(net)
    device = _device(device_name)
    other.to_device(device)
    assert other.xp is device.xp
    got = _train_links(other, device, dtype)
    want = _train_links(net, _device("@numpy"), dtype)
    rtol, atol = TOL[np.dtype(dtype)]
    np.testing.assert_allclose(got, want, rtol=rtol, atol=atol, err_msg=f"{kind} losses")
    assert_same_state(_state(other), _state(net), dtype, f"{kind} on {device_name}")
    return got


@pytest.mark.parametrize("kind", [pytest.param(k, marks=GPU) for k in LINK_KINDS])
def test_links_on_cupy(kind):
    losses = check_links(kind, "@cupy:0")
    print(f"{kind}: losses on the GPU {losses.tolist()}")


@pytest.mark.parametrize("kind", ["abn", "inplace"])
def test_links_body_on_numpy(kind):
    """The GPU test's body with NumPy on both sides: the copies train alike, bit for bit."""
    check_links(kind, "@numpy")


# ---- the demo network ------------------------------------------------------------------------
DEMO = dict(widths=(8, 16), blocks=1, size=8, dtype="float32")
DEMO_STEPS, DEMO_BATCH, DEMO_LR = 3, 8, 0.05


def check_demo(device_name):
    """The demo's in-place ResNet (``cupy_abn/demo/network.py``) trained ``DEMO_STEPS`` steps
    on ``device_name`` and on NumPy: the same weights (``network.build`` seeds them) and
    batches (``SyntheticData``)."""
    C, chainer = _chainer()
    from cupy_abn.demo import network
    cfg = network.Config(**DEMO)
    data = network.SyntheticData(cfg)
    device = _device(device_name)
    runs = {}
    for name, dev in (("device", device), ("numpy", _device("@numpy"))):
        net = network.build("inplace", cfg)
        net.to_device(dev)
        opt = chainer.optimizers.MomentumSGD(lr=DEMO_LR)
        opt.setup(net)
        losses = []
        for i in range(DEMO_STEPS):
            x, t = data.batch(i, DEMO_BATCH)
            losses.append(network.train_step(net, opt, dev.send(x), dev.send(t)))
        runs[name] = (np.array(losses), _state(net))
    rtol, atol = TOL[np.dtype(cfg.dtype)]
    np.testing.assert_allclose(runs["device"][0], runs["numpy"][0], rtol=rtol, atol=atol,
                               err_msg="demo losses")
    assert_same_state(runs["device"][1], runs["numpy"][1], cfg.dtype, "demo network")
    return runs["device"][0]


@pytest.mark.parametrize("device_name", [pytest.param("@cupy:0", marks=GPU)])
def test_demo_network_on_cupy(device_name):
    losses = check_demo(device_name)
    print(f"demo network: losses on the GPU {losses.tolist()}")


def test_demo_body_on_numpy():
    check_demo("@numpy")
