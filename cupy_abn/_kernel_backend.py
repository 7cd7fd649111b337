"""The kernel backend: every launch decision (which kernel, grid, block, partials per channel)
is made here once; the runtime (CuPy on a GPU, pyopencl on a CPU for the tests) only compiles,
allocates and launches.

Forward (training): channel_moments -> channel_train -> normalize_activate (3 launches);
evaluation: channel_eval -> normalize_activate (2).  Backward: grad_sums -> channel_backward ->
grad_input (3).  The reductions are two-level: ``channel_moments``/``grad_sums`` write
``(C, B)`` partials (one block per channel slice), and the one-thread-per-channel kernels
``channel_train``/``channel_backward`` merge any number of partials (a synchronized layer
passes its own ``(C, R)``).

A runtime provides: ``target`` ("cuda" or "opencl"), ``multiprocessors``, ``max_block``,
``empty(shape, dtype)``, ``zeros(shape, dtype)``, ``empty_like(a)``, ``ascontiguous(a)``,
``function(family, entry, defines)`` and ``launch(fn, grid, block, args)`` (grid and block
counted as in CUDA: ``grid`` blocks of ``block`` threads, 1-D).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from . import _kernel_source as K
from ._activations import ACTIVATIONS
from ._numpy_backend import accum_dtype
from ._state import N_COEF, N_ROWS, T_XHAT_FROM_X

MAX_BLOCK = 256            # kernels/storage.h: shared memory is sized for this many threads
MIN_BLOCK = 32
BLOCKS_PER_SM = 8          # reduction blocks per multiprocessor that keep it busy
ELEMS_PER_THREAD = 8       # fewest elements per thread before a channel is split further
MAX_PARTS = 1024
ELEMENTWISE_BLOCK = 256
ELEMENTWISE_WAVES = 32     # grid-stride kernels: at most this many blocks per multiprocessor


@dataclass(frozen=True)
class ReductionPlan:
    parts: int   # B: blocks (partials) per channel
    block: int   # threads per block, a power of two

    @property
    def grid(self):
        return self.parts


def reduction_plan(m: int, channels: int, multiprocessors: int,
                   max_block: int = MAX_BLOCK) -> ReductionPlan:
    """Threads per block and blocks per channel for a reduction over ``m`` elements/channel.

    The block grows from 32 threads while every thread would still get >= 8 elements, so a
    small channel (32x2048x7x7: m = 1568) gets one block of 128 threads and no idle threads;
    then channels are split into B slices until the grid has ~8 blocks per multiprocessor
    (32x64x112x112 on 132 SMs: B = 17, 1088 blocks of 256 threads).
    """
    cap = min(MAX_BLOCK, max_block)
    block = MIN_BLOCK
    while block * 2 <= cap and block * 2 * ELEMS_PER_THREAD <= m:
        block *= 2
    block = min(block, cap)
    want = math.ceil(BLOCKS_PER_SM * multiprocessors / max(channels, 1))
    enough_work = max(1, m // (block * ELEMS_PER_THREAD))
    return ReductionPlan(parts=max(1, min(want, enough_work, MAX_PARTS)), block=block)


def _ncs(shape):
    n, c = int(shape[0]), int(shape[1])
    s = int(np.prod(shape[2:], dtype=np.int64)) if len(shape) > 2 else 1
    return n, c, s


class KernelBackend:
    """The stages of ``cupy_abn.api`` as kernel launches on ``runtime``."""

    def __init__(self, runtime):
        self.rt = runtime
        self.name = f"kernels-{runtime.target}"

    # ---- allocation ------------------------------------------------------------------------
    def empty_like(self, a):
        return self.rt.empty_like(a)

    def zeros(self, shape, dtype):
        return self.rt.zeros(shape, dtype)

    def ascontiguous(self, a):
        return self.rt.ascontiguous(a)

    # ---- helpers ---------------------------------------------------------------------------
    def _fn(self, family, entry=None, **variant):
        return self.rt.function(family, entry or family, K.defines(family, **variant))

    @staticmethod
    def _idx(numel):
        idx64 = numel >= K.IDX64_FROM
        return idx64, (np.uint64 if idx64 else np.uint32)

    def plan(self, shape) -> ReductionPlan:
        n, c, s = _ncs(shape)
        return reduction_plan(n * s, c, self.rt.multiprocessors, self.rt.max_block)

    def _per_channel(self, channels):
        block = min(MAX_BLOCK, self.rt.max_block)
        while block // 2 >= max(channels, MIN_BLOCK):
            block //= 2
        return -(-channels // block), block

    def _elementwise(self, numel):
        blocks = min(-(-numel // ELEMENTWISE_BLOCK), self.rt.multiprocessors * ELEMENTWISE_WAVES)
        return max(blocks, 1), ELEMENTWISE_BLOCK

    # ---- forward ---------------------------------------------------------------------------
    def moments(self, x):
        x = self.rt.ascontiguous(x)
        n, c, s = _ncs(x.shape)
        acc = accum_dtype(x.dtype)
        idx64, it = self._idx(x.size)
        p = self.plan(x.shape)
        count, mean, m2 = (self.rt.empty((c, p.parts), acc) for _ in range(3))
        shift = self.rt.empty((c,), acc)
        fn = self._fn("channel_moments", store=x.dtype, idx64=idx64)
        self.rt.launch(fn, c * p.parts, p.block,
                       (x, np.uint32(c), it(s), it(n * s), np.uint32(p.parts), count, mean,
                        m2, shift))
        return count, mean, m2, shift

    def channel_train(self, count, mean, m2, shift, gamma, beta, running_mean, running_var,
                      *, eps, decay, abs_gamma):
        rt = self.rt
        acc = np.dtype(mean.dtype)
        count, mean, m2, shift = (rt.ascontiguous(a) for a in (count, mean, m2, shift))
        c, parts = int(count.shape[0]), int(count.shape[1])
        stats = rt.empty((N_ROWS, c), acc)
        update = running_mean is not None
        rm = running_mean if update else gamma   # never written when update_running == 0
        rv = running_var if update else gamma
        grid, block = self._per_channel(c)
        fn = self._fn("channel_train", param=gamma.dtype)
        rt.launch(fn, grid, block,
                  (count, mean, m2, shift, np.uint32(c), np.uint32(parts), gamma, beta, rm, rv,
                   np.int32(update), acc.type(eps), acc.type(decay), acc.type(1 - decay),
                   np.int32(abs_gamma), stats))
        return stats

    def channel_eval(self, gamma, beta, running_mean, running_var, *, eps, abs_gamma, acc):
        acc = np.dtype(acc)
        c = int(gamma.shape[0])
        stats = self.rt.empty((N_ROWS, c), acc)
        grid, block = self._per_channel(c)
        fn = self._fn("channel_train", "channel_eval", param=gamma.dtype)
        self.rt.launch(fn, grid, block, (gamma, beta, running_mean, running_var, np.uint32(c),
                                         acc.type(eps), np.int32(abs_gamma), stats))
        return stats

    def normalize_activate(self, x, out, stats, activation, param):
        n, c, s = _ncs(x.shape)
        idx64, it = self._idx(x.size)
        grid, block = self._elementwise(x.size)
        fn = self._fn("normalize_activate", store=x.dtype, act=ACTIVATIONS[activation].code,
                      idx64=idx64)
        self.rt.launch(fn, grid, block, (x, out, stats, np.uint32(c), it(s), it(x.size),
                                         np.dtype(stats.dtype).type(param)))

    # ---- backward --------------------------------------------------------------------------
    @staticmethod
    def backward_terms(z, dz, x, stats, activation, param, t):
        """The kernels rebuild dy and t from z in registers: the terms are just the inputs."""
        return z, dz, x, stats, activation, param, t

    def grad_sums(self, terms):
        z, dz, x, stats, activation, param, t = terms
        n, c, s = _ncs(z.shape)
        acc = np.dtype(stats.dtype)
        idx64, it = self._idx(z.size)
        p = self.plan(z.shape)
        sum_dy, sum_dy_t = (self.rt.empty((c, p.parts), acc) for _ in range(2))
        fn = self._fn("grad_sums", store=z.dtype, act=ACTIVATIONS[activation].code, t=t,
                      idx64=idx64)
        self.rt.launch(fn, c * p.parts, p.block,
                       (z, dz, x if t == T_XHAT_FROM_X else z, stats, np.uint32(c), it(s),
                        it(n * s), np.uint32(p.parts), acc.type(param), sum_dy, sum_dy_t))
        return sum_dy, sum_dy_t

    def channel_backward(self, sum_dy, sum_dy_t, stats, gamma, *, m, t, training, abs_gamma):
        """dgamma and dbeta come back in gamma's dtype, coef (3, C) in the accumulation one."""
        rt = self.rt
        acc = np.dtype(stats.dtype)
        sum_dy, sum_dy_t = rt.ascontiguous(sum_dy), rt.ascontiguous(sum_dy_t)
        c, parts = int(sum_dy.shape[0]), int(sum_dy.shape[1])
        dgamma, dbeta = rt.empty((c,), gamma.dtype), rt.empty((c,), gamma.dtype)
        coef = rt.empty((N_COEF, c), acc)
        grid, block = self._per_channel(c)
        fn = self._fn("channel_backward", param=gamma.dtype, t=t)
        rt.launch(fn, grid, block,
                  (sum_dy, sum_dy_t, np.uint32(c), np.uint32(parts), stats, gamma,
                   acc.type(m), np.int32(bool(training)), np.int32(bool(abs_gamma)), dgamma,
                   dbeta, coef))
        return dgamma, dbeta, coef

    def grad_input(self, terms, coef, dx):
        z, dz, x, stats, activation, param, t = terms
        n, c, s = _ncs(z.shape)
        idx64, it = self._idx(z.size)
        grid, block = self._elementwise(z.size)
        fn = self._fn("grad_input", store=z.dtype, act=ACTIVATIONS[activation].code, t=t,
                      idx64=idx64)
        self.rt.launch(fn, grid, block,
                       (z, dz, x if t == T_XHAT_FROM_X else z, stats, coef, np.uint32(c),
                        it(s), it(z.size), np.dtype(stats.dtype).type(param), dx))
