"""Run under ``mpiexec -n R`` by tests/test_sync_mpi.py; exits non-zero on any mismatch.

Every rank builds the same global batch (same seed), takes its slice (splits such as 5/2/1,
including ranks with no sample), runs the synchronized forward and backward, and checks that

* its output and input gradient equal the slice of one process running the whole batch;
* dgamma, dbeta and the running statistics equal that process's, and are bit-identical on all
  ranks;

for the modes inplace, inplace_v1, standard and float32, float64.  ``--part`` picks what runs:
``array`` (cupy_abn.sync on NumPy arrays), ``chainer`` (the InPlaceABNSync link and the
functional form), ``errors`` (rejections raise on every rank, nothing hangs; evaluation mode
does not communicate), ``mismatch`` (ranks that disagree on C, a dtype, the mode, the
activation or a scalar all raise a ValueError naming it; the next call works), ``empty`` (a
rank with an empty batch at every step, and a global batch of one value per channel, over
several steps, on NumPy and on the kernels on PoCL, equal one process).  A Python exception on any rank aborts the whole job, so that a
failure can never leave the other ranks waiting.
"""
from __future__ import annotations

import argparse
import itertools
import sys
import traceback
import zlib

import numpy as np
from mpi4py import MPI

import cupy_abn
from cupy_abn.sync import sync_abn_backward, sync_abn_forward

WORLD = MPI.COMM_WORLD
RANK, SIZE = WORLD.Get_rank(), WORLD.Get_size()

SPLITS = {
    2: [(3, 4), (0, 5), (6, 0), (1, 1)],
    3: [(5, 2, 1), (2, 0, 4), (0, 0, 3), (0, 1, 0)],
}
# Spatial shape per split (default: none, x is (N, C)).  The large ones make the kernel
# backend reduce each channel in several blocks, so that (C, B>1) partials are merged locally.
SPATIAL = {(3, 4): (4, 5), (5, 2, 1): (4, 5), (0, 1, 0): (4, 5), (8, 2): (32, 32),
           (8, 0, 3): (32, 32)}
BIG_SPLITS = {2: [(8, 2)], 3: [(8, 0, 3)]}
MODES = (("inplace", "leaky_relu", 0.1), ("inplace_v1", "elu", 1.2),
         ("standard", "leaky_relu", 0.2))
DTYPES = (np.float16, np.float32, np.float64)
# (rtol, atol) against one process; the sums dgamma, dbeta get atol * sqrt(m).  float16 (with
# float32 parameters): the merge order changes float32 partials, which may move a float16
# result by an ulp.
TOL = {np.dtype(np.float16): (2e-2, 2e-2), np.dtype(np.float32): (1e-4, 1e-4),
       np.dtype(np.float64): (1e-10, 1e-10)}


class Failures:
    def __init__(self):
        self.items = []

    def close(self, got, want, dtype, what, scale=1.0):
        rtol, atol = TOL[np.dtype(dtype)]
        got = np.asarray(got, np.float64)
        want = np.asarray(want, np.float64)
        if got.shape != want.shape or not np.allclose(got, want, rtol=rtol, atol=atol * scale):
            err = np.abs(got - want).max() if got.shape == want.shape else "shape"
            self.items.append(f"rank {RANK}: {what}: max abs error {err}")

    def same_on_all_ranks(self, arrays, what):
        mine = b"".join(np.ascontiguousarray(a).tobytes() for a in arrays)
        if any(other != mine for other in WORLD.allgather(mine)):
            self.items.append(f"rank {RANK}: {what}: differs between ranks")

    def check(self, cond, what):
        if not cond:
            self.items.append(f"rank {RANK}: {what}")


