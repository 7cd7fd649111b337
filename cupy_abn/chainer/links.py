"""Links ``ABN`` and ``InPlaceABN``: ``L.BatchNormalization``'s parameters and persistents, fused
with an activation.

They keep the names and meaning of ``L.BatchNormalization`` (``gamma``, ``beta``, ``avg_mean``,
``avg_var``, ``N``, ``decay``, ``eps``; ``chainer.config.train`` selects batch or running
statistics; ``finetune`` accumulates population statistics), so checkpoints and optimizer
settings carry over.  In ``InPlaceABN`` the scale applied is ``|gamma| + eps``;
:meth:`InPlaceABN.from_batch_normalization` converts a trained ``L.BatchNormalization``.
``set_activation`` swaps a layer's activation after construction (e.g. to evaluate a network
with another activation than the one it was trained with), in every mode.
"""
from __future__ import annotations

import warnings
from typing import Any, Optional, Tuple

import chainer
import numpy as np
from chainer import configuration, initializers
from chainer.utils import argument, type_check

from .. import _geometry as geometry
from .. import _validation
from .._activations import ACTIVATIONS
from . import _graph, functions

# Default gamma and beta: Chainer's stubs type initializer scalars as numbers.Number, which
# mypy does not take int to be.
_ONE: Any = 1
_ZERO: Any = 0


_TEST_ARG = ("test argument is not supported anymore (Chainer v2 and later); use "
             "chainer.using_config('train', False)")


class NonInvertibleActivationError(RuntimeError):
    """A backward through an in-place layer whose activation (set by ``set_activation``) is
    not invertible: its input cannot be rebuilt from its output."""


def _invertible(activation: str, param: float) -> bool:
    """Whether the in-place modes can run ``activation`` (invertible, parameter > 0)."""
    act = ACTIVATIONS[activation]
    return act.invertible and (act.param_name is None or param > 0)


class _SwappedActivation(chainer.FunctionNode):
    """``y -> phi(y)`` written into y's array: the non-invertible activation of an in-place
    layer, applied after the layer computed ``y`` in place with the identity.

    Forward only: its backward raises :class:`NonInvertibleActivationError` before any
    gradient is computed or accumulated (it runs before the layer's own backward).
    """

    def __init__(self, activation: str, param: float, layer: str):
        self.activation, self.param, self.layer = activation, param, layer

    def forward(self, inputs):
        y, = inputs
        if self.activation == "relu":
            xp = chainer.backend.get_array_module(y)
            xp.maximum(y, 0, out=y)
        else:   # leaky_relu / elu with a parameter <= 0
            y[...] = ACTIVATIONS[self.activation].forward(y, self.param)
        return y,

    def backward(self, indexes, grad_outputs):
        raise NonInvertibleActivationError(
            f"{self.layer} has the non-invertible activation {self.activation!r} "
            f"(activation_param={self.param}), set by set_activation: an in-place layer cannot "
            "rebuild its input from such an output, so it supports forward (evaluation) only; "
            "call set_activation with an invertible activation (e.g. 'leaky_relu' with a "
            "slope > 0) before training, or use ABN (mode 'standard')")


