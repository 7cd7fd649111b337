"""The launches one API call makes, recorded without a GPU.

The library's own API (``cupy_abn.abn_forward`` / ``abn_backward``, validation and dispatch
pointed at the backend) runs on the real ``KernelBackend`` over a recording stub runtime: every grid, block, variant and argument is the
one the library would launch on a device with ``multiprocessors`` SMs.  Arrays are small stub
objects (shape, dtype, size, flags, ``data.ptr``); nothing is allocated or computed.

The runtime's ``occupancy(fn, block)`` answers from the compiled variant's registers and shared
memory (``cupy_abn._occupancy`` with the sm_90 limits), as the driver would on an H100.
"""
from __future__ import annotations

import contextlib
import itertools
from dataclasses import dataclass, field
from typing import Any, Callable, Dict, List, Tuple

import numpy as np

_PTR = itertools.count(1)


class _Flags:
    def __init__(self):
        self.c_contiguous = True
        self.f_contiguous = False
        self.writeable = True


class _Data:
    def __init__(self, ptr: int):
        self.ptr = ptr


class StubArray:
    """Just what the backend reads of an array: shape, dtype, size, flags, data.ptr."""

    def __init__(self, shape, dtype, role: str = "tmp"):
        self.shape = tuple(int(s) for s in shape)
        self.dtype = np.dtype(dtype)
        self.size = int(np.prod(self.shape, dtype=np.int64))
        self.ndim = len(self.shape)
        self.itemsize = self.dtype.itemsize
        self.nbytes = self.size * self.itemsize
        self.strides = tuple(int(np.prod(self.shape[k + 1:], dtype=np.int64)) * self.itemsize
                             for k in range(self.ndim))
        self.flags = _Flags()
        self.offset = 0
        self.data = _Data(next(_PTR) * 4096)   # 4 KiB aligned, like CuPy's pool
        self.role = role    # "input" (given to the call) or "tmp" (allocated by the call)

    def __len__(self) -> int:
        return self.shape[0]

    def astype(self, dtype, copy: bool = True):
        return self if (np.dtype(dtype) == self.dtype and not copy) else StubArray(
            self.shape, dtype)

    def __repr__(self) -> str:
        return f"StubArray({self.shape}, {self.dtype}, {self.role})"


@dataclass(frozen=True)
class Fn:
    """What ``runtime.function`` returns: the variant, to be looked up in the compiled set."""
    family: str
    entry: str
    defines: Tuple[str, ...]


@dataclass
class Launch:
    fn: Fn
    grid: int
    block: int
    args: Tuple[Any, ...]


@dataclass
class RecordingRuntime:
    """A runtime for ``KernelBackend`` that records launches instead of running them.

    Parameters
    ----------
    occupancy_of : callable
        ``(Fn, block) -> blocks per SM`` from the compiled variant's resources.
    multiprocessors, max_block : int
        Those of the pretended device (H100 SXM: 132, 1024).
    """
    occupancy_of: Callable[[Fn, int], int]
    multiprocessors: int = 132
    max_block: int = 1024
    target: str = "cuda"
    launches: List[Launch] = field(default_factory=list)
    queries: Dict[str, int] = field(default_factory=dict)

    def _count(self, what: str) -> None:
        self.queries[what] = self.queries.get(what, 0) + 1

    def empty(self, shape, dtype):
        return StubArray(shape, dtype)

    def zeros(self, shape, dtype):
        return StubArray(shape, dtype)

    def empty_like(self, a):
        return StubArray(a.shape, a.dtype)

    def ascontiguous(self, a):
        return a

    def aligned(self, a, nbytes: int) -> bool:
        self._count("aligned")
        return a.data.ptr % int(nbytes) == 0

    def function(self, family: str, entry: str, defines):
        return Fn(family, entry, tuple(defines))

    def occupancy(self, fn: Fn, block: int) -> int:
        self._count("occupancy")
        return int(self.occupancy_of(fn, int(block)))

    def launch(self, fn, grid, block, args) -> None:
        self.launches.append(Launch(fn, int(grid), int(block), tuple(args)))

    def __getattr__(self, name: str):
        # A query a newer backend asks that this stub does not know: fail loudly, by name.
        raise AttributeError(f"RecordingRuntime has no {name!r}: the kernel backend asks for "
                             f"a runtime method the static report does not stub yet")


