"""The kernel backend: every launch decision (which kernel, grid, block, partials per channel,
vector or scalar path) is made here once; the runtime (CuPy on a GPU, pyopencl on a CPU for the
tests) only compiles, allocates and launches.

Forward (training): ``channel_moments`` (whose last block per channel finishes the statistics)
-> ``normalize_activate``: 2 launches.  Evaluation: ``channel_eval`` -> ``normalize_activate``.
Backward: ``grad_sums`` (whose last block per channel finishes dgamma, dbeta and the
coefficients) -> ``grad_input``: 2 launches.  A synchronized layer exchanges the per-channel
partials between the reduction and its finish, so there the finish is a launch of its own
(``channel_train`` / ``channel_backward``, one thread per channel).

Channels-last x (S == 1: x viewed as (M, C, 1), e.g. NHWC reduced over ``axis=(0, 1, 2)``,
or 2-D x) takes the ``*_last`` kernels (kernels/channel_tile.cuh): a warp reads consecutive
packs along C, so every access is coalesced, and each thread keeps one pack column.

The streaming kernels move 16-byte packs (``VEC`` elements) when every streamed array starts
on a 16-byte boundary and a row (the spatial size S) is a whole number of packs; otherwise
single elements (the scalar path: odd S such as 7x7, offset views).  Reductions size their grid
to whole waves of the occupancy the compiled variant has; elementwise kernels give each row
(n, c) a power-of-two group of threads so that the channel's constants stay in registers.

A runtime provides: ``target`` ("cuda" or "opencl"), ``multiprocessors``, ``max_block``,
``empty(shape, dtype)``, ``zeros(shape, dtype)``, ``empty_like(a)``, ``ascontiguous(a)``,
``copy_into(dst, src)`` (through a strided or offset view),
``aligned(a, nbytes)``, ``function(family, entry, defines)``, ``occupancy(fn, block)`` (blocks
per multiprocessor) and ``launch(fn, grid, block, args)`` (``grid`` blocks of ``block``
threads, 1-D).
"""
from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from . import _geometry as G
from . import _kernel_source as K
from ._activations import ACTIVATIONS
from ._precision import accum_dtype
from ._state import N_ROWS, T_XHAT_FROM_X

MAX_BLOCK = 256            # kernels/storage.h MAX_BLOCK: shared memory and launch bounds
MIN_BLOCK = 32
MAX_PARTS = 1024           # partials per channel
# Packs a reduction thread sums into one accumulator (one per pack lane) before the block's
# Chan merge.  The shifted sums lose accuracy with their length, times 1 + ((shift - mean) /
# std)^2 where the channel's shift (its first element) is far from its mean: float16 channels
# of 2^21 elements, 64 channels, on PoCL gave a batch variance 4.8e-6 relative off with 1,024
# packs per thread, 1.4e-6 with 256 (NumPy: 1e-7); 2^16 packs gave 1e-4.  It binds only where
# a channel has over block * 2^8 packs, and changes none of the benchmark shapes' grids.
MAX_THREAD_PACKS = 2 ** 8
MIN_WAVE_EFFICIENCY = 0.9  # reduction grids: blocks / (waves * resident blocks)
N_COEF = 5                 # kernels/storage.h COEF_A .. COEF_T1: dx = (dy - t*A - B) * K
MAX_ROW_GRID = 2 ** 31 - 1   # elementwise grids: blocks beyond it loop over further rows
RES_ELEMS = 8              # kernels/channel_resident.cu: elements a thread holds (4 doubles)
RES_MAX_BLOCK = 1024       # kernels/channel_resident.cu: its largest block
RESIDENT = True            # channels that fit one block take the one-launch path


