"""Shared test data: shapes, dtypes and input generation (deterministic per case)."""
from __future__ import annotations

import zlib

import numpy as np

from cupy_abn._activations import ACTIVATIONS as _TABLE

SHAPES = {
    "NC": (7, 3),
    "NCL": (4, 5, 11),
    "NCHW": (2, 3, 5, 7),
    "NCDHW": (2, 2, 3, 4, 5),
    "C1": (5, 1, 3, 3),
    "spatial1x1": (6, 4, 1, 1),
    "N1": (1, 3, 4, 5),
    "primes": (3, 7, 13, 11),
}
DTYPES = (np.float64, np.float32, np.float16)
# The parameter the tests give an activation, by the name of its parameter (0.0: none).
PARAM_VALUES = {None: 0.0, "slope": 0.1, "alpha": 1.2}


def activation_params(values=None, *, invertible_only: bool = True) -> dict:
    """``{name: activation_param}`` for the activations of cupy_abn's own table
    (``cupy_abn._activations.ACTIVATIONS``), the invertible ones (valid in every mode) unless
    ``invertible_only`` is false.  ``values`` maps a parameter name (``None`` for
    parameterless activations) to the value to use, as :data:`PARAM_VALUES` does; a new
    parameter name in the table raises ``KeyError`` here until the tests give it a value."""
    values = PARAM_VALUES if values is None else {**PARAM_VALUES, **values}
    return {name: values[act.param_name] for name, act in _TABLE.items()
            if act.invertible or not invertible_only}


ACTIVATIONS = activation_params()
MODES = ("standard", "inplace", "inplace_v1")


def rng_for(*key) -> np.random.Generator:
    return np.random.default_rng(zlib.crc32(repr(key).encode()))


def make_inputs(shape, dtype, *key, param_dtype=None):
    """x ~ N(0.5, 2) per channel with a channel offset; gamma with mixed signs; dz ~ N(0, 1).

    Returns numpy arrays: x, gamma, beta, running_mean, running_var, dz.
    """
    rng = rng_for(shape, np.dtype(dtype).name, *key)
    c = shape[1]
    pdt = param_dtype or (np.float32 if np.dtype(dtype) == np.float16 else dtype)
    offs = rng.normal(0, 1, c).reshape((1, c) + (1,) * (len(shape) - 2))
    x = (0.5 + 2 * rng.standard_normal(shape) + offs).astype(dtype)
    gamma = rng.uniform(0.5, 1.5, c) * rng.choice([-1.0, 1.0], c)
    beta = rng.normal(0, 0.5, c)
    rmean = rng.normal(0, 1, c)
    rvar = rng.uniform(0.5, 2, c)
    dz = rng.standard_normal(shape).astype(dtype)
    return (x, gamma.astype(pdt), beta.astype(pdt), rmean.astype(pdt), rvar.astype(pdt), dz)


def case_id(*parts) -> str:
    out = []
    for p in parts:
        if isinstance(p, tuple):
            out.append("x".join(map(str, p)))
        elif isinstance(p, type) or isinstance(p, np.dtype):
            out.append(np.dtype(p).name)
        else:
            out.append(str(p))
    return "-".join(out)