def global_case(split, dtype, mode, channels=3):
    # Same data on every rank: a seed from the case, not hash() (randomized per process).
    rng = np.random.default_rng(zlib.crc32(repr((split, np.dtype(dtype).name, mode)).encode()))
    shape = (sum(split), channels) + SPATIAL.get(split, ())
    offs = rng.normal(0, 3, channels).reshape((1, channels) + (1,) * (len(shape) - 2))
    x = (0.5 + 2 * rng.standard_normal(shape) + offs).astype(dtype)
    pdtype = np.float32 if dtype == np.float16 else dtype   # mixed precision: float32 params
    gamma = (rng.uniform(0.5, 1.5, channels) * rng.choice([-1.0, 1.0], channels)).astype(pdtype)
    beta = rng.normal(0, 0.5, channels).astype(pdtype)
    rmean = rng.normal(0, 1, channels).astype(pdtype)
    rvar = rng.uniform(0.5, 2, channels).astype(pdtype)
    dz = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, rmean, rvar, dz


def my_slice(split):
    start = sum(split[:RANK])
    return slice(start, start + split[RANK])


def one_process(x, gamma, beta, rm, rv, dz, **kw):
    rm, rv = rm.copy(), rv.copy()
    z, saved = cupy_abn.abn_forward(x.copy(), gamma, beta, rm, rv, **kw)
    z = z.copy()
    dx, dg, db, *dr = cupy_abn.abn_backward(saved, dz.copy())
    return dict(z=z, dx=dx, dg=dg, db=db, rm=rm, rv=rv, m=x.size // x.shape[1],
                dr=dr[0] if dr else None)


def compare(f, got, want, sl, dtype, name):
    f.close(got["z"], want["z"][sl], dtype, f"{name}: z")
    f.close(got["dx"], want["dx"][sl], dtype, f"{name}: dx")
    scale = max(1.0, np.sqrt(want["m"]))
    f.close(got["dg"], want["dg"], dtype, f"{name}: dgamma", scale)
    f.close(got["db"], want["db"], dtype, f"{name}: dbeta", scale)
    f.close(got["rm"], want["rm"], dtype, f"{name}: running_mean")
    f.close(got["rv"], want["rv"], dtype, f"{name}: running_var")
    f.same_on_all_ranks([got[k] for k in ("dg", "db", "rm", "rv")],
                        f"{name}: dgamma/dbeta/running stats")


def cases(big=False):
    for split in SPLITS[SIZE] + (BIG_SPLITS[SIZE] if big else []):
        for dtype in DTYPES:
            for mode, act, p in MODES:
                name = f"split {'/'.join(map(str, split))} {np.dtype(dtype).name} {mode}"
                yield split, dtype, dict(mode=mode, activation=act, activation_param=p), name


def part_array(f, comm, to_device=None, label="array", big=False):
    """NumPy arrays, or (``to_device``) the kernel backend's arrays, through cupy_abn.sync."""
    dev = to_device or (lambda a: a.copy())
    host = (lambda a: a) if to_device is None else (lambda a: a.get())
    for split, dtype, kw, name in cases(big):
        x, gamma, beta, rm, rv, dz = global_case(split, dtype, kw["mode"])
        want = one_process(x, gamma, beta, rm, rv, dz, **kw)
        sl = my_slice(split)
        xl, dzl, gl, bl = dev(x[sl]), dev(dz[sl]), dev(gamma), dev(beta)
        rml, rvl = dev(rm), dev(rv)
        z, saved = sync_abn_forward(xl, gl, bl, rml, rvl, comm, **kw)
        f.check(kw["mode"] == "standard" or z is xl, f"{name}: output not written in place")
        f.check(saved.m == want["m"], f"{name}: saved.m {saved.m} != global {want['m']}")
        z = host(z).copy()
        dx, dg, db = sync_abn_backward(saved, dzl, comm)
        got = dict(z=z, dx=host(dx), dg=host(dg), db=host(db), rm=host(rml), rv=host(rvl))
        compare(f, got, want, sl, dtype, f"{label} {name}")


