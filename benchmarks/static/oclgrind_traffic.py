"""Global memory traffic of one pass, counted by Oclgrind (``OCLGRIND_INST_COUNTS=1``).

The pass runs through the library's OpenCL runtime on Oclgrind's device, in a child process
(Oclgrind reads its settings when the platform loads).  Oclgrind prints, after every kernel,
the LLVM instructions it executed, e.g.::

    Instructions executed for kernel 'normalize_activate':
                 16 - load global (256 bytes)
                 16 - store global (256 bytes)
                 32 - call _Z10vload_halfmPU3AS1KDh()

``load global``/``store global`` carry the total bytes; the vector and half-precision access
built-ins (``vload_half``, ``vloadn``, ``vstoren``, ...) are calls, whose bytes follow from
their name (count x width x element size; only those on ``__global`` pointers, ``PU3AS1``).
The kernels move tensor data through those built-ins (``PACK_ACCESS_OPENCL``, vload_half),
and per-channel values and partials through plain accesses, so the two are reported apart:
``tensor_load``/``tensor_store`` and ``other_load``/``other_store``.  Oclgrind prints to stdout with its own
buffering, so a backward (which needs a training forward first) is counted as the counts of
forward + backward minus those of the forward alone.

    python -m benchmarks.static.oclgrind_traffic PASS DTYPE MODE N C H W   (the child)
"""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Dict, Optional, Tuple

ROOT = Path(__file__).resolve().parents[2]
KEYS = ("tensor_load", "tensor_store", "other_load", "other_store")

_COUNT = re.compile(r"^\s*(\d+)\s+-\s+(.*)$")
_GLOBAL = re.compile(r"(load|store) global \((\d+) bytes\)")
_CALL = re.compile(r"call _Z\d+(vload|vstore|vloada|vstorea)(_half)?(\d*)(?:_rt[enpz]+)?"
                   r"\S*?PU3AS1K?(Dh|f|d|h|t|j|m|s)")
_SIZES = {"Dh": 2, "f": 4, "d": 8, "h": 1, "t": 2, "s": 2, "j": 4, "m": 8}


def parse(text: str) -> Dict[str, Dict[str, int]]:
    """Global bytes per kernel name (tensor / other, load / store), from Oclgrind's counts."""
    out: Dict[str, Dict[str, int]] = {}
    kernel = None
    for line in text.splitlines():
        m = re.match(r"Instructions executed for kernel '([^']+)'", line)
        if m:
            kernel = m.group(1)
            out.setdefault(kernel, dict.fromkeys(KEYS, 0))
            continue
        m = _COUNT.match(line)
        if not m or kernel is None:
            continue
        n, what = int(m.group(1)), m.group(2)
        g = _GLOBAL.search(what)
        if g:
            out[kernel]["other_" + g.group(1)] += int(g.group(2))
            continue
        c = _CALL.search(what)
        if c:
            width = int(c.group(3) or 1)
            size = 2 if c.group(2) else _SIZES[c.group(4)]
            out[kernel]["tensor_load" if c.group(1).startswith("vload") else
                        "tensor_store"] += n * width * size
    return out


def count(kind: str, dtype: str, mode: str, shape: Tuple[int, ...],
          timeout: float = 600) -> Dict[str, Dict[str, int]]:
    """Global bytes loaded/stored per kernel in one pass under Oclgrind.

    Parameters
    ----------
    kind : str
        "forward_train", "forward_eval" or "backward".
    dtype, mode : str
    shape : tuple of int

    Returns
    -------
    dict
        kernel name -> {"tensor_load", "tensor_store", "other_load", "other_store": bytes},
        summed over its launches in the pass.

    Raises
    ------
    RuntimeError
        When the child fails (its stderr tail in the message).
    """
    if kind == "backward":
        both = _run("forward_backward", dtype, mode, shape, timeout)
        fwd = _run("forward_train", dtype, mode, shape, timeout)
        out = {}
        for k, v in both.items():
            d = {a: v[a] - fwd.get(k, {}).get(a, 0) for a in KEYS}
            if any(d.values()):
                out[k] = d
        return out
    return _run(kind, dtype, mode, shape, timeout)


def _run(kind, dtype, mode, shape, timeout) -> Dict[str, Dict[str, int]]:
    env = dict(os.environ, OCLGRIND_INST_COUNTS="1",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    proc = subprocess.run([sys.executable, "-m", "benchmarks.static.oclgrind_traffic", kind,
                           dtype, mode, *map(str, shape)], capture_output=True, text=True,
                          env=env, cwd=str(ROOT), timeout=timeout)
    if proc.returncode != 0:
        raise RuntimeError(f"Oclgrind run failed ({proc.returncode}): "
                           f"{(proc.stdout + proc.stderr)[-3000:]}")
    return parse(proc.stdout)


def _queue():
    import pyopencl as cl
    for plat in cl.get_platforms():
        if "Oclgrind" in plat.name:
            return cl.CommandQueue(cl.Context(plat.get_devices()[:1]))
    raise SystemExit("no Oclgrind platform")


def _child(kind: str, dtype: str, mode: str, shape: Tuple[int, ...]) -> int:
    import numpy as np
    import pyopencl.array as cla

    import cupy_abn
    queue = _queue()
    rng = np.random.default_rng(0)
    c = shape[1]
    pdt = np.float32 if dtype == "float16" else dtype

    def dev(a):
        return cla.to_device(queue, np.ascontiguousarray(a))

    x = dev(rng.standard_normal(shape).astype(dtype))
    gamma, beta = dev(np.ones(c, pdt)), dev(np.zeros(c, pdt))
    rm, rv = dev(np.zeros(c, pdt)), dev(np.ones(c, pdt))
    dz = dev(rng.standard_normal(shape).astype(dtype))
    kw = dict(activation="leaky_relu", activation_param=0.01, mode=mode)
    z, saved = cupy_abn.abn_forward(x, gamma, beta, rm, rv, training=kind != "forward_eval",
                                    **kw)
    if kind == "forward_backward":
        cupy_abn.abn_backward(saved, dz, out=dz if mode != "standard" else None)
    queue.finish()
    return 0


def main(argv: Optional[list] = None) -> int:
    a = sys.argv[1:] if argv is None else argv
    return _child(a[0], a[1], a[2], tuple(int(v) for v in a[3:]))


if __name__ == "__main__":
    sys.exit(main())
