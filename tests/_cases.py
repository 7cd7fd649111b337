"""Shared test data: shapes, dtypes and input generation (deterministic per case)."""
from __future__ import annotations

import zlib

import numpy as np

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
ACTIVATIONS = {"identity": 0.0, "leaky_relu": 0.1, "elu": 1.2}
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