def part_residual(f, comm):
    """The fused residual add (each rank its own r slice, nothing of it exchanged): NumPy,
    and the kernel backend on PoCL where present, against one process."""
    backends = [("array", lambda a: a.copy(), lambda a: a)]
    import pyopencl as cl
    import pyopencl.array as cla
    devs = [d for p in cl.get_platforms() if "Portable" in p.name for d in p.get_devices()]
    if devs:
        queue = cl.CommandQueue(cl.Context(devs[:1]))
        backends.append(("opencl", lambda a: cla.to_device(queue, np.ascontiguousarray(a)),
                         lambda a: a.get()))
    for (label, dev, host), (split, dtype, kw, name) in itertools.product(backends, cases()):
        x, gamma, beta, rm, rv, dz = global_case(split, dtype, kw["mode"])
        r = np.random.default_rng(len(split)).normal(0, 1, x.shape).astype(dtype)
        want = one_process(x, gamma, beta, rm, rv, dz, residual=r, **kw)
        sl = my_slice(split)
        rml, rvl = dev(rm), dev(rv)
        z, saved = sync_abn_forward(dev(x[sl]), dev(gamma), dev(beta), rml, rvl, comm,
                                    residual=dev(r[sl]), **kw)
        z = host(z).copy()
        dx, dg, db, dr = sync_abn_backward(saved, dev(dz[sl]), comm)
        got = dict(z=z, dx=host(dx), dg=host(dg), db=host(db), rm=host(rml), rv=host(rvl))
        compare(f, got, want, sl, dtype, f"{label} residual {name}")
        f.close(host(dr), want["dr"][sl], dtype, f"{label} residual {name}: dresidual")


def part_opencl(f, comm):
    """The kernel backend (the code that runs on a GPU) on PoCL, exchanging through host copies."""
    import pyopencl as cl
    import pyopencl.array as cla
    devs = [d for p in cl.get_platforms() if "Portable" in p.name for d in p.get_devices()]
    if not devs:
        print("no PoCL device: opencl part skipped")
        return
    queue = cl.CommandQueue(cl.Context(devs[:1]))
    to_device = lambda a: cla.to_device(queue, np.ascontiguousarray(a))  # noqa: E731
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._runtime_opencl import OpenCLRuntime
    for split in BIG_SPLITS[SIZE]:
        n = max(split)
        parts = KernelBackend(OpenCLRuntime(queue)).plan((n, 3) + SPATIAL[split]).parts
        f.check(parts > 1, f"split {split}: the kernel backend uses {parts} block per channel, "
                "the test wants several")
    part_array(f, comm, to_device, "opencl", big=True)


def part_chainer(f, comm):
    from cupy_abn.chainer.sync import InPlaceABNSync, inplace_abn_sync
    import chainer  # after cupy_abn.chainer: its NumPy 2 compatibility step

    # Gradients of gamma and beta are the global sums divided by the number of ranks
    # (ChainerMN's convention: its optimizer then averages them over ranks): times SIZE here.
    for split, dtype, kw, name in cases():
        x, gamma, beta, rm, rv, dz = global_case(split, dtype, kw["mode"])
        want = one_process(x, gamma, beta, rm, rv, dz, **kw)
        sl = my_slice(split)
        gv, bv = chainer.Variable(gamma.copy()), chainer.Variable(beta.copy())
        rml, rvl = rm.copy(), rv.copy()
        xv = chainer.Variable(x[sl].copy())
        with chainer.using_config("train", True):
            h = xv * 1   # an intermediate: a leaf would be copied (cupy_abn.chainer._graph)
            h_id = id(h.array)
            z = inplace_abn_sync(h, gv, bv, comm, running_mean=rml, running_var=rvl, **kw)
        f.check(kw["mode"] == "standard" or id(z.array) == h_id,
                f"functional {name}: not in place")
        zc = z.array.copy()
        z.grad = dz[sl].copy()
        z.backward()
        got = dict(z=zc, dx=xv.grad, dg=gv.grad * SIZE, db=bv.grad * SIZE, rm=rml, rv=rvl)
        compare(f, got, want, sl, dtype, f"functional {name}")
        link = InPlaceABNSync(x.shape[1], comm, dtype=dtype, activation=kw["activation"],
                              activation_param=kw["activation_param"], mode=kw["mode"])
        link.gamma.array[...] = gamma
        link.beta.array[...] = beta
        link.avg_mean[...] = rm
        link.avg_var[...] = rv
        link.cleargrads()
        xv = chainer.Variable(x[sl].copy())
        with chainer.using_config("train", True):
            z = link(xv * 1)
        zc = z.array.copy()
        z.grad = dz[sl].copy()
        z.backward()
        got = dict(z=zc, dx=xv.grad, dg=link.gamma.grad * SIZE, db=link.beta.grad * SIZE,
                   rm=link.avg_mean, rv=link.avg_var)
        compare(f, got, want, sl, dtype, f"link {name}")

    # Evaluation mode: the link exchanges nothing; finetune counts N as L.BatchNormalization.
    counting = CountingComm(getattr(comm, "mpi_comm", comm))
    link = InPlaceABNSync(3, counting)
    xv = chainer.Variable(np.random.default_rng(RANK).standard_normal((2, 3, 4)))
    xv = chainer.Variable(xv.array.astype(np.float32))
    with chainer.using_config("train", False):
        z = link(xv)
    z.grad = np.ones_like(z.array)
    z.backward()
    f.check(counting.calls == 0, f"link evaluation: {counting.calls} collective(s)")
    with chainer.using_config("train", True):
        link(chainer.Variable(np.ones((2, 3, 4), np.float32)), finetune=True)
    f.check(link.N == 1 and counting.calls == 2, f"link finetune: N={link.N}, "
            f"{counting.calls} collectives")


