"""The last-block hand-off of the fused reductions follows the CUDA memory model, in the PTX.

A block publishes its partials, then counts itself in (an atomic on ``arrivals``); the block
that arrives last reads every block's partials (``channel_reduce.cuh``: ``arrived_last``,
``channel_tile.cuh``: ``tile_arrived_last``).  What makes that correct (CUDA C++ Programming
Guide, "Memory Fence Functions"; PTX ISA, "Memory Consistency Model": release and acquire
patterns) is checked on the PTX of each family that has the hand-off:

* release: every store of a partial, then a fence (``membar.gl``/``fence.sc``/
  ``fence.acq_rel`` at GPU scope or wider), then the ``atom``/``red`` on the counter;
* acquire: after the ``atom``, a fence in the same thread's path, before any barrier that
  hands its result to the rest of the block (a fence run by the other threads after that
  barrier is no acquire pattern: the fence must follow the read of the count in program
  order) and before any read of a partial;
* the partials are read with loads that bypass L1 (``ld.global.cg``, ``ld.volatile``,
  ``ld.relaxed``/``ld.acquire``), never a plain or ``.nc`` load that a stale L1 line could
  answer.

PoCL and Oclgrind cannot show this (their partials go through atomics word by word), so the
order is read from the PTX, text order standing for the path.  Which parameters hold the
partials and the counter is read from the kernel source (the pointers given to ``publish``
and ``arrived_last``), and registers derived from them are followed through the address
arithmetic.  Two variants per family (float16 data with a float32 accumulator, float64
throughout), PTX for the newest architecture of each NVRTC found; NVRTC's output is kept in
``CUPY_ABN_NVRTC_CACHE`` as for ``test_nvrtc_compile``.
"""
import re

import pytest

from cupy_abn import _kernel_source as K
from cupy_abn import _nvrtc

pytestmark = [pytest.mark.once, pytest.mark.timeout(600)]

FOUND = _nvrtc.available()

# The families whose kernel ends with the last-block hand-off.
HANDOFF = [fam for fam, kf in K.FILES.items()
           if re.search(r"\b(tile_)?arrived_last\(", K.read(kf.file))]

FENCE = re.compile(r"^(membar\.(gl|sys)|fence\.(sc|acq_rel)\.(gpu|sys))$")
BARRIER = re.compile(r"^(bar|barrier)(\.cta)?\.(sync|red)\b")
L2_LOAD = re.compile(r"^ld(\.global)?\.(cg|volatile|relaxed\.(gpu|sys)|acquire\.(gpu|sys))\.")
REG = re.compile(r"%[a-z]+\d+")


def _variants(family):
    """A float16/float32-accumulator variant and a float64 one (the last listed)."""
    allv = [d for f, d in K.all_variants() if f == family]
    f32 = [d for d in allv if "-DACC_BITS=32" in d and "-DSTORE_BITS=16" in d]
    return [f32[0], allv[-1]]


def _params(family):
    """Kernel parameter names in order, the partial pointers, and the counter pointer."""
    text = K.read(K.FILES[family].file)
    entry = K.FILES[family].entries[0]
    sig = re.search(rf"\bvoid\s+{entry}\s*\((.*?)\)\s*\{{", text, re.S).group(1)
    names = [re.findall(r"\b[a-z_][a-z0-9_]*\b", p)[-1] for p in sig.split(",")]
    partials = set(re.findall(r"\bpublish\(\s*(\w+)\s*\+", text))
    counter = re.findall(r"\b(?:tile_)?arrived_last\(\s*(\w+)", text)
    assert partials and len(set(counter)) == 1, family
    return names, partials, counter[0]


def _body(ptx, entry):
    start = re.search(rf"\.entry\s+{entry}\s*\(", ptx).start()
    body = ptx[start:]
    end = re.search(r"\n\}", body)
    return body[:end.end()] if end else body