def unroll(stage: str, vec: int, t: int = 0, idx64: bool = False, last: bool = False,
           saturated: bool = False, residual: bool = False, acc64: bool = False) -> int:
    """Packs in flight per thread and streamed tensor in the hot loops (UNROLL in
    kernels/channel_moments.cu, normalize_activate.cu and grad_terms.cuh): 4 packs (8 single
    elements) in the forward; 2 (4) per tensor in the backward, 1 where they would not fit in
    64 registers (three tensors of 8-wide packs; 64-bit indices with wider loads).

    The channels-last kernels (``last``) hold per-channel constants for a whole pack, so
    fewer: 2 packs of 8 in ``normalize_activate_last``, and the backward's limit is 8 values
    per tensor instead of 16 (``grad_sums_last.cu``, ``grad_input_last.cu``).  The
    finiteness check's ``grad_sums`` variants that count saturated outputs (``saturated``)
    take 1 pack on the vector path (``grad_sums.cu``: the count would spill at 2).

    A fused residual add (``residual``, kernels/residual.cuh) streams r beside x: the
    elementwise forward keeps half as many 8-wide packs (channels-last: half as many rows of
    any width) in flight, and the backward counts r as a third tensor, as x for plain ABN.
    With float64 accumulators (``acc64``) the residual add's backward takes fewer still: 2
    elements or 1 pack (grad_sums*.cu, grad_input.cu); the channels-last elementwise backward
    (``stage="grad_input"``, grad_input_last.cu) 4 elements or 1 pack.  The scalar forward
    with r and 64-bit indices takes 4 elements."""
    if stage == "forward":
        if vec == 1:
            return 4 if residual and idx64 else 8
        return 2 if residual and vec == 8 else 4
    if stage == "normalize":
        if vec == 1:
            return 8
        return (2 if last and vec == 8 else 4) // (2 if residual and last else 1)
    if residual and acc64:
        return (4 if last and stage == "grad_input" else 2) if vec == 1 else 1
    if vec == 1:
        return 4
    if saturated and not last:
        return 1
    streams = 3 if t == T_XHAT_FROM_X or residual else 2
    return 1 if vec * streams * (1 + bool(idx64)) > (8 if last else 16) else 2


def channels_last(shape) -> bool:
    """x viewed as (N, C, S) has S == 1: C is the fastest axis (channels-last x reduced over
    every other axis, or 2-D x), for the ``*_last`` kernels."""
    return G.ncs(shape)[2] == 1


def tile_width(packs: int) -> int:
    """Threads of a channels-last tile along a row: a power of two covering the row's packs,
    at most a warp (kernels/channel_tile.cuh)."""
    t = 1
    while t < min(packs, 32):
        t *= 2
    return t


@dataclass(frozen=True)
class ReductionPlan:
    """Grid of a reduction: ``channels * parts`` blocks of ``block`` threads (channels-last:
    ``tiles * parts``)."""
    parts: int   # B: blocks (partials) per channel or tile
    block: int   # threads per block, a power of two


@dataclass(frozen=True)
class RowPlan:
    """Grid of an elementwise kernel: ``grid`` blocks of ``block`` threads, ``row_threads``
    threads (a power of two) per row of ``row_len`` packs."""
    grid: int
    block: int
    row_threads: int


@functools.lru_cache(maxsize=1024)   # pure: plans repeat every step
def reduction_block(m_packs: int, unroll: int, max_block: int = MAX_BLOCK) -> int:
    """Threads per reduction block: the largest power of two (32 .. 256) that still gives
    every thread at least one full unrolled iteration of the channel's ``m_packs`` packs."""
    cap = min(MAX_BLOCK, max_block)
    block = MIN_BLOCK
    while block * 2 <= cap and block * 2 * unroll <= m_packs:
        block *= 2
    return block