class CountingComm:
    """An mpi4py communicator that counts the collectives passing through it."""

    def __init__(self, mpi):
        self.mpi, self.calls = mpi, 0

    def __getattr__(self, name):
        attr = getattr(self.mpi, name)
        if name in ("Allgather", "Allreduce", "Allgatherv"):
            def counted(*a, **k):
                self.calls += 1
                return attr(*a, **k)
            return counted
        return attr


def part_errors(f, comm):
    x, gamma, beta, rm, rv, dz = global_case((3,) * SIZE, np.float32, "inplace")
    sl = slice(3 * RANK, 3 * RANK + 3)

    # A rank with a bad gamma raises its own error; the others learn it and raise too.
    g = gamma if RANK != SIZE - 1 else gamma.astype(np.float64)
    try:
        sync_abn_forward(x[sl].copy(), g, beta, rm.copy(), rv.copy(), comm)
        f.check(False, "rejected gamma on the last rank: no error here")
    except TypeError as e:
        f.check(RANK == SIZE - 1 and "gamma" in str(e), f"rejection: unexpected {e!r}")
    except RuntimeError as e:
        f.check(RANK != SIZE - 1 and str(SIZE - 1) in str(e), f"rejection: unexpected {e!r}")

    # Channels that differ between ranks: a ValueError everywhere, no mismatched collective.
    xc = x[sl].copy() if RANK else np.concatenate([x[sl], x[sl, :1]], axis=1)
    gc = gamma if RANK else np.concatenate([gamma, gamma[:1]])
    bc = beta if RANK else np.concatenate([beta, beta[:1]])
    try:
        sync_abn_forward(xc, gc, bc, None, None, comm)
        f.check(False, "channel mismatch: no error")
    except ValueError as e:
        f.check("channels" in str(e), f"channel mismatch: unexpected {e!r}")

    # No element per channel in the whole batch: the same ValueError on every rank.  (One
    # element is Chainer's warning, not an error: tests/test_one_value_per_channel.py.)
    x0 = np.ones((0, 3), np.float32)
    try:
        sync_abn_forward(x0, gamma, beta, rm.copy(), rv.copy(), comm)
        f.check(False, "global m == 0: no error")
    except ValueError as e:
        f.check("element" in str(e), f"global m == 0: unexpected {e!r}")

    # A rejected grad_output on one rank: it raises, the others finish (with NaN).
    z, saved = sync_abn_forward(x[sl].copy(), gamma, beta, rm.copy(), rv.copy(), comm)
    bad = dz[sl] if RANK else dz[sl, :2]
    try:
        dx, dg, db = sync_abn_backward(saved, bad.copy(), comm)
        f.check(RANK != 0 and np.isnan(dg).all(), "rejected grad_output: no NaN on the others")
    except ValueError as e:
        f.check(RANK == 0 and "grad_output" in str(e), f"rejected grad_output: {e!r}")

    # Evaluation mode exchanges nothing.
    counting = CountingComm(getattr(comm, "mpi_comm", comm))
    z, saved = sync_abn_forward(x[sl].copy(), gamma, beta, rm, rv, counting, training=False)
    sync_abn_backward(saved, dz[sl].copy(), counting)
    f.check(counting.calls == 0, f"evaluation mode: {counting.calls} collective(s)")
    # Training: 2 collectives forward (header, moments), 1 backward.
    z, saved = sync_abn_forward(x[sl].copy(), gamma, beta, rm.copy(), rv.copy(), counting)
    sync_abn_backward(saved, dz[sl].copy(), counting)
    f.check(counting.calls == 3, f"training: {counting.calls} collectives, expected 3")


