"""Activations as data: one table row per activation (docs/math.md, "Activations").

Each row gives the NumPy forms of phi, phi_inv and phi' written in terms of the output z, and
the integer the kernels receive as ``-DACT=``; ELU's row also says which outputs its inverse
cannot rebuild y from (the finiteness check's count, ``kernels/channel_saturated.cuh``).  The
kernels hold the same three functions in ``kernels/activation.cuh``; no other module branches
on the activation name.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Optional

import numpy as np

Fn = Callable[[np.ndarray, float], np.ndarray]


@dataclass(frozen=True)
class Activation:
    name: str
    code: int                 # value of the ACT define in the kernels
    invertible: bool          # usable in the in-place modes
    param_name: Optional[str]  # "slope", "alpha" or None
    forward: Fn               # z = phi(y)
    inverse: Optional[Fn]     # y = phi_inv(z)
    derivative: Fn            # phi'(y), computed from z
    # z whose y phi_inv cannot rebuild (it clamps there), a boolean array; None: every z.
    saturated: Optional[Fn] = None


def _leaky_forward(y, s):
    return np.where(y >= 0, y, y * s)


def _leaky_inverse(z, s):
    return np.where(z >= 0, z, z / s)


def _leaky_derivative(z, s):
    # Scalars of z's dtype: np.where on Python floats would build a float64 array first.
    return np.where(z >= 0, z.dtype.type(1), z.dtype.type(s))


def _elu_forward(y, a):
    return np.where(y >= 0, y, a * np.expm1(np.minimum(y, 0)))


# The least z / alpha that ELU's inverse takes; below it (an output rounded to -alpha) it
# clamps.  kernels/activation.cuh (act_inverse) and channel_saturated.cuh use the same bound.
ELU_MIN_RATIO = -1 + 1e-7


def _elu_inverse(z, a):
    # z > -a always holds for a true ELU output; clip guards rounding at the asymptote.
    return np.where(z >= 0, z, np.log1p(np.maximum(np.minimum(z, 0) / a, ELU_MIN_RATIO)))


def _elu_saturated(z, a):
    # where _elu_inverse clamps: y is lost (float16 below about -8.3, float32 -16.2,
    # float64 -16.1)
    return np.minimum(z, 0) / a < ELU_MIN_RATIO


def _elu_derivative(z, a):
    return np.where(z >= 0, 1.0, z + a).astype(z.dtype, copy=False)


#: The activations by name: ``"identity"``, ``"leaky_relu"`` (parameter: the slope),
#: ``"elu"`` (parameter: alpha) and ``"relu"`` (not invertible: ``mode="standard"`` only).
#: Each value holds phi, its inverse and its derivative written in terms of the output.
ACTIVATIONS = {
    "identity": Activation("identity", 0, True, None,
                           lambda y, p: y, lambda z, p: z,
                           lambda z, p: np.ones_like(z)),
    "leaky_relu": Activation("leaky_relu", 1, True, "slope",
                             _leaky_forward, _leaky_inverse, _leaky_derivative),
    "elu": Activation("elu", 2, True, "alpha",
                      _elu_forward, _elu_inverse, _elu_derivative, _elu_saturated),
    "relu": Activation("relu", 3, False, None,
                       lambda y, p: np.maximum(y, 0), None,
                       lambda z, p: (z > 0).astype(z.dtype)),
}