def _instructions(body):
    """(opcode, operands) of each instruction, in text order (labels, directives dropped)."""
    out = []
    for line in body.split("\n"):
        line = line.split("//")[0].strip()
        if not line.endswith(";") or line.startswith("."):
            continue
        line = re.sub(r"^@!?%p\d+\s+", "", line[:-1])
        op, _, args = line.partition(" ")
        out.append((op, args.strip()))
    return out


def _tainted(instrs, entry, indices):
    """Registers holding a pointer derived from kernel parameters ``indices``."""
    params = {f"{entry}_param_{i}" for i in indices}
    regs = set()
    for op, args in instrs:
        if op.startswith("ld.param"):
            m = re.match(r"(%\w+),\s*\[(\w+)\]", args)
            if m and m.group(2) in params:
                regs.add(m.group(1))
    changed = True
    while changed:   # through the address arithmetic (mov, cvta, add, mad, selp ...)
        changed = False
        for op, args in instrs:
            if op.split(".")[0] in ("ld", "st", "atom", "red", "setp", "bra", "bar", "barrier",
                                    "membar", "fence", "ret"):
                continue
            operands = REG.findall(args)
            if len(operands) > 1 and operands[0] not in regs \
                    and any(r in regs for r in operands[1:]):
                regs.add(operands[0])
                changed = True
    return regs


def _address(args):
    m = re.search(r"\[(%\w+)", args)
    return m.group(1) if m else None


def _compiled():
    out = []
    for major, nv in FOUND.items():
        target = _nvrtc.Target(nv.newest_arch(), "ptx")
        for fam in HANDOFF:
            for defines in _variants(fam):
                out.append((major, fam, defines, target))
    return out


def test_handoff_families_found():
    """The check below covers the NCS and the channels-last reductions."""
    assert {"channel_moments", "grad_sums", "channel_moments_last", "grad_sums_last"} <= \
        set(HANDOFF)


@pytest.mark.parametrize("family", HANDOFF)
def test_handoff_release_acquire(family):
    if not FOUND:
        pytest.skip("NVRTC not found (pip install .[nvrtc])")
    names, partials, counter = _params(family)
    entry = K.FILES[family].entries[0]
    for major, fam, defines, target in [c for c in _compiled() if c[1] == family]:
        what = f"NVRTC {major} {family} {' '.join(defines)}"
        instrs = _instructions(_body(_nvrtc.compile_variant(FOUND[major], fam, defines,
                                                            target).ptx, entry))
        part_regs = _tainted(instrs, entry, [names.index(p) for p in partials])
        count_regs = _tainted(instrs, entry, [names.index(counter)])
        atoms = [i for i, (op, a) in enumerate(instrs)
                 if op.split(".")[0] in ("atom", "red") and _address(a) in count_regs]
        assert len(atoms) == 1, f"{what}: one atomic on the counter, found {len(atoms)}"
        a = atoms[0]
        fences = [i for i, (op, _) in enumerate(instrs) if FENCE.match(op)]
        barriers = [i for i, (op, _) in enumerate(instrs) if BARRIER.match(op)]
        stores = [i for i, (op, x) in enumerate(instrs)
                  if op.startswith("st.") and _address(x) in part_regs]
        loads = [i for i, (op, x) in enumerate(instrs)
                 if op.startswith("ld.") and not op.startswith(("ld.param", "ld.shared"))
                 and _address(x) in part_regs]
        assert stores and max(stores) < a, f"{what}: partials stored before the count"
        assert any(max(stores) < f < a for f in fences), \
            f"{what}: no fence between the partials' stores and the count (release)"
        assert loads and min(loads) > a, f"{what}: partials read after the count"
        after = [f for f in fences if f > a]
        assert after, f"{what}: no fence after the count (acquire)"
        limit = min([b for b in barriers if b > a] + [min(loads)])
        assert after[0] < limit, (
            f"{what}: the fence after the count comes after "
            f"{'a barrier' if limit != min(loads) else 'a read of a partial'}: the thread "
            f"that read the count must fence before handing it on (acquire)")
        plain = sorted({instrs[i][0] for i in loads if not L2_LOAD.match(instrs[i][0])})
        assert not plain, f"{what}: partials read through L1: {plain}"