def part_mismatch(f, comm):
    """Ranks that disagree: the last rank differs in one thing; every rank raises a ValueError
    that names the argument and lists each rank's value; no rank hangs."""
    last = RANK == SIZE - 1
    x, gamma, beta, rm, rv, dz = global_case((2,) * SIZE, np.float32, "inplace")
    sl = slice(2 * RANK, 2 * RANK + 2)
    base = dict(mode="inplace", activation="leaky_relu", activation_param=0.1, eps=2e-5,
                decay=0.9)
    cases = [
        ("channels", "x", dict(x=np.concatenate([x[sl], x[sl, :1]], axis=1),
                               gamma=np.concatenate([gamma, gamma[:1]]),
                               beta=np.concatenate([beta, beta[:1]]), rm=None, rv=None)),
        # float16 and float32 x both accumulate in float32: only the dtype column differs
        ("x dtype", "x", dict(x=x[sl].astype(np.float16))),
        ("gamma dtype", "gamma", dict(x=x[sl].astype(np.float64), gamma=gamma.astype(np.float64),
                                      beta=beta.astype(np.float64), rm=rm.astype(np.float64),
                                      rv=rv.astype(np.float64), other_x=np.float64)),
        ("mode", "mode", dict(kw=dict(mode="inplace_v1"))),
        ("mode standard", "mode", dict(kw=dict(mode="standard"))),
        ("activation", "activation", dict(kw=dict(activation="elu", activation_param=1.0))),
        ("activation_param", "activation_param", dict(kw=dict(activation_param=0.2))),
        ("eps", "eps", dict(kw=dict(eps=1e-3))),
        ("decay", "decay", dict(kw=dict(decay=0.5))),
    ]
    for name, arg, change in cases:
        xl = x[sl].astype(change.get("other_x", np.float32))
        args = dict(x=xl, gamma=gamma, beta=beta, rm=rm.copy(), rv=rv.copy())
        if "other_x" in change:   # gamma dtype: float64 x everywhere, parameters differ
            args["gamma"], args["beta"] = gamma.astype(np.float32), beta.astype(np.float32)
        kw = dict(base)
        if last:
            args.update({k: v for k, v in change.items() if k not in ("kw", "other_x")})
            kw.update(change.get("kw", {}))
        rm_before = None if args["rm"] is None else args["rm"].copy()
        try:
            sync_abn_forward(args["x"], args["gamma"], args["beta"], args["rm"], args["rv"],
                             comm, **kw)
            f.check(False, f"mismatch {name}: no error")
        except ValueError as e:
            msg = str(e)
            f.check(msg.startswith(f"{arg}:") and f"ranks 0..{SIZE - 1}" in msg,
                    f"mismatch {name}: unexpected message {msg!r}")
        except Exception as e:  # noqa: BLE001 - any other type is a failure
            f.check(False, f"mismatch {name}: {e!r}")
        if rm_before is not None:
            f.check(np.array_equal(args["rm"], rm_before),
                    f"mismatch {name}: running_mean written")
    # The communicator is still usable: a call on which all ranks agree matches one process.
    want = one_process(x, gamma, beta, rm, rv, dz, **base)
    rml, rvl = rm.copy(), rv.copy()
    z, saved = sync_abn_forward(x[sl].copy(), gamma, beta, rml, rvl, comm, **base)
    z = z.copy()
    dx, dg, db = sync_abn_backward(saved, dz[sl].copy(), comm)
    compare(f, dict(z=z, dx=dx, dg=dg, db=db, rm=rml, rv=rvl), want, sl, np.float32,
            "after the mismatches")