def wave_efficiency(blocks: int, slots: int) -> float:
    """blocks / (waves * slots): the busy fraction of the multiprocessors' block slots."""
    waves = -(-blocks // slots)
    return blocks / (waves * slots)


@functools.lru_cache(maxsize=1024)   # pure: plans repeat every step
def reduction_parts(m_packs: int, channels: int, block: int, unroll: int, slots: int) -> int:
    """Blocks per channel: the fewest that fill the GPU's ``slots`` resident blocks to whole
    waves (>= 90% busy), each thread keeping at least one full unrolled iteration and at most
    ``MAX_THREAD_PACKS`` packs (up to ``MAX_PARTS``); failing that, the most wave-efficient
    count.

    32x64x112x112 float32 on 132 SMs with 4 resident blocks (528 slots): B = 8, one wave of
    512 blocks; 32x2048x7x7: B = 1, 2048 blocks in 3.9 waves.
    """
    limit = max(1, min(MAX_PARTS, m_packs // (block * unroll)))
    fewest = min(limit, max(1, -(-m_packs // (block * MAX_THREAD_PACKS))))
    best, best_eff = fewest, -1.0
    for parts in range(fewest, limit + 1):
        blocks = channels * parts
        eff = wave_efficiency(blocks, slots)
        if blocks >= MIN_WAVE_EFFICIENCY * slots and eff >= MIN_WAVE_EFFICIENCY:
            return parts
        if eff > best_eff:
            best, best_eff = parts, eff
    return best


@functools.lru_cache(maxsize=1024)   # pure: plans repeat every step
def row_plan(rows: int, row_len: int, unroll: int, max_block: int = MAX_BLOCK,
             max_grid: int = 2 ** 31 - 1) -> RowPlan:
    """Threads per row: the smallest power of two that covers the row's packs in one unrolled
    iteration (at most a block); the rest of the block takes further rows."""
    block = min(MAX_BLOCK, max_block)
    row_threads = 1
    while row_threads < block and row_threads * unroll < row_len:
        row_threads *= 2
    rows_per_block = block // row_threads
    grid = min(max(1, -(-rows // rows_per_block)), max_grid)
    return RowPlan(grid=grid, block=block, row_threads=row_threads)


@functools.lru_cache(maxsize=1024)
def resident_block(m_packs: int, vec: int, max_block: int = RES_MAX_BLOCK,
                   wide: bool = False, residual: bool = False) -> int:
    """Threads of a block that holds a whole channel of ``m_packs`` packs in registers
    (``RES_ELEMS`` elements per thread, half as many for float64 (``wide``); a power of two
    >= 32), or 0 when it does not fit."""
    elems = (RES_ELEMS // 2 if wide else RES_ELEMS) // (2 if residual else 1)
    need = -(-m_packs // max(1, elems // vec))
    block = MIN_BLOCK
    while block < need:
        block *= 2
    return block if block <= min(RES_MAX_BLOCK, max_block) else 0


def _rows_fit_packs(shape, dtype) -> bool:
    """The shape's part of the vector-path decision: rows (S, or C for channels-last x) of
    whole 16-byte packs, and not the channels-last float16 packs with 64-bit indices that
    ``K.last_vector_fits`` excludes."""
    n, c, s = G.ncs(shape)
    if s == 1 and not K.last_vector_fits(dtype, n * c >= K.IDX64_FROM):
        return False
    return (c if s == 1 else s) % K.vec_width(dtype, True) == 0


class KernelBackend:
    """The stages of ``cupy_abn.api`` as kernel launches on ``runtime``."""

    def __init__(self, runtime):
        self.rt = runtime

    # ---- allocation ------------------------------------------------------------------------
    def empty_like(self, a):
        return self.rt.empty_like(a)

    def zeros(self, shape, dtype):
        return self.rt.zeros(shape, dtype)

    def ascontiguous(self, a):
        return self.rt.ascontiguous(a)

    def copy_into(self, dst, src) -> None:
        self.rt.copy_into(dst, src)

    # ---- launch geometry -------------------------------------------------------------------
    def vector_path(self, shape, *arrays, acc=None) -> bool:
        """16-byte packs when rows are whole packs, every streamed array is aligned, and the
        accumulators of a pack fit (``K.vector_fits``: float64 accumulation of float16/32
        data takes the scalar path)."""
        store = arrays[0].dtype
        return (_rows_fit_packs(shape, store) and (acc is None or K.vector_fits(store, acc))
                and self._aligned(*arrays))

    def _aligned(self, *arrays) -> bool:
        """Every given array (None: absent) starts on a 16-byte pack boundary."""
        return all(self.rt.aligned(a, K.PACK_BYTES) for a in arrays if a is not None)

    def _geometry(self, shape, dtype, vector):
        """(channels, row length in packs, packs per channel, index type, idx64).
        Channels-last: a row is one of the M rows of C values, and a channel has M packs'
        worth (one element of each row, VEC channels per pack)."""
        n, c, s = G.ncs(shape)
        idx64 = n * c * s >= K.IDX64_FROM
        it = np.uint64 if idx64 else np.uint32
        if s == 1:
            return c, c // K.vec_width(dtype, vector), n, it, idx64
        row_len = s // K.vec_width(dtype, vector)
        return c, row_len, n * row_len, it, idx64

    def _tile_rows(self, rows: int, packs: int, unroll: int):
        """(tile_x, tiles, parts, block) of a channels-last elementwise launch: full blocks,
        each thread one unrolled iteration of rows."""
        tile_x = tile_width(packs)
        tiles = -(-packs // tile_x)
        block = min(MAX_BLOCK, self.rt.max_block)
        parts = max(1, min(-(-rows // (block // tile_x * unroll)), MAX_ROW_GRID // tiles))
        return tile_x, tiles, parts, block

    def reduction(self, fn, m_packs: int, channels: int, unroll: int) -> ReductionPlan:
        """Block and blocks per channel of a reduction: the largest block whose grid fills
        whole waves at the occupancy of ``fn`` (>= 90% busy); smaller blocks are tried when
        the channel's packs cannot be split into whole waves of large ones."""
        block = reduction_block(m_packs, unroll, self.rt.max_block)
        best = None
        while True:
            slots = self.rt.multiprocessors * max(1, self.rt.occupancy(fn, block))
            parts = reduction_parts(m_packs, channels, block, unroll, slots)
            eff = wave_efficiency(channels * parts, slots)
            if best is None or eff > best[0] + 1e-9:
                best = (eff, ReductionPlan(parts, block))
            if eff >= MIN_WAVE_EFFICIENCY or block // 2 < MIN_BLOCK:
                return best[1]
            block //= 2

    def plan(self, shape, dtype=np.float32) -> ReductionPlan:
        """The reduction grid of a training forward on an aligned ``shape`` of ``dtype``."""
        vector = _rows_fit_packs(shape, dtype)
        c, row_len, m, _, idx64 = self._geometry(shape, dtype, vector)
        last = channels_last(shape)
        fn = self._fn("channel_moments_last" if last else "channel_moments", store=dtype,
                      param=accum_dtype(dtype), idx64=idx64, vector=vector)
        u = unroll("forward", K.vec_width(dtype, vector))
        if last:
            tile_x = tile_width(row_len)
            return self.reduction(fn, m * tile_x, -(-row_len // tile_x), u)
        return self.reduction(fn, m, c, u)

    def _per_channel(self, channels):
        block = min(MAX_BLOCK, self.rt.max_block)
        while block // 2 >= max(channels, MIN_BLOCK):
            block //= 2
        return -(-channels // block), block

    def _resident(self, m_packs, dtype, vector, idx64, acc, last=False,
                  residual=False) -> int:
        """The block of the channel-resident kernels for this channel, or 0 (two passes;
        always for channels-last x); a residual add's variants hold half as many elements."""
        if not RESIDENT or last or idx64 or not K.resident_fits(dtype, acc, vector, residual):
            return 0
        return resident_block(m_packs, K.vec_width(dtype, vector), self.rt.max_block,
                              np.dtype(acc) == np.float64, residual)

    def _fn(self, family, entry=None, **variant):
        return self.rt.function(family, entry or family, K.defines(family, **variant))

    # ---- forward ---------------------------------------------------------------------------
    def moments(self, x, acc, extrema: bool = False):
        """Per-channel (count, mean, M2) partials in ``acc`` and the shift, for a
        synchronized layer or the finiteness check; with ``extrema`` also the partials' min
        and max of x (C, B)."""
        x = self.rt.ascontiguous(x)
        acc = np.dtype(acc)
        fn, grid, plan, args, outs = self._moments(x, acc, acc, extrema)   # params unread
        ext = tuple(self.rt.empty(outs[0].shape, acc) for _ in range(2)) if extrema else (
            outs[0], outs[0])
        self.rt.launch(fn, grid, plan.block,
                       args + outs + self._no_finish(acc, outs[0]) + ext)
        return outs + ext if extrema else outs

    def normalize_train(self, x, out, gamma, beta, running_mean, running_var, *, eps, decay,
                        abs_gamma, activation, param, acc, residual=None):
        """A training forward: statistics (6, C) and ``out``.  A channel that fits one block
        takes one launch that reads x once (``normalize_train_resident``); otherwise
        ``channel_moments`` finishes the statistics in its last block per channel, then
        ``normalize_activate``.  With ``residual`` (r, like x): out = phi(y + r)."""
        acc = np.dtype(acc)
        c = G.channels(x.shape)
        update = running_mean is not None
        rm = running_mean if update else gamma   # never written when update_running == 0
        rv = running_var if update else gamma
        stats = self.rt.empty((N_ROWS, c), acc)
        finish = (gamma, beta, rm, rv, np.int32(update), acc.type(eps), acc.type(decay),
                  acc.type(1 - decay), np.int32(abs_gamma))
        vector = self.vector_path(x.shape, x, out, residual, acc=acc)
        _, row_len, m, it, idx64 = self._geometry(x.shape, x.dtype, vector)
        block = self._resident(m, x.dtype, vector, idx64, acc, channels_last(x.shape),
                               residual is not None)
        if block:
            fn = self._fn("channel_resident", "normalize_train_resident", store=x.dtype,
                          param=gamma.dtype, act=ACTIVATIONS[activation].code, t=0,
                          idx64=idx64, vector=vector, acc=acc, residual=residual is not None)
            self.rt.launch(fn, c, block, (x, out, np.uint32(c), it(row_len), it(m)) + finish
                           + (acc.type(param), stats) + _given(residual))
            return stats
        # Every kernel of the pass is built before the first launch writes anything.
        self.prepare_normalize(x, out, acc, activation, acc, residual)
        fn, grid, plan, args, outs = self._moments(x, gamma.dtype, acc)
        groups = grid // plan.parts   # channels, or channels-last tiles
        arrivals = self.rt.zeros((groups,), np.uint32) if plan.parts > 1 else outs[0]
        self.rt.launch(fn, grid, plan.block,
                       args + outs + (arrivals, np.int32(1)) + finish + (stats,)
                       + (outs[0], outs[0]))   # no extrema
        self.normalize_activate(x, out, stats, activation, param, residual)
        return stats

    def _moments(self, x, param_dtype, acc, extrema=False):
        """(fn, grid, plan, leading arguments, outputs (count, mean, M2, shift)) of the
        statistics launch."""
        vector = self.vector_path(x.shape, x, acc=acc)
        last = channels_last(x.shape)
        if extrema and not K.extrema_vector_fits(
                "channel_moments_last" if last else "channel_moments", x.dtype,
                x.size >= K.IDX64_FROM):
            vector = False
        c, row_len, m, it, idx64 = self._geometry(x.shape, x.dtype, vector)
        u = unroll("forward", K.vec_width(x.dtype, vector))
        if last:
            fn = self._fn("channel_moments_last", store=x.dtype, param=param_dtype,
                          idx64=idx64, vector=vector, acc=acc, extrema=extrema)
            tile_x = tile_width(row_len)
            tiles = -(-row_len // tile_x)
            plan = self.reduction(fn, m * tile_x, tiles, u)
            grid = tiles * plan.parts
            args = (x, np.uint32(c), np.uint32(row_len), it(m), np.uint32(tile_x),
                    np.uint32(plan.parts))
        else:
            fn = self._fn("channel_moments", store=x.dtype, param=param_dtype, idx64=idx64,
                          vector=vector, acc=acc, extrema=extrema)
            plan = self.reduction(fn, m, c, u)
            grid = c * plan.parts
            args = (x, np.uint32(c), it(row_len), it(m), np.uint32(plan.parts))
        outs = tuple(self.rt.empty((c, plan.parts), acc) for _ in range(3)) + (
            self.rt.empty((c,), acc),)
        return fn, grid, plan, args, outs

    @staticmethod
    def _no_finish(acc, dummy):
        """The finish arguments of a moments launch that does not finish (never read)."""
        z = acc.type(0)
        return (dummy, np.int32(0), dummy, dummy, dummy, dummy, np.int32(0), z, z, z,
                np.int32(0), dummy)

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
        fn = self._fn("channel_train", param=gamma.dtype, acc=acc)
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
        fn = self._fn("channel_train", "channel_eval", param=gamma.dtype, acc=acc)
        self.rt.launch(fn, grid, block, (gamma, beta, running_mean, running_var, np.uint32(c),
                                         acc.type(eps), np.int32(abs_gamma), stats))
        return stats

    def normalize_activate(self, x, out, stats, activation, param, residual=None):
        """out = phi((x - mean) * scale + beta [+ residual]) with the constants of ``stats``."""
        acc = np.dtype(stats.dtype)
        z = acc.type(0)
        self._normalize(x, out, stats, activation, param, acc,
                        (np.int32(0), stats, stats, stats, stats, z, np.int32(0)),   # no param
                        residual)

    def normalize_eval(self, x, out, gamma, beta, running_mean, running_var, *, eps, abs_gamma,
                       activation, param, acc, residual=None):
        """An evaluation forward in one launch: each row computes its channel's constants
        from the running statistics; returns stats (6, C) for the backward."""
        acc = np.dtype(acc)
        stats = self.rt.empty((N_ROWS, G.channels(x.shape)), acc)
        self._normalize(x, out, stats, activation, param, gamma.dtype,
                        (np.int32(1), gamma, beta, running_mean, running_var, acc.type(eps),
                         np.int32(abs_gamma)), residual)
        return stats

    def _normalize(self, x, out, stats, activation, param, param_dtype, tail, residual):
        fn, grid, block, head = self._normalize_launch(x, out, stats, stats.dtype, activation,
                                                       param, param_dtype, residual)
        self.rt.launch(fn, grid, block, head + tail + _given(residual))

    def prepare_normalize(self, x, out, acc, activation, param_dtype, residual=None) -> None:
        """Build the elementwise forward kernel now, so that a failed build raises before
        the statistics launch writes the running statistics."""
        self._normalize_launch(x, out, None, acc, activation, 0.0, param_dtype, residual)

    def _normalize_launch(self, x, out, stats, acc, activation, param, param_dtype, residual):
        """(fn, grid, block, leading arguments) of the elementwise forward (stats of dtype
        ``acc``); the residual, when given, is the launch's last argument."""
        acc = np.dtype(acc)
        res = residual is not None
        vector = self.vector_path(x.shape, x, out, residual, acc=acc)
        c, row_len, m, it, idx64 = self._geometry(x.shape, x.dtype, vector)
        if channels_last(x.shape):
            tile_x, tiles, parts, block = self._tile_rows(
                m, row_len, unroll("normalize", K.vec_width(x.dtype, vector), last=True,
                                   residual=res))
            fn = self._fn("normalize_activate_last", store=x.dtype, param=param_dtype,
                          act=ACTIVATIONS[activation].code, idx64=idx64, vector=vector,
                          acc=acc, residual=res)
            return fn, tiles * parts, block, (
                x, out, stats, np.uint32(c), np.uint32(row_len), it(m), np.uint32(tile_x),
                np.uint32(parts), acc.type(param))
        rows = x.shape[0] * c
        plan = row_plan(rows, row_len, unroll("forward", K.vec_width(x.dtype, vector),
                                              idx64=idx64, residual=res),
                        self.rt.max_block,
                        MAX_ROW_GRID)
        fn = self._fn("normalize_activate", store=x.dtype, param=param_dtype,
                      act=ACTIVATIONS[activation].code, idx64=idx64, vector=vector, acc=acc,
                      residual=res)
        return fn, plan.grid, plan.block, (
            x, out, stats, np.uint32(c), it(row_len), it(rows), np.uint32(plan.row_threads),
            acc.type(param))

    # ---- backward --------------------------------------------------------------------------
    def backward_terms(self, z, dz, x, stats, activation, param, t, residual=None):
        """The kernels rebuild dy and t from z in registers: the terms are the inputs, and
        the path (packs or elements) that every backward launch takes.  The kernels' x
        argument (``src``) carries x for plain ABN, the residual r where t needs it (the
        in-place modes, y = phi_inv(z) - r: ``residual`` is given there only), else nothing."""
        src = x if t == T_XHAT_FROM_X else residual
        return (z, dz, src, stats, activation, param, t, residual is not None,
                self.vector_path(z.shape, z, dz, src, acc=stats.dtype))

    def _grad_sums(self, terms, param_dtype, saturated=False):
        """(fn, grid, plan, arguments up to the outputs, outputs (sum dy, sum dy*t)); the
        ``saturated`` variant (the check's) counts saturated ELU outputs as well."""
        z, dz, src, stats, activation, param, t, residual, vector = terms
        acc = np.dtype(stats.dtype)
        last = channels_last(z.shape)
        family = "grad_sums_last" if last else "grad_sums"
        residual = residual and K.residual_read(family, t)
        if vector and residual and not K.residual_vector_fits(
                family, z.dtype, t, z.size >= K.IDX64_FROM, saturated):
            vector = False   # before the geometry: rows in single elements
        c, row_len, m, it, idx64 = self._geometry(z.shape, z.dtype, vector)
        fn = self._fn(family, store=z.dtype, param=param_dtype,
                      act=ACTIVATIONS[activation].code, t=t, idx64=idx64, vector=vector,
                      acc=acc, saturated=saturated, residual=residual)
        u = unroll("backward", K.vec_width(z.dtype, vector), t, idx64, last, saturated,
                   residual, acc == np.float64)
        head = (z, dz, z if src is None else src, stats, np.uint32(c))
        if last:
            tile_x = tile_width(row_len)
            tiles = -(-row_len // tile_x)
            plan = self.reduction(fn, m * tile_x, tiles, u)
            grid = tiles * plan.parts
            head += (np.uint32(row_len), it(m), np.uint32(tile_x))
        else:
            plan = self.reduction(fn, m, c, u)
            grid = c * plan.parts
            head += (it(row_len), it(m))
        args = head + (np.uint32(plan.parts), acc.type(param), _reciprocal(acc, param))
        outs = tuple(self.rt.empty((c, plan.parts), acc) for _ in range(2))
        return fn, grid, plan, args, outs

    def grad_sums(self, terms, saturated: bool = False):
        """Per-channel (sum dy, sum dy*t) partials, for a synchronized layer or the
        finiteness check; with ``saturated`` (ELU, t rebuilt from z) also the partials' counts
        of outputs at ELU's asymptote, (C, B) uint32, from the same read of z."""
        stats = terms[3]
        acc = np.dtype(stats.dtype)
        fn, grid, plan, args, outs = self._grad_sums(terms, acc, saturated)
        dummy = outs[0]
        counts = (self.rt.empty(outs[0].shape, np.uint32),) if saturated else ()
        self.rt.launch(fn, grid, plan.block,
                       args + outs + (dummy, np.int32(0), dummy, acc.type(0), np.int32(0),
                                      np.int32(0), dummy, dummy, dummy) + counts)
        return outs + counts

    def backward_local(self, terms, gamma, dx, *, m, training, abs_gamma, dres=None):
        """A backward: dx into ``dx`` (and dL/dr into ``dres`` after a residual add); returns
        dgamma, dbeta (gamma's dtype).  A channel that fits one block takes one launch that
        reads z and dz once (``grad_resident``); otherwise ``grad_sums`` finishes the
        coefficients in its last block per channel, then ``grad_input``."""
        z, dz, src, stats, activation, param, t, residual, vector = terms
        acc = np.dtype(stats.dtype)
        c = G.channels(z.shape)
        dgamma, dbeta = self.rt.empty((c,), gamma.dtype), self.rt.empty((c,), gamma.dtype)
        coef = self.rt.empty((N_COEF, c), acc)
        finish = (gamma, acc.type(m), np.int32(bool(training)), np.int32(bool(abs_gamma)),
                  dgamma, dbeta, coef)
        vector = vector and self._aligned(dx, dres)
        _, row_len, mp, it, idx64 = self._geometry(z.shape, z.dtype, vector)
        block = self._resident(mp, z.dtype, vector, idx64, acc, channels_last(z.shape),
                               dres is not None)
        if block:
            fn = self._fn("channel_resident", "grad_resident", store=z.dtype, param=gamma.dtype,
                          act=ACTIVATIONS[activation].code, t=t, idx64=idx64, vector=vector,
                          acc=acc, residual=dres is not None)
            self.rt.launch(fn, c, block,
                           (z, dz, z if src is None else src, stats, np.uint32(c), it(row_len),
                            it(mp), acc.type(param), _reciprocal(acc, param)) + finish + (dx,)
                           + _given(dres))
            return dgamma, dbeta
        terms = terms[:-1] + (vector,)
        fn, grid, plan, args, outs = self._grad_sums(terms, gamma.dtype)
        groups = grid // plan.parts   # channels, or channels-last tiles
        arrivals = self.rt.zeros((groups,), np.uint32) if plan.parts > 1 else outs[0]
        self.rt.launch(fn, grid, plan.block, args + outs + (arrivals, np.int32(1)) + finish)
        self.grad_input(terms, coef, dx, dres)
        return dgamma, dbeta

    def channel_backward(self, sum_dy, sum_dy_t, stats, gamma, *, m, t, training, abs_gamma):
        """dgamma and dbeta come back in gamma's dtype, coef (5, C) in the accumulation one."""
        rt = self.rt
        acc = np.dtype(stats.dtype)
        sum_dy, sum_dy_t = rt.ascontiguous(sum_dy), rt.ascontiguous(sum_dy_t)
        c, parts = int(sum_dy.shape[0]), int(sum_dy.shape[1])
        dgamma, dbeta = rt.empty((c,), gamma.dtype), rt.empty((c,), gamma.dtype)
        coef = rt.empty((N_COEF, c), acc)
        grid, block = self._per_channel(c)
        fn = self._fn("channel_backward", param=gamma.dtype, t=t, acc=acc)
        rt.launch(fn, grid, block,
                  (sum_dy, sum_dy_t, np.uint32(c), np.uint32(parts), stats, gamma,
                   acc.type(m), np.int32(bool(training)), np.int32(bool(abs_gamma)), dgamma,
                   dbeta, coef))
        return dgamma, dbeta, coef

    def grad_input(self, terms, coef, dx, dres=None):
        """dx = (dy - t * A - B) * K into ``dx``; after a residual add also dL/dr = dy into
        ``dres``."""
        z, dz, src, stats, activation, param, t, _, vector = terms
        residual = dres is not None   # dL/dr written (r itself read where t needs it)
        last = channels_last(z.shape)
        if vector and not self._aligned(dx, dres):
            vector = False
        if vector and residual and not K.residual_vector_fits(
                "grad_input_last" if last else "grad_input", z.dtype, t, False):
            vector = False
        acc = np.dtype(stats.dtype)
        c, row_len, m, it, idx64 = self._geometry(z.shape, z.dtype, vector)
        src = z if src is None else src
        if last:
            tile_x, tiles, parts, block = self._tile_rows(
                m, row_len, unroll("grad_input", K.vec_width(z.dtype, vector), t, idx64, True,
                                   residual=residual, acc64=acc == np.float64))
            fn = self._fn("grad_input_last", store=z.dtype, act=ACTIVATIONS[activation].code,
                          t=t, idx64=idx64, vector=vector, acc=acc, residual=residual)
            self.rt.launch(fn, tiles * parts, block,
                           (z, dz, src, coef, np.uint32(c), np.uint32(row_len), it(m),
                            np.uint32(tile_x), np.uint32(parts), acc.type(param),
                            _reciprocal(acc, param), dx) + _given(dres))
            return
        rows = z.shape[0] * c
        plan = row_plan(rows, row_len, unroll("grad_input", K.vec_width(z.dtype, vector), t,
                                              idx64, residual=residual,
                                              acc64=acc == np.float64),
                        self.rt.max_block,
                        MAX_ROW_GRID)
        fn = self._fn("grad_input", store=z.dtype, act=ACTIVATIONS[activation].code, t=t,
                      idx64=idx64, vector=vector, acc=acc, residual=residual)
        self.rt.launch(fn, plan.grid, plan.block,
                       (z, dz, src, coef, np.uint32(c), it(row_len), it(rows),
                        np.uint32(plan.row_threads), acc.type(param), _reciprocal(acc, param),
                        dx) + _given(dres))


def _given(a):
    """The residual's launch argument: ``(a,)``, or nothing for the variants without one."""
    return () if a is None else (a,)


def _reciprocal(acc, param):
    """1 / param for the activation's inverse (unused by identity, whose param may be 0)."""
    return acc.type(1.0 / param) if param else acc.type(0)
