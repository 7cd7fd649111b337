"""What cupy-abn is compared with: Chainer's BatchNormalization + leaky_relu, the same
layer composed of plain array operations (CuPy on a GPU, NumPy on the CPU), and, where they
are installed, PyTorch's ``batch_norm`` + in-place ``leaky_relu`` and Mapillary's
``inplace_abn`` extension (the original In-Place ABN, for PyTorch).

Each ``prepare_*`` returns ``{pass: callable}`` for the passes "forward_train",
"forward_eval" and "backward" on one input; the callables repeat the same work each call.
The PyTorch-based baselines share the arrays' memory (DLPack on a GPU, ``from_numpy`` on
the CPU) and raise :class:`Unavailable` with the reason when they cannot run; PyTorch is
never a dependency of cupy-abn.
"""
from __future__ import annotations

from typing import Any, Callable, Dict, Tuple

from cupy_abn._precision import accum_dtype

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


class Unavailable(RuntimeError):
    """A baseline that cannot run in this environment; the message is the reason recorded."""


def _torch(xp):
    """PyTorch, checked for a CUDA device when the arrays are CuPy's."""
    try:
        import torch
    except ImportError as e:
        raise Unavailable(f"PyTorch is not installed ({e})") from None
    if xp.__name__ == "cupy" and not torch.cuda.is_available():
        raise Unavailable(f"PyTorch {torch.__version__} sees no CUDA device")
    return torch


def _tensor(torch, xp, a):
    """A tensor over the same memory as ``a`` (no copy, so the timed work is the same)."""
    if xp.__name__ == "cupy":
        return torch.from_dlpack(a)
    return torch.from_numpy(a)


def _torch_params(torch, xp, x) -> Tuple[Any, Any, Any, Any]:
    """gamma, beta, running mean and variance as tensors, the values the others use."""
    return tuple(_tensor(torch, xp, a) for a in _params(xp, x, accum_dtype(x.dtype)))


def prepare_pytorch(xp, x, dz, slope: float) -> Dict[str, Callable[[], object]]:
    """``F.batch_norm`` + ``F.leaky_relu(inplace=True)`` (cuDNN on a GPU where PyTorch uses
    it), backward through autograd with the graph kept (``retain_graph``)."""
    torch = _torch(xp)
    F = torch.nn.functional
    gamma, beta, mean, var = _torch_params(torch, xp, x)
    xt, dzt = _tensor(torch, xp, x), _tensor(torch, xp, dz)
    momentum = 1 - DECAY    # PyTorch's momentum weighs the new batch statistic

    def layer(inp, training, w, b, rm, rv):
        y = F.batch_norm(inp, rm, rv, w, b, training=training, momentum=momentum, eps=EPS)
        return F.leaky_relu(y, slope, inplace=True)

    def forward_train():
        with torch.no_grad():
            return layer(xt, True, gamma, beta, mean, var)

    def forward_eval():
        with torch.no_grad():
            return layer(xt, False, gamma, beta, mean, var)

    leaf = xt.detach().clone().requires_grad_(True)
    gl, bl = gamma.clone().requires_grad_(True), beta.clone().requires_grad_(True)
    z = layer(leaf, True, gl, bl, None, None)

    def backward():
        return torch.autograd.grad(z, (leaf, gl, bl), dzt, retain_graph=True)[0]

    return {"forward_train": forward_train, "forward_eval": forward_eval, "backward": backward}


def prepare_inplace_abn(xp, x, dz, slope: float) -> Dict[str, Callable[[], object]]:
    """Mapillary's ``inplace_abn`` (its CUDA extension on a GPU, its C++ one on the CPU).

    Its scale is ``|weight| + eps`` like cupy-abn's in-place modes, so ``weight`` is gamma
    - eps.  The forward rewrites its buffer, as cupy-abn's does.  The backward runs through
    autograd on a graph kept with ``retain_graph``: the leaf is cloned before the in-place
    call (an in-place op on a leaf that needs its gradient is refused), a clone whose
    backward passes the gradient through without a kernel.
    """
    torch = _torch(xp)
    try:
        from inplace_abn.functions import inplace_abn
    except ImportError as e:
        raise Unavailable(f"inplace_abn is not installed ({e})") from None
    gamma, beta, mean, var = _torch_params(torch, xp, x)
    weight = gamma - EPS
    buf = _tensor(torch, xp, x).clone()
    dzt = _tensor(torch, xp, dz)
    kw = dict(momentum=1 - DECAY, eps=EPS, activation="leaky_relu", activation_param=slope)

    def forward_train():
        with torch.no_grad():
            return inplace_abn(buf, weight, beta, mean, var, training=True, **kw)

    def forward_eval():
        with torch.no_grad():
            return inplace_abn(buf, weight, beta, mean, var, training=False, **kw)

    leaf = _tensor(torch, xp, x).clone().requires_grad_(True)
    wl, bl = weight.clone().requires_grad_(True), beta.clone().requires_grad_(True)
    z = inplace_abn(leaf.clone(), wl, bl, None, None, training=True, **kw)

    def backward():
        return torch.autograd.grad(z, (leaf, wl, bl), dzt, retain_graph=True)[0]

    return {"forward_train": forward_train, "forward_eval": forward_eval, "backward": backward}