class _ABNLink(chainer.Link):
    _mode = "standard"
    _modes: Tuple[str, ...] = _validation.MODES   # the modes this class accepts
    _modes_hint = ""
    _size_or_axis = True   # L.BatchNormalization needs one (the synchronized link: axis 1)
    # As in L.BatchNormalization: None when use_gamma / use_beta is False.
    gamma = None
    beta = None

    def __init__(self, size: Optional[Any] = None, decay: float = 0.9, eps: float = 2e-5,
                 dtype: Any = None, use_gamma: bool = True, use_beta: bool = True,
                 initial_gamma: Any = None, initial_beta: Any = None,
                 activation: str = "leaky_relu", activation_param: float = 0.01,
                 mode: Optional[str] = None, *, initial_avg_mean: Any = None,
                 initial_avg_var: Any = None, axis: Any = None):
        super().__init__()
        if size is None and axis is None and self._size_or_axis:   # as L.BatchNormalization
            raise RuntimeError("size or axis is required")
        self.mode = self._mode if mode is None else mode
        _validation.check_mode(self.mode, self._modes, self._modes_hint)
        # A bad mode or activation fails here, not at the first call.
        _validation.check_activation(activation, activation_param, self.mode)
        self.decay, self.eps = decay, eps
        self.activation, self.activation_param = activation, activation_param
        self.use_gamma, self.use_beta = use_gamma, use_beta
        self.axis = (axis,) if isinstance(axis, int) else (tuple(axis) if axis else None)
        # float16 networks keep float32 parameters and statistics, like L.BatchNormalization.
        self._dtype = chainer.get_dtype(dtype, map_mixed16=np.float32)
        self._initial_avg_mean, self._initial_avg_var = initial_avg_mean, initial_avg_var
        self.N = 0
        self.register_persistent("N")
        with self.init_scope():
            if use_gamma:
                g = initializers._get_initializer(_ONE if initial_gamma is None else initial_gamma)
                g.dtype = self._dtype
                self.gamma = chainer.Parameter(g)
            if use_beta:
                b = initializers._get_initializer(_ZERO if initial_beta is None else initial_beta)
                b.dtype = self._dtype
                self.beta = chainer.Parameter(b)
        # size=None: parameters and statistics are created at the first call, from x.
        self.avg_mean: Any = None   # arrays once the size is known
        self.avg_var: Any = None
        if size is not None:
            self._initialize_params(size)
        self.register_persistent("avg_mean")
        self.register_persistent("avg_var")

    def _initialize_params(self, shape) -> None:
        """Create the statistics and parameters of ``shape`` on the link's device."""
        self.avg_mean = self._init_array(self._initial_avg_mean, 0, shape)
        self.avg_var = self._init_array(self._initial_avg_var, 1, shape)
        self._initial_avg_mean = self._initial_avg_var = None
        for p in (self.gamma, self.beta):
            if p is not None:
                p.initialize(shape)

    def _init_array(self, init, default, shape):
        initializer = initializers._get_initializer(default if init is None else init)
        return initializers.generate_array(initializer, shape, self.xp, dtype=self._dtype,
                                           device=self.device)

    def _fixed(self, value: float):
        with chainer.using_device(self.device):
            return self.xp.full(self.avg_mean.shape, value, self._dtype)

    def _gamma(self):
        if self.gamma is not None:
            return self.gamma
        # No learned scale: the scale applied is 1 (|gamma| + eps in the in-place modes).
        return self._fixed(1.0 if self.mode == "standard" else 1.0 - self.eps)

    def forward(self, x: Any, **kwargs: Any) -> chainer.Variable:
        """forward(self, x, finetune=False, residual=None, out=None)

        Normalize and activate ``x`` (N, C, ...) with batch or running statistics; with
        ``residual``, ``phi(BN(x) + residual)`` (a post-activation residual block).

        Parameters
        ----------
        x : Variable or array
            In ``InPlaceABN`` training and evaluation, x's array is overwritten with the output
            when x may be (the rules are in ``cupy_abn/chainer/_graph.py``).
        finetune : bool, keyword only
            Accumulate population statistics with ``decay = 1 - 1/N`` (training only).
        residual : Variable or array, keyword only
            r like x, added after the normalization and before the activation, in the same
            pass; gradients flow to it.  In ``InPlaceABN`` it must not share x's memory, and
            it is retained by the layer's node until its backward.
        out : array, keyword only
            Where the output is written; x is then only read and stays usable (in
            ``InPlaceABN`` too: the pre-activation block's input survives, with no copy).

        Raises
        ------
        ValueError
            For ``test=`` (removed in Chainer v2; use ``chainer.using_config('train', ...)``).
        TypeError
            For any other keyword, as ``L.BatchNormalization``.
        chainer.utils.type_check.InvalidType
            For an x whose shape does not fit (ndim < 2, channels other than ``size``).
        """
        finetune, residual, out = argument.parse_kwargs(
            kwargs, ("finetune", False), ("residual", None), ("out", None), test=_TEST_ARG)
        if self.avg_mean is None:
            # size=None: the parameters take the shape of the axes not in axis (channels on
            # axis 1 by default), as Chainer infers them.
            ndim = getattr(x, "ndim", 0)
            if self.axis is None and ndim < 2:
                raise type_check.InvalidType("x.ndim >= 2 (channels on axis 1)",
                                             f"x.ndim = {ndim}")
            if self.axis is not None and not (ndim >= len(self.axis) and ndim > max(self.axis)):
                raise type_check.InvalidType(f"x.ndim > {max(self.axis)} (axis={self.axis})",
                                             f"x.ndim = {ndim}")
            self._initialize_params(geometry.layout(x.shape, self.axis).param_shape)
        training = bool(configuration.config.train)
        beta = self.beta if self.beta is not None else self._fixed(0.0)
        decay = self.decay
        if training and finetune:
            self.N += 1
            decay = 1.0 - 1.0 / self.N
        # Recomputation (F.forget) must not update the running statistics a second time.
        keep_stats = training and getattr(configuration.config, "in_recomputing", False)
        if keep_stats and finetune:
            self.N -= 1   # as L.BatchNormalization: the recomputation does not count
        mean, var = (None, None) if keep_stats else (self.avg_mean, self.avg_var)
        return self._apply_activation(x, self._gamma(), beta, mean, var, training=training,
                                      decay=decay, eps=self.eps, residual=residual, out=out)

    def set_activation(self, activation: str,
                       activation_param: float = 0.01) -> Tuple[str, float]:
        """Swap the layer's activation, e.g. to evaluate a network trained with another one.

        Works in every mode.  The standard mode (:class:`ABN`) runs any activation in
        training and evaluation.  In the in-place modes an invertible activation
        (``leaky_relu`` with a slope > 0, ``elu`` with alpha > 0, ``identity``) behaves as if
        the layer had been built with it.  A non-invertible one (``relu``, a slope or alpha
        <= 0) is accepted for forward passes (evaluation, or statistics in training): the
        layer computes ``y`` in place with the identity, then writes ``phi(y)`` over it, so
        the output still shares x's memory.  A backward through it raises
        :class:`NonInvertibleActivationError` before any gradient is computed or
        accumulated.  Swapping back restores training.

        Parameters
        ----------
        activation : {"leaky_relu", "elu", "identity", "relu"}
        activation_param : float
            Slope of leaky_relu or alpha of elu (ignored by relu and identity).

        Returns
        -------
        tuple of (str, float)
            The previous ``(activation, activation_param)``, to swap back with
            ``layer.set_activation(*previous)``.

        Raises
        ------
        ValueError
            For an unknown activation; the layer is left unchanged.
        TypeError
            For a parameter that is not a finite number; the layer is left unchanged.

        Examples
        --------
        >>> import chainer
        >>> import numpy as np
        >>> from cupy_abn.chainer import ABN
        >>> layer = ABN(3, activation="leaky_relu", activation_param=0.1)
        >>> x = np.linspace(-1, 1, 12, dtype=np.float32).reshape(4, 3)
        >>> previous = layer.set_activation("relu")
        >>> previous
        ('leaky_relu', 0.1)
        >>> with chainer.using_config("train", False):
        ...     y = layer(x)
        >>> bool((y.array >= 0).all())
        True
        >>> layer.set_activation(*previous)
        ('relu', 0.01)
        """
        _validation.check_activation(activation, activation_param, "standard")
        previous = (self.activation, self.activation_param)
        self.activation, self.activation_param = activation, activation_param
        return previous

    def _apply_activation(self, x, gamma, beta, mean, var, **kw) -> chainer.Variable:
        act, param = self.activation, self.activation_param
        if self.mode == "standard" or _invertible(act, param):
            return self._apply(x, gamma, beta, mean, var, activation=act,
                               activation_param=param, **kw)
        # A swapped non-invertible activation: y in place, then phi(y) over it (forward only).
        y = self._apply(x, gamma, beta, mean, var, activation="identity",
                        activation_param=param, **kw)
        layer = _graph.layer_name(type(self).__name__, self.name)
        return _SwappedActivation(act, param, layer).apply((y,))[0]

    def _apply(self, x, gamma, beta, mean, var, **kw) -> chainer.Variable:
        if self.mode == "standard":
            return functions.abn(x, gamma, beta, mean, var, axis=self.axis, **kw)
        return functions.inplace_abn(x, gamma, beta, mean, var, mode=self.mode,
                                     name=self.name, axis=self.axis, **kw)

    def to_batch_normalization(self) -> "chainer.Sequential":
        """A plain ``L.BatchNormalization`` and the activation, computing what this layer
        computes in evaluation (for deployment, or for tools that know only Chainer's links).

        The batch normalization takes this layer's ``eps``, ``decay``, ``axis``, running
        statistics and ``N``, ``beta``, and the scale this layer applies: ``gamma`` in the
        standard mode, ``|gamma| + eps`` in the in-place modes (computed in float64, rounded
        once).  :meth:`InPlaceABN.from_batch_normalization` converts back.

        Returns
        -------
        chainer.Sequential
            ``[bn]`` for the identity, else ``[bn, activation]`` with the activation a
            function of Chainer (``F.leaky_relu``, ``F.elu``, ``F.relu``) and its parameter.

        Raises
        ------
        ValueError
            For a layer created with ``size=None`` that never ran (no parameters yet).
        """
        if self.avg_mean is None:
            raise ValueError("to_batch_normalization: the layer has no parameters yet "
                             "(created with size=None and never called)")
        xp = self.xp
        shape, dtype = self.avg_mean.shape, self.avg_mean.dtype
        own_gamma: Any = self.gamma
        own_beta: Any = self.beta
        gamma = (own_gamma.array if own_gamma is not None
                 else xp.ones(shape, dtype)).astype(np.float64)
        if self.mode != "standard":
            gamma = xp.abs(gamma if own_gamma is not None else gamma - self.eps) + self.eps
        bn: Any = chainer.links.BatchNormalization(shape if len(shape) > 1 else shape[0],
                                                   decay=self.decay, eps=self.eps, dtype=dtype,
                                                   axis=self.axis)
        bn.to_device(self.device)
        bn.gamma.array[...] = gamma.astype(dtype)
        bn.beta.array[...] = own_beta.array if own_beta is not None else 0
        bn.avg_mean[...] = self.avg_mean
        bn.avg_var[...] = self.avg_var
        bn.N = self.N
        act = _chainer_activation(self.activation, self.activation_param)
        return chainer.Sequential(bn) if act is None else chainer.Sequential(bn, act)

    def start_finetuning(self) -> None:
        """Reset the population count, as ``L.BatchNormalization.start_finetuning``."""
        self.N = 0


