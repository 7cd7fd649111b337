"""What NaN and Inf in the input do today, with no finiteness check (issue 13; the
``check_finite`` option is separate work): a documented behaviour, pinned per backend.

Per channel, the statistics are reductions over that channel only, so:

* a NaN (or +-Inf) in channel c of x makes channel c's variance NaN (its mean NaN, or +-Inf):
  all of its outputs z and dx are NaN, its running statistics and dgamma are not finite;
  its dbeta stays finite (phi' of a NaN is the negative side's slope);
* every other channel is untouched by it: its outputs, running statistics and gradients are
  bit-identical to those of the same call without the bad value;
* in evaluation (running statistics) a NaN stays in its own element: z and dx are NaN at
  that element only, dgamma and dbeta of its channel are NaN;
* a NaN in grad_output spreads the same way through the backward: dgamma, dbeta and dx of
  its channel (training), or that element of dx and its channel's sums (evaluation).

Nothing raises and nothing is written outside the channel; NumPy and the kernels (PoCL)
behave alike.
"""
from __future__ import annotations

import warnings

import numpy as np
import pytest

import cupy_abn
from tests._backends import api_backends
from tests._cases import make_inputs

SHAPE = (3, 4, 5)
BAD_C = 2
BAD_AT = (1, BAD_C, 3)


def _run(backend, x, g, b, rm, rv, dz, training, mode):
    to_device, to_host = backend
    xd, rmd, rvd = to_device(x.copy()), to_device(rm.copy()), to_device(rv.copy())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # NumPy: invalid value in ...
        z, saved = cupy_abn.abn_forward(xd, to_device(g), to_device(b), rmd, rvd,
                                        training=training, mode=mode,
                                        activation="leaky_relu", activation_param=0.1)
        z = to_host(z).copy()
        dx, dg, db = cupy_abn.abn_backward(saved, to_device(dz))
    return dict(z=z, dx=to_host(dx), dg=to_host(dg), db=to_host(db), rm=to_host(rmd),
                rv=to_host(rvd))


def _others(a):
    """Everything but channel BAD_C (axis 1 for x-shaped arrays, axis 0 for vectors)."""
    keep = [c for c in range(SHAPE[1]) if c != BAD_C]
    return a[:, keep] if a.ndim > 1 else a[keep]


@pytest.mark.parametrize("backend", api_backends())
@pytest.mark.parametrize("mode", ["inplace", "standard"])
@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf], ids=["nan", "inf", "-inf"])
@pytest.mark.parametrize("where", ["x", "grad_output"])
@pytest.mark.parametrize("training", [True, False], ids=["train", "eval"])
def test_nonfinite_stays_in_its_channel(backend, mode, bad, where, training):
    x, g, b, rm, rv, dz = make_inputs(SHAPE, np.float32, "nonfinite")
    clean = _run(backend, x, g, b, rm, rv, dz, training, mode)
    if where == "x":
        x = x.copy()
        x[BAD_AT] = bad
    else:
        dz = dz.copy()
        dz[BAD_AT] = bad
    got = _run(backend, x, g, b, rm, rv, dz, training, mode)

    # Other channels: exactly as without the bad value.
    for k in clean:
        np.testing.assert_array_equal(_others(got[k]), _others(clean[k]), err_msg=k)

    col = (slice(None), BAD_C)
    if where == "x" and training:
        # mean and variance of the channel are NaN: everything of the channel is NaN
        for k in ("z", "dx"):
            assert np.isnan(got[k][col]).all(), k
        for k in ("rm", "rv", "dg"):   # rm is +-inf for an infinite value, else NaN
            assert not np.isfinite(got[k][BAD_C]), k
        # dbeta = sum dz * phi'(y): phi' of a NaN y is the negative side's slope, so dbeta
        # of the channel stays finite (a number computed from dz alone)
        assert np.isfinite(got["db"][BAD_C])
    elif where == "x":
        # evaluation: the element only (z, dx), its channel's sums (dgamma; dbeta too,
        # since dy there is dz * phi'(y) with y non-finite: NaN or the slope)
        bad_z = got["z"][BAD_AT]
        assert not np.isfinite(bad_z), bad_z
        mask = np.ones(SHAPE, bool)
        mask[BAD_AT] = False
        np.testing.assert_array_equal(got["z"][mask], clean["z"][mask])
        np.testing.assert_array_equal(got["rm"], clean["rm"])
        np.testing.assert_array_equal(got["rv"], clean["rv"])
        assert not np.isfinite(got["dg"][BAD_C])
    else:
        # a bad dz: the forward is clean; the backward's channel sums are non-finite
        np.testing.assert_array_equal(got["z"], clean["z"])
        np.testing.assert_array_equal(got["rm"], clean["rm"])
        assert not np.isfinite(got["db"][BAD_C])
        assert not np.isfinite(got["dx"][BAD_AT])
        if training:   # dx of the whole channel subtracts the channel's sums
            assert np.isnan(got["dx"][col]).sum() + np.isinf(got["dx"][col]).sum() == \
                got["dx"][col].size
