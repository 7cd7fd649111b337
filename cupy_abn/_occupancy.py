"""Blocks per multiprocessor from a kernel's resources: the CUDA occupancy calculation as a pure
function, so that the offline report, the OpenCL runtime and tests all size grids the same way
the driver would (``cudaOccupancyMaxActiveBlocksPerMultiprocessor`` with no dynamic shared
memory).

Per-architecture limits are those of the CUDA C Programming Guide ("Compute Capabilities"
table) and the CUDA Occupancy Calculator:

====================================  =========  =========
limit                                 sm_80      sm_90
====================================  =========  =========
32-bit registers per SM               65536      65536
register allocation unit (per warp)   256        256
register file partitions (schedulers) 4          4
max warps per SM                      64         64
max blocks per SM                     32         32
shared memory per SM (max carveout)   164 KiB    228 KiB
shared memory reserved per block      1 KiB      1 KiB
shared memory allocation unit         128 B      128 B
====================================  =========  =========
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict


@dataclass(frozen=True)
class ArchLimits:
    """Per-SM resource limits of one architecture."""
    name: str
    registers_per_sm: int = 65536
    register_unit: int = 256          # registers are given to a warp in units of this many
    register_partitions: int = 4      # the register file is split between the schedulers
    max_registers_per_thread: int = 255
    max_warps_per_sm: int = 64
    max_blocks_per_sm: int = 32
    max_threads_per_block: int = 1024
    shared_per_sm: int = 164 * 1024
    shared_reserved_per_block: int = 1024
    shared_unit: int = 128
    warp_size: int = 32


LIMITS: Dict[int, ArchLimits] = {
    80: ArchLimits("sm_80", shared_per_sm=164 * 1024),
    90: ArchLimits("sm_90", shared_per_sm=228 * 1024),
}


@dataclass(frozen=True)
class Occupancy:
    """Resident blocks of one kernel on one SM, and what limits them."""
    blocks_per_sm: int
    limiter: str            # "registers", "shared", "warps", "blocks" or "none"
    by_registers: int
    by_shared: int
    by_warps: int
    warps_per_sm: int
    max_warps_per_sm: int

    @property
    def fraction(self) -> float:
        """Resident warps over the SM's maximum (theoretical occupancy)."""
        return self.warps_per_sm / self.max_warps_per_sm


def _ceil_to(value: int, unit: int) -> int:
    return -(-value // unit) * unit


def blocks_per_sm(registers: int, shared_bytes: int, block: int,
                  limits: ArchLimits = LIMITS[90]) -> Occupancy:
    """Blocks of ``block`` threads that one SM holds at once.

    Parameters
    ----------
    registers : int
        Registers per thread (``cuobjdump -res-usage`` REG, or ``cudaFuncAttributes``).
    shared_bytes : int
        Static shared memory per block, bytes (SHARED).
    block : int
        Threads per block.
    limits : ArchLimits
        ``LIMITS[80]``, ``LIMITS[90]``, or another device's limits (an OpenCL device: set
        registers and shared memory to what it has).

    Returns
    -------
    Occupancy
        ``blocks_per_sm`` is 0 when one block does not fit at all.
    """
    if block <= 0 or block > limits.max_threads_per_block:
        raise ValueError(f"block {block} outside 1..{limits.max_threads_per_block}")
    warps = -(-block // limits.warp_size)
    by_warps = min(limits.max_warps_per_sm // warps, limits.max_blocks_per_sm)
    if registers > 0:
        per_warp = _ceil_to(registers * limits.warp_size, limits.register_unit)
        # each scheduler's partition holds whole warps: the remainder of a partition is lost
        part = limits.registers_per_sm // limits.register_partitions
        warps_by_regs = (part // per_warp) * limits.register_partitions
        by_regs = warps_by_regs // warps if registers <= limits.max_registers_per_thread else 0
    else:
        by_regs = limits.max_blocks_per_sm
    per_block = _ceil_to(shared_bytes + limits.shared_reserved_per_block, limits.shared_unit)
    by_shared = limits.shared_per_sm // per_block
    n = min(by_warps, by_regs, by_shared)
    if n == by_regs and by_regs < by_warps:
        limiter = "registers"
    elif n == by_shared and by_shared < by_warps:
        limiter = "shared"
    elif n == limits.max_blocks_per_sm:
        limiter = "blocks"
    else:
        limiter = "warps"
    return Occupancy(n, limiter, by_regs, by_shared, by_warps, n * warps,
                     limits.max_warps_per_sm)


def waves(grid: int, blocks_per_sm_: int, multiprocessors: int) -> float:
    """Grid size in units of the blocks the whole GPU holds at once."""
    full = max(blocks_per_sm_, 1) * multiprocessors
    return grid / full


def wave_efficiency(grid: int, blocks_per_sm_: int, multiprocessors: int) -> float:
    """Fraction of the last-rounded-up wave count that does work: ``waves / ceil(waves)``.

    1.0 for a grid of whole waves; 0.53 for 1.06 waves (the second wave mostly idle).
    """
    w = waves(grid, blocks_per_sm_, multiprocessors)
    return w / max(1, -(-grid // (max(blocks_per_sm_, 1) * multiprocessors)))
