"""Read a cubin with ``cuobjdump``: resources per kernel (``-res-usage``) and the SASS of its hot
loops (``-sass``).

A loop is a backward branch (``BRA`` to a lower address); its body is the address range from
the target to the branch.  Innermost loops that touch global memory (``LDG``/``STG``) are
reported; loops without global accesses (the shared-memory tree of a block reduction) run
log2(block) times and are not.  A reported loop is *hot* (``phase: "stream"``) when no barrier
(``BAR``) separates it from the first reported loop: that is the walk over the tensor, which
every thread runs (a barrier before it, e.g. one that shares a value loaded by one thread,
does not count); a loop after a later barrier runs once the block has reduced (e.g. the last
block of a channel merging the B partials of the channel, ``phase: "after_barrier"``).

Per hot loop: instructions, ``LDG``/``STG`` with their widths, and division sequences:

- ``fp32``: ``MUFU.RCP`` then ``FCHK`` (IEEE ``/`` in float32, with its slow path),
- ``fp64``: ``MUFU.RCP64H`` (the double-precision Newton sequence),
- ``int``: ``I2F.U32.RP`` then ``MUFU.RCP`` (unsigned integer division / modulo),
- ``call``: a ``CALL`` out of the loop (the division slow path, a subroutine).

cuobjdump comes from the ``nvidia-cuda-cuobjdump`` wheel (``nvidia/cu13/bin``), which also needs
``nvdisasm`` (``nvidia-cuda-nvdisasm``) for ``-sass``; else from ``$PATH`` or ``$CUDA_PATH``.
"""
from __future__ import annotations

import glob
import os
import re
import shutil
import subprocess
import sys
import tempfile
from dataclasses import asdict, dataclass, field
from typing import Dict, List, Optional

# Bytes moved by one LDG/STG by its width suffix (no suffix: 32 bits).
_WIDTHS = {"128": 16, "64": 8, "U16": 2, "S16": 2, "U8": 1, "S8": 1}


def find_tool(name: str) -> Optional[str]:
    """Path of a CUDA binary tool (``cuobjdump``, ``nvdisasm``): wheels first, then the system."""
    roots = []
    try:
        import nvidia
        roots += list(nvidia.__path__)
    except ImportError:
        pass
    roots += [os.path.join(p, "nvidia") for p in sys.path if p]
    for root in roots:
        for sub in ("cu13", "cuda_cuobjdump", "cuda_nvdisasm", "cu12"):
            hit = glob.glob(os.path.join(root, sub, "bin", name))
            if hit:
                return hit[0]
    found = shutil.which(name)
    if found:
        return found
    for home in (os.environ.get("CUDA_PATH"), os.environ.get("CUDA_HOME"), "/usr/local/cuda"):
        if home and os.path.exists(os.path.join(home, "bin", name)):
            return os.path.join(home, "bin", name)
    return None


def tools_missing() -> List[str]:
    """The tools ``-sass`` needs that are not found."""
    return [t for t in ("cuobjdump", "nvdisasm") if find_tool(t) is None]


def _cuobjdump(cubin: bytes, flag: str) -> str:
    exe = find_tool("cuobjdump")
    if exe is None:
        raise FileNotFoundError("cuobjdump not found (pip install nvidia-cuda-cuobjdump)")
    env = dict(os.environ)
    dis = find_tool("nvdisasm")
    if dis:
        env["PATH"] = os.path.dirname(dis) + os.pathsep + env.get("PATH", "")
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([exe, flag, f.name], capture_output=True, text=True, env=env)
    if out.returncode != 0:
        raise RuntimeError(f"cuobjdump {flag}: {out.stderr.strip()}")
    return out.stdout


@dataclass
class Resources:
    """``cuobjdump -res-usage`` of one kernel."""
    registers: int
    stack: int
    shared: int
    local: int    # spill (local memory) bytes per thread


def resources(cubin: bytes) -> Dict[str, Resources]:
    """Registers, stack, static shared memory and local (spill) bytes per kernel."""
    out: Dict[str, Resources] = {}
    name = None
    for line in _cuobjdump(cubin, "-res-usage").splitlines():
        m = re.match(r"\s*Function\s+(\S+?):?\s*$", line)
        if m:
            name = m.group(1)
            continue
        m = re.search(r"REG:(\d+)\s+STACK:(\d+)\s+SHARED:(\d+)\s+LOCAL:(\d+)", line)
        if m and name:
            out[name] = Resources(*(int(g) for g in m.groups()))
            name = None
    return out


@dataclass
class Instr:
    addr: int
    pred: str
    op: str        # opcode with modifiers, e.g. "LDG.E.128"
    args: str

    @property
    def base(self) -> str:
        return self.op.split(".")[0]


_LINE = re.compile(r"/\*([0-9a-f]{4,})\*/\s+(@!?U?P\w+\s+)?([A-Z][A-Z0-9_.]*)\s*([^;]*);")