def _chainer_activation(name: str, param: float):
    """The activation as a Chainer function of one argument (None for the identity)."""
    import functools
    import chainer.functions as F
    if name == "identity":
        return None
    if name == "leaky_relu":
        return functools.partial(F.leaky_relu, slope=param)
    if name == "elu":
        return functools.partial(F.elu, alpha=param)
    return F.relu


class ABN(_ABNLink):
    """Batch normalization fused with an activation (x is kept; any activation, incl. relu).

    Parameters
    ----------
    size : int, tuple of int or None
        Channels (axis 1 of the input), or the shape of the parameters.  None: taken from
        the first input, and the parameters and statistics are created then (on the link's
        device, in its dtype), as ``chainer.links.BatchNormalization`` does; ``axis`` is
        then required: without ``size`` or ``axis`` the link raises ``RuntimeError``, as
        ``chainer.links.BatchNormalization()`` does.
    decay, eps, dtype, use_gamma, use_beta, initial_gamma, initial_beta
        As in ``chainer.links.BatchNormalization``; with ``use_gamma=False`` /
        ``use_beta=False`` the attribute ``gamma`` / ``beta`` is None.
    initial_avg_mean, initial_avg_var : initializer, optional, keyword only
        Initial running statistics (default 0 and 1), as in
        ``chainer.links.BatchNormalization``.
    activation : {"leaky_relu", "elu", "identity", "relu"}
    activation_param : float
        Slope of leaky_relu or alpha of elu.
    axis : int or tuple of int, optional, keyword only
        The axes normalized over, as ``chainer.links.BatchNormalization``'s ``axis``: e.g.
        ``(0, 1, 2)`` for channels-last (N, H, W, C) input.  The parameters have the shape
        of the other axes (inferred from the first x when ``size`` is None).
    """
    _mode = "standard"