class _Checks:
    """Stands for ``cupy_abn._validation`` inside the API: stub arrays pass every check."""

    def __init__(self, real):
        self._real = real

    def __getattr__(self, name):
        if name == "check_forward" and hasattr(self._real, "Route"):
            # the one-pass API takes (family, layout) from its check: the default layout
            return lambda *a, **k: self._real.Route("stub", None)
        if name.startswith("check_") or name == "array_family":
            return lambda *a, **k: "stub"
        return getattr(self._real, name)


@contextlib.contextmanager
def _api_on(backend):
    """``cupy_abn.api`` with its dispatch pointed at ``backend`` (any revision's api: the
    public functions validate, pick the backend, maybe enter a device, then run the stages)."""
    from cupy_abn import api
    saved = {k: getattr(api, k) for k in ("V", "backend_for", "device_scope")
             if hasattr(api, k)}
    api.V = _Checks(saved["V"])
    api.backend_for = lambda *a, **k: backend
    if "device_scope" in saved:
        api.device_scope = lambda *a, **k: contextlib.nullcontext()
    try:
        yield api
    finally:
        for k, v in saved.items():
            setattr(api, k, v)


PASSES = ("forward_train", "forward_eval", "backward")
# The fused residual add's passes (abn_forward(residual=r)), where the tree has it.
RESIDUAL_PASSES = ("forward_train_residual", "backward_residual")


def has_residual() -> bool:
    """Whether the library this process imports fuses the residual add."""
    import inspect
    from cupy_abn import api
    return "residual" in inspect.signature(api.abn_forward).parameters


def record_pass(rt: RecordingRuntime, shape: Tuple[int, ...], dtype, mode: str, kind: str,
                activation: str = "leaky_relu", param: float = 0.01) -> List[Launch]:
    """The launches of one pass (``kind`` in PASSES or RESIDUAL_PASSES) of the real library
    on ``rt``.

    The public ``abn_forward``/``abn_backward`` run with validation and dispatch pointed at a
    ``KernelBackend`` over ``rt``.  The backward is that of a training forward, recorded after
    it (only the backward's launches are returned); in the in-place modes dx goes into dz's
    buffer, as in ``tests/_kernel_matrix.py``.  The residual kinds add r, an input like x.
    """
    from cupy_abn._kernel_backend import KernelBackend
    be = KernelBackend(rt)
    c = shape[1]
    pdt = np.float32 if np.dtype(dtype) == np.float16 else dtype
    x = StubArray(shape, dtype, "input")
    gamma, beta, rm, rv = (StubArray((c,), pdt, "input") for _ in range(4))
    extra = {"residual": StubArray(shape, dtype, "input")} if kind in RESIDUAL_PASSES else {}
    with _api_on(be) as api:
        rt.launches.clear()
        z, saved = api.abn_forward(x, gamma, beta, rm, rv, training=(kind != "forward_eval"),
                                   decay=0.9, eps=2e-5, activation=activation,
                                   activation_param=param, mode=mode, **extra)
        if not kind.startswith("backward"):
            return list(rt.launches)
        rt.launches.clear()
        dz = StubArray(shape, dtype, "input")
        api.abn_backward(saved, dz, out=dz if mode != "standard" else None)
    return list(rt.launches)


def streams(launch: Launch, numel: int) -> Tuple[int, List[StubArray]]:
    """(tensors of ``numel`` elements the launch reads, those arrays) among its arguments.

    A tensor is read when it is an input of the call (x, z, dz): the arrays the call allocated
    itself (a standard-mode z, a fresh dx) are only written.
    """
    big: Dict[int, StubArray] = {}
    for a in launch.args:
        if isinstance(a, StubArray) and a.size == numel:
            big[id(a)] = a
    reads = [a for a in big.values() if a.role == "input"]
    return len(reads), list(big.values())


def tensors_written(launch: Launch) -> int:
    """x-sized tensors a streaming launch writes: dx and dL/dr in the elementwise backward
    of a residual add (kernels/residual.cuh), else one."""
    fn = launch.fn
    both = fn.entry in ("grad_input", "grad_input_last", "grad_resident")
    return 2 if both and "-DRESIDUAL=1" in fn.defines else 1


def small_bytes(launch: Launch, numel: int) -> int:
    """Bytes of the per-channel arrays a launch touches (each counted once)."""
    seen = {}
    for a in launch.args:
        if isinstance(a, StubArray) and a.size != numel:
            seen[id(a)] = a.nbytes
    return sum(seen.values())