def sass(cubin: bytes) -> Dict[str, List[Instr]]:
    """The SASS of every kernel in ``cubin``: name -> instructions in address order."""
    out: Dict[str, List[Instr]] = {}
    cur: Optional[List[Instr]] = None
    for line in _cuobjdump(cubin, "-sass").splitlines():
        m = re.match(r"\s*Function\s*:\s*(\S+)", line)
        if m:
            cur = out.setdefault(m.group(1), [])
            continue
        m = _LINE.search(line)
        if m and cur is not None:
            cur.append(Instr(int(m.group(1), 16), (m.group(2) or "").strip(), m.group(3),
                             m.group(4).strip()))
    return out


def access_bytes(op: str) -> int:
    """Bytes one thread moves with an ``LDG``/``STG`` of this opcode."""
    for mod in op.split(".")[1:]:
        if mod in _WIDTHS:
            return _WIDTHS[mod]
    return 4


@dataclass
class Loop:
    """One hot loop's SASS figures (per iteration of one thread)."""
    start: int
    end: int
    instructions: int
    loads: Dict[str, int] = field(default_factory=dict)    # width name -> count of LDG
    stores: Dict[str, int] = field(default_factory=dict)   # width name -> count of STG
    load_bytes: int = 0
    store_bytes: int = 0
    divisions: Dict[str, int] = field(default_factory=dict)   # kind -> count
    phase: str = "stream"    # "stream" (the tensor walk) or "after_barrier" (see above)
    local_ops: int = 0       # LDL/STL: local memory (spills, arrays in the stack frame)

    @property
    def widest_load(self) -> int:
        return max((_width_bytes(k) for k in self.loads), default=0)

    def as_dict(self) -> dict:
        d = asdict(self)
        d["widest_load_bytes"] = self.widest_load
        return d


def _width_name(op: str) -> str:
    for mod in op.split(".")[1:]:
        if mod in _WIDTHS:
            return mod
    return "32"


def _width_bytes(name: str) -> int:
    return _WIDTHS.get(name, 4)


def _divisions(body: List[Instr]) -> Dict[str, int]:
    out: Dict[str, int] = {}
    ops = [i.op for i in body]
    for k, op in enumerate(ops):
        nxt = ops[k + 1:k + 12]
        if op.startswith("MUFU.RCP64H"):
            out["fp64"] = out.get("fp64", 0) + 1
        elif op.startswith("MUFU.RCP") and any(o.startswith("FCHK") for o in nxt):
            out["fp32"] = out.get("fp32", 0) + 1
        elif op.startswith("I2F") and ".RP" in op and any(o.startswith("MUFU.RCP")
                                                          for o in nxt[:4]):
            out["int"] = out.get("int", 0) + 1
        elif op.startswith("CALL"):
            out["call"] = out.get("call", 0) + 1
    return out


def hot_loops(code: List[Instr]) -> List[Loop]:
    """Innermost backward-branch loops that access global memory, in address order
    (``phase`` tells the hot ones, see the module docstring)."""
    spans = []
    for ins in code:
        if ins.base in ("BRA", "JMP") and not ins.args.startswith("`("):
            m = re.match(r"(?:`\()?\s*(0x[0-9a-f]+)", ins.args)
            if m and int(m.group(1), 16) < ins.addr:
                spans.append((int(m.group(1), 16), ins.addr))
    # innermost: no other span strictly inside
    inner = [s for s in spans if not any(o != s and s[0] <= o[0] and o[1] <= s[1]
                                         for o in spans)]
    def touches_global(span):
        return any(span[0] <= i.addr <= span[1] and i.base in ("LDG", "STG") for i in code)

    walk = min((s for s in inner if touches_global(s)), default=None)
    # the first barrier after the walk begins ends the streaming phase
    first_bar = min((i.addr for i in code if i.base == "BAR" and walk and i.addr > walk[0]),
                    default=None)
    loops = []
    for start, end in sorted(set(inner)):
        body = [i for i in code if start <= i.addr <= end]
        ld = [i for i in body if i.base == "LDG"]
        st = [i for i in body if i.base == "STG"]
        if not ld and not st:
            continue
        loop = Loop(start, end, len(body))
        if first_bar is not None and start > first_bar:
            loop.phase = "after_barrier"
        for group, dest in ((ld, loop.loads), (st, loop.stores)):
            for i in group:
                w = _width_name(i.op)
                dest[w] = dest.get(w, 0) + 1
        loop.load_bytes = sum(access_bytes(i.op) for i in ld)
        loop.store_bytes = sum(access_bytes(i.op) for i in st)
        loop.divisions = _divisions(body)
        loop.local_ops = sum(1 for i in body if i.base in ("LDL", "STL"))
        loops.append(loop)
    return loops


def fp64_instructions(code: List[Instr]) -> int:
    """Double-precision arithmetic instructions (DADD, DMUL, DFMA, ...) in a kernel."""
    return sum(1 for i in code if re.match(r"D(ADD|MUL|FMA|SETP|MNMX)\b", i.base))
