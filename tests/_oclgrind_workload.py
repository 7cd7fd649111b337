"""Workloads run under Oclgrind by tests/test_kernels_oclgrind.py, one per process (Oclgrind
reads its OCLGRIND_* settings when the platform loads):

    python -m tests._oclgrind_workload CASE_ID   # one case of tests/_kernel_matrix.py
    python -m tests._oclgrind_workload planted   # a kernel that writes out of bounds
    python -m tests._oclgrind_workload saturated # the check's count of saturated ELU outputs
    python -m tests._oclgrind_workload residual  # the fused residual add's variants

Exit status 0 when the case ran and matched its references; Oclgrind's reports go to the file
named by OCLGRIND_LOG, which the test reads."""
import sys

import numpy as np
import pyopencl as cl
import pyopencl.array as cla

PLANTED = """
__kernel void planted(__global float *out, unsigned int n)
{
    unsigned int i = get_global_id(0);
    out[i + n] = 1.0f;   /* one past the end for i == 0 .. n-1: out of bounds */
}
"""


def oclgrind_queue():
    for plat in cl.get_platforms():
        if "Oclgrind" in plat.name:
            return cl.CommandQueue(cl.Context(plat.get_devices()[:1]))
    raise SystemExit("no Oclgrind platform")


def saturated(queue) -> None:
    """The SATURATED variants of grad_sums (NCS, several blocks per channel) and
    grad_sums_last (channels-last float64 packs, two tiles, several blocks per tile): their
    per-channel counts equal NumPy's."""
    from cupy_abn._kernel_backend import KernelBackend
    from cupy_abn._numpy_backend import NumpyBackend
    from cupy_abn._runtime_opencl import OpenCLRuntime
    from cupy_abn._state import N_ROWS, T_U
    be, npb = KernelBackend(OpenCLRuntime(queue)), NumpyBackend()
    rng = np.random.default_rng(0)
    for shape, dtype in (((4, 2, 32, 32), np.float32), ((300, 100), np.float64)):
        z = rng.choice(np.array([-0.5, -0.25, 0.5], dtype), size=shape)   # alpha 0.5
        dz = rng.standard_normal(shape).astype(dtype)
        stats = np.ones((N_ROWS, shape[1]), dtype)
        d = [cla.to_device(queue, np.ascontiguousarray(a)) for a in (z, dz, stats)]
        counts = be.grad_sums(be.backward_terms(d[0], d[1], None, d[2], "elu", 0.5, T_U),
                              saturated=True)[2]
        assert counts.shape[1] > 1, counts.shape
        want = npb.grad_sums(npb.backward_terms(z, dz, None, stats, "elu", 0.5, T_U),
                             saturated=True)[2][:, 0]
        got = counts.get().astype(np.int64).sum(axis=1)
        assert (got == want).all() and want.sum() > 0, (got, want)


def residual(queue) -> None:
    """The RESIDUAL variants against float64 (tests/test_residual.py): the resident kernels,
    the two-pass ones with several blocks per channel (packs and single elements, the
    in-place and the plain t), and the channels-last ones."""
    from cupy_abn import _kernel_backend
    from tests.test_residual import _check
    dev = (lambda a: cla.to_device(queue, np.ascontiguousarray(a)), lambda a: a.get())
    _check((2, 3, 4, 8), np.float32, "inplace", "elu", True, *dev)
    _check((2, 3, 4, 4), np.float16, "inplace_v1", "leaky_relu", True, *dev)
    _kernel_backend.RESIDENT = False
    _check((4, 2, 32, 32), np.float32, "inplace", "leaky_relu", True, *dev)
    _check((3, 2, 7, 7), np.float64, "standard", "relu", True, *dev)
    _check((2, 40, 3, 4), np.float64, "inplace_v1", "elu", True, *dev, last=True)
    _check((2, 37, 3, 4), np.float32, "inplace", "identity", False, *dev, last=True)


def main(what: str) -> int:
    queue = oclgrind_queue()
    if what == "residual":
        residual(queue)
        queue.finish()
        print("ok residual")
        return 0
    if what == "saturated":
        saturated(queue)
        queue.finish()
        print("ok saturated")
        return 0
    if what == "planted":
        buf = cla.zeros(queue, (4,), np.float32)
        prg = cl.Program(queue.context, PLANTED).build()
        prg.planted(queue, (4,), (4,), buf.data, np.uint32(4))
        queue.finish()
        return 0
    from tests._kernel_matrix import OCLGRIND_CASES, check_case
    case = {c.id: c for c in OCLGRIND_CASES}[what]
    check_case(case, lambda a: cla.to_device(queue, np.ascontiguousarray(a)),
               lambda a: a.get())
    queue.finish()
    print("ok", case.id)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