def part_empty(f, comm):
    """The last rank holds no sample at any of several steps (the running statistics
    accumulate over them); then a global batch of one value per channel (rank 0 holds it).
    NumPy and the kernels on PoCL, against one process on the concatenated batch."""
    import warnings
    backends = [("numpy", lambda a: a.copy(), lambda a: a)]
    try:
        import pyopencl as cl
        import pyopencl.array as cla
        devs = [d for p in cl.get_platforms() if "Portable" in p.name for d in p.get_devices()]
        if devs:
            queue = cl.CommandQueue(cl.Context(devs[:1]))
            backends.append(("opencl", lambda a: cla.to_device(queue, np.ascontiguousarray(a)),
                             lambda a: a.get()))
    except ImportError:
        pass
    steps = [(3,) * (SIZE - 1) + (0,), (1,) + (2,) * (SIZE - 2) + (0,),
             (4,) * (SIZE - 1) + (0,)]
    for label, dev, host in backends:
        for dtype in (np.float32, np.float64):
            for mode, act, p in MODES:
                kw = dict(mode=mode, activation=act, activation_param=p)
                _, gamma, beta, rm, rv, _ = global_case((9,), dtype, mode)
                rm1, rv1 = rm.copy(), rv.copy()          # one process, over the steps
                rml, rvl = dev(rm), dev(rv)              # this rank, over the steps
                for step, split in enumerate(steps + [(1,) + (0,) * (SIZE - 1)]):
                    x, _, _, _, _, dz = global_case(split, dtype, f"{mode}-{step}")
                    name = f"{label} {np.dtype(dtype).name} {mode} step {step} split {split}"
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        want = one_process(x, gamma, beta, rm1, rv1, dz, **kw)
                        rm1, rv1 = want["rm"], want["rv"]
                        one_warned = any("one value" in str(w.message) for w in caught)
                    sl = my_slice(split)
                    with warnings.catch_warnings(record=True) as caught:
                        warnings.simplefilter("always")
                        xl = dev(x[sl])
                        z, saved = sync_abn_forward(xl, dev(gamma), dev(beta), rml, rvl, comm,
                                                    **kw)
                    warned = any("one value" in str(w.message) for w in caught)
                    f.check(warned == one_warned, f"{name}: warning {warned} != {one_warned}")
                    z = host(z).copy()
                    dx, dg, db = sync_abn_backward(saved, dev(dz[sl]), comm)
                    got = dict(z=z, dx=host(dx), dg=host(dg), db=host(db), rm=host(rml),
                               rv=host(rvl))
                    compare(f, got, want, sl, dtype, name)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--part", choices=["array", "opencl", "chainer", "errors", "mismatch",
                                           "empty", "residual"], required=True)
    parser.add_argument("--comm", choices=["mpi4py", "chainermn"], default="chainermn")
    args = parser.parse_args()
    if args.comm == "chainermn":
        import cupy_abn.chainer  # noqa: F401  NumPy 2 compatibility step before Chainer
        import chainermn
        comm = chainermn.create_communicator("naive", MPI.COMM_WORLD)
    else:
        comm = WORLD
    f = Failures()
    {"array": part_array, "opencl": part_opencl, "chainer": part_chainer,
     "errors": part_errors, "mismatch": part_mismatch, "empty": part_empty,
     "residual": part_residual}[args.part](f, comm)
    all_items = WORLD.allgather(f.items)
    if RANK == 0:
        flat = [i for items in all_items for i in items]
        for item in flat:
            print(item)
        print(f"{args.part} on {SIZE} ranks: {'FAILED' if flat else 'ok'} "
              f"({len(flat)} mismatch(es))")
    return 1 if any(all_items) else 0


if __name__ == "__main__":
    try:
        code = main()
    except BaseException:  # noqa: BLE001 - any exception must end every rank, not hang them
        traceback.print_exc()
        sys.stdout.flush()
        sys.stderr.flush()
        WORLD.Abort(2)
    sys.exit(code)