class InPlaceABN(_ABNLink):
    """InPlace-ABN: the output overwrites the input, and backward is rebuilt from the output.

    The training graph keeps one buffer per layer (the output) instead of the input and the
    output.  Parameters as :class:`ABN`; the activation must be invertible (leaky_relu with a
    slope > 0, elu, identity) and the scale applied is ``|gamma| + eps``.  ``set_activation``
    may later swap in a non-invertible one (relu) for forward passes only.  ``mode`` is
    ``"inplace"`` (INPLACE-ABN II, default) or ``"inplace_v1"`` (INPLACE-ABN I).
    """
    _mode = "inplace"
    _modes = _validation.IN_PLACE_MODES
    _modes_hint = "use ABN for the standard mode"

    @classmethod
    def from_batch_normalization(cls, bn: "chainer.links.BatchNormalization",
                                 activation: str = "leaky_relu",
                                 activation_param: float = 0.01,
                                 mode: str = "inplace") -> "InPlaceABN":
        """An InPlaceABN computing what ``bn`` followed by the activation computes.

        ``gamma`` is mapped through the reparametrization ``|gamma| + eps``: the new gamma is
        ``bn.gamma - eps``.  A scale below ``eps`` (zero or negative) has no representation;
        such entries become ``eps`` (gamma 0) and one warning gives their count.

        Parameters
        ----------
        bn : chainer.links.BatchNormalization
            Its eps, decay, running statistics, N, gamma and beta are copied (to the device of
            ``bn``).
        activation, activation_param, mode
            Of the new layer.

        Returns
        -------
        InPlaceABN

        Raises
        ------
        ValueError
            For a ``bn`` created with ``size=None`` that never ran (it has no parameters yet).
        """
        if bn.avg_mean is None:
            raise ValueError("bn: expected an initialized L.BatchNormalization (size given, or "
                             "called once), got one created with size=None that never ran")
        size = bn.avg_mean.shape[0]
        dtype = bn.avg_mean.dtype
        layer = cls(size, decay=bn.decay, eps=bn.eps, dtype=dtype,
                    use_gamma=True, use_beta=True, activation=activation,
                    activation_param=activation_param, mode=mode)
        layer.to_device(chainer.backend.get_device_from_array(bn.avg_mean))
        xp = layer.xp
        bn_gamma, bn_beta = getattr(bn, "gamma", None), getattr(bn, "beta", None)
        scale = xp.asarray(bn_gamma.array if bn_gamma is not None
                           else xp.ones(size, dtype)).astype(dtype)
        shift = xp.asarray(bn_beta.array if bn_beta is not None
                           else xp.zeros(size, dtype)).astype(dtype)
        bad = int((scale < bn.eps).sum())
        if bad:
            warnings.warn(f"from_batch_normalization: {bad} of {size} entries of gamma are "
                          f"below eps={bn.eps} (zero or negative); InPlaceABN's scale "
                          "|gamma| + eps cannot represent them and uses eps instead",
                          UserWarning, stacklevel=2)
        # use_gamma, use_beta and a size: both parameters exist and are initialized
        gamma: Any = layer.gamma
        beta: Any = layer.beta
        gamma.array[...] = xp.maximum(scale - dtype.type(bn.eps), 0)
        beta.array[...] = shift
        layer.avg_mean[...] = bn.avg_mean
        layer.avg_var[...] = bn.avg_var
        layer.N = bn.N
        return layer
