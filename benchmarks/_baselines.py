"""What cupy-abn is compared with: Chainer's BatchNormalization + leaky_relu, and the same
layer composed of plain array operations (CuPy on a GPU, NumPy on the CPU).

Each ``prepare_*`` returns ``{pass: callable}`` for the passes "forward_train",
"forward_eval" and "backward" on one input; the callables repeat the same work each call.
"""
from __future__ import annotations

from typing import Callable, Dict

from cupy_abn._numpy_backend import accum_dtype

EPS = 2e-5
DECAY = 0.9


def _params(xp, x, acc):
    c = x.shape[1]
    rs = xp.random.RandomState(1)
    return (rs.uniform(0.5, 1.5, c).astype(acc), rs.uniform(-0.5, 0.5, c).astype(acc),
            xp.zeros(c, acc), xp.ones(c, acc))


def prepare_chainer(xp, x, dz, slope: float) -> Dict[str, Callable[[], object]]:
    """``F.batch_normalization`` + ``F.leaky_relu`` (cuDNN when Chainer uses it)."""
    import chainer
    import chainer.functions as F
    acc = accum_dtype(x.dtype)
    gamma, beta, mean, var = _params(xp, x, acc)
    gv, bv = chainer.Variable(gamma), chainer.Variable(beta)
    xv = chainer.Variable(x.copy())

    def forward_train():
        with chainer.no_backprop_mode():
            return F.leaky_relu(F.batch_normalization(x, gamma, beta, eps=EPS,
                                                      running_mean=mean, running_var=var,
                                                      decay=DECAY), slope)

    def forward_eval():
        with chainer.no_backprop_mode():
            return F.leaky_relu(F.fixed_batch_normalization(x, gamma, beta, mean, var, EPS),
                                slope)

    z = F.leaky_relu(F.batch_normalization(xv, gv, bv, eps=EPS), slope)

    def backward():
        for v in (xv, gv, bv):
            v.cleargrad()
        z.grad = dz
        z.backward()
        return xv.grad

    return {"forward_train": forward_train, "forward_eval": forward_eval, "backward": backward}


def prepare_composition(xp, x, dz, slope: float) -> Dict[str, Callable[[], object]]:
    """The layer written as a user would with array operations: ``mean``, ``var``,
    broadcasting and ``where``, each a separate pass over memory."""
    acc = accum_dtype(x.dtype)
    gamma, beta, run_mean, run_var = _params(xp, x, acc)
    axes = (0,) + tuple(range(2, x.ndim))
    shape = (1, -1) + (1,) * (x.ndim - 2)
    m = x.size // x.shape[1]
    g, b = gamma.reshape(shape), beta.reshape(shape)

    def activate(y):
        return xp.where(y >= 0, y, y * slope).astype(x.dtype)

    def forward_train():
        mean = x.mean(axis=axes, dtype=acc)
        var = x.var(axis=axes, dtype=acc)
        run_mean[...] = DECAY * run_mean + (1 - DECAY) * mean
        run_var[...] = DECAY * run_var + (1 - DECAY) * var * (m / (m - 1))
        scale = (gamma / xp.sqrt(var + EPS)).reshape(shape)
        return activate((x - mean.reshape(shape)) * scale + b)

    def forward_eval():
        scale = (gamma / xp.sqrt(run_var + EPS)).reshape(shape)
        return activate((x - run_mean.reshape(shape)) * scale + b)

    mean = x.mean(axis=axes, dtype=acc).reshape(shape)
    invstd = 1 / xp.sqrt(x.var(axis=axes, dtype=acc).reshape(shape) + EPS)

    def backward():
        xhat = (x - mean) * invstd
        dy = xp.where(g * xhat + b >= 0, dz, dz * slope)
        sum_dy = dy.sum(axis=axes, keepdims=True, dtype=acc)
        sum_dy_xhat = (dy * xhat).sum(axis=axes, keepdims=True, dtype=acc)
        return ((dy - xhat * (sum_dy_xhat / m) - sum_dy / m) * (g * invstd)).astype(x.dtype)

    return {"forward_train": forward_train, "forward_eval": forward_eval, "backward": backward}


def prepare_cupy_abn(xp, x, dz, slope: float, mode: str) -> Dict[str, Callable[[], object]]:
    """cupy-abn's array API in one mode; the in-place forward rewrites the same buffer."""
    import cupy_abn
    acc = accum_dtype(x.dtype)
    gamma, beta, mean, var = _params(xp, x, acc)
    if mode != "standard":
        gamma -= EPS   # the in-place scale is |gamma| + eps: the same layer as the baselines
    buf = x.copy()
    kw = dict(eps=EPS, decay=DECAY, activation="leaky_relu", activation_param=slope, mode=mode)

    def forward_train():
        return cupy_abn.abn_forward(buf, gamma, beta, mean, var, training=True, **kw)[0]

    def forward_eval():
        return cupy_abn.abn_forward(buf, gamma, beta, mean, var, training=False, **kw)[0]

    _, saved = cupy_abn.abn_forward(x.copy(), gamma, beta, training=True, **kw)
    dx = xp.empty_like(x)

    def backward():
        return cupy_abn.abn_backward(saved, dz, out=dx)[0]

    return {"forward_train": forward_train, "forward_eval": forward_eval, "backward": backward}
