"""Workloads run under Oclgrind by tests/test_kernels_oclgrind.py, one per process (Oclgrind
reads its OCLGRIND_* settings when the platform loads):

    python -m tests._oclgrind_workload CASE_ID   # one case of tests/_kernel_matrix.py
    python -m tests._oclgrind_workload planted   # a kernel that writes out of bounds

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


def main(what: str) -> int:
    queue = oclgrind_queue()
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
