"""Activations as data: one table row per activation (docs/math.md, "Activations").

Each row gives the NumPy forms of phi, phi_inv and phi' written in terms of the output z, and
the integer the kernels receive as ``-DACT=``.  The kernels hold the same three functions in
``kernels/activation.cuh``; no other module branches on the activation name.
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


def _leaky_forward(y, s):
    return np.where(y >= 0, y, y * s)


def _leaky_inverse(z, s):
    return np.where(z >= 0, z, z / s)


def _leaky_derivative(z, s):
    # Scalars of z's dtype: np.where on Python floats would build a float64 array first.
    return np.where(z >= 0, z.dtype.type(1), z.dtype.type(s))


def _elu_forward(y, a):
    return np.where(y >= 0, y, a * np.expm1(np.minimum(y, 0)))


def _elu_inverse(z, a):
    # z > -a always holds for a true ELU output; clip guards rounding at the asymptote.
    return np.where(z >= 0, z, np.log1p(np.maximum(np.minimum(z, 0) / a, -1 + 1e-7)))


def _elu_derivative(z, a):
    return np.where(z >= 0, 1.0, z + a).astype(z.dtype, copy=False)


ACTIVATIONS = {
    "identity": Activation("identity", 0, True, None,
                           lambda y, p: y, lambda z, p: z,
                           lambda z, p: np.ones_like(z)),
    "leaky_relu": Activation("leaky_relu", 1, True, "slope",
                             _leaky_forward, _leaky_inverse, _leaky_derivative),
    "elu": Activation("elu", 2, True, "alpha",
                      _elu_forward, _elu_inverse, _elu_derivative),
    "relu": Activation("relu", 3, False, None,
                       lambda y, p: np.maximum(y, 0), None,
                       lambda z, p: (z > 0).astype(z.dtype)),
}
