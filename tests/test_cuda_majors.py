"""CuPy and NVRTC of one CUDA major, and the oldest GPU each major supports.

**The install.**  CuPy 14 finds NVRTC through ``cuda.pathfinder``, which prefers
``libnvrtc.so.13`` (the ``nvidia-cuda-nvrtc`` wheel) to ``libnvrtc.so.12``
(``nvidia-cuda-nvrtc-cu12``) wherever both are installed, and an NVRTC already loaded in the
process to either.  So ``cupy-cuda12x`` beside an NVRTC 13 wheel compiles with NVRTC 13, which
has no sm_50 to sm_72: no extra of ``setup.cfg`` and no tox environment (its extras and deps
together) may install a newer NVRTC wheel than CuPy's CUDA major, or only an older one.  The
check reads the requirement strings; ``test_installed_cupy_loads_its_own_nvrtc`` asks the
CuPy that is installed, in a fresh interpreter.

**The device check.**  ``cupy_abn._runtime_cupy.check_device`` runs once per device, when its
runtime is created, on a stub CuPy here (no GPU): a device below the oldest architecture of the
NVRTC in use raises ``UnsupportedDeviceError`` naming the device, its compute capability, the
NVRTC and CUDA majors, the minimum and what to install; an NVRTC of another major than CuPy's
warns (``NvrtcMismatchWarning``).

**The table.**  ``cupy_abn._nvrtc.NVRTC_MIN_ARCH`` is what the NVRTC wheels report
(``nvrtcGetSupportedArchs``), every kernel family compiles at each major's minimum (every
type, index and pack combination in the full tier), and ``docs/install.md`` shows the same
table.
"""
import configparser
import importlib.util
import json
import os
import re
import subprocess
import sys
import types
import warnings
from collections import Counter
from pathlib import Path

import pytest

import cupy_abn
from cupy_abn import _kernel_source as K
from cupy_abn import _nvrtc
from cupy_abn._errors import CudaSetupError, NvrtcMismatchWarning, UnsupportedDeviceError

from packaging.requirements import Requirement   # a dependency of pytest itself

ROOT = Path(__file__).resolve().parents[1]
FULL = os.environ.get("CUPY_ABN_TIER") == "full"


# ---- the install: requirement strings -------------------------------------------------------
def _cupy_major(req):
    m = re.fullmatch(r"cupy-cuda(\d+)x", req.name.lower())
    return int(m.group(1)) if m else None


def _majors_allowed(req, majors):
    """The majors in ``majors`` of which ``req``'s specifier admits some version."""
    pinned = [s.version.rstrip(".*") for s in req.specifier]
    out = set()
    for major in majors:
        versions = [f"{major}.0.0", f"{major}.99.999"] + [v for v in pinned
                                                          if v.split(".")[0] == str(major)]
        if any(req.specifier.contains(v, prereleases=True) for v in versions):
            out.add(major)
    return out


def nvrtc_majors(req):
    """The NVRTC majors whose wheel ``req`` may install (directly or through CuPy's ``ctk``
    extra, ``cuda-toolkit[nvrtc]``)."""
    name = req.name.lower()
    m = re.fullmatch(r"nvidia-cuda-nvrtc-cu(\d+)", name)
    if m:
        return {int(m.group(1))}
    if name == "nvidia-cuda-nvrtc":                # CUDA 13 on: one name, the major in the version
        return _majors_allowed(req, range(13, 20))
    if name == "cuda-toolkit" and "nvrtc" in req.extras:
        return _majors_allowed(req, range(12, 20))
    cupy = _cupy_major(req)
    if cupy is not None and "ctk" in req.extras:   # cuda-toolkit[...,nvrtc]==<major>.*
        return {cupy}
    return set()


def problems(reqs):
    """What is wrong with installing ``reqs`` together: an empty list when CuPy would load
    the NVRTC of its own CUDA major (or CuPy is absent, or no NVRTC wheel comes with it)."""
    reqs = [Requirement(r) if isinstance(r, str) else r for r in reqs]
    cupys = sorted({_cupy_major(r) for r in reqs} - {None})
    nvrtcs = set().union(*(nvrtc_majors(r) for r in reqs))
    out = []
    if len(cupys) > 1:
        out.append(f"two CuPy packages: {', '.join(f'cupy-cuda{m}x' for m in cupys)}")
    for major in cupys:
        if nvrtcs and max(nvrtcs) != major:
            out.append(f"cupy-cuda{major}x with NVRTC wheels {sorted(nvrtcs)}: CuPy 14 loads "
                       f"NVRTC {max(nvrtcs)} (cuda.pathfinder prefers the newest)")
    return out


def _lines(value, sep="\n"):
    """The entries of a multi-line value (and of a comma-separated one: ``sep=",|\\n"``)."""
    return [x.strip() for x in re.split(sep, value or "") if x.strip()
            and not x.strip().startswith("#")]


def _setup_cfg():
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "setup.cfg")
    base = _lines(cfg.get("options", "install_requires", fallback=""))
    extras = {k: _lines(v) for k, v in cfg.items("options.extras_require")}
    return base, extras


def _tox_envs():
    """{env: (extras, deps)} of every environment of tox.ini's envlist."""
    cfg = configparser.ConfigParser(interpolation=None)
    cfg.read(ROOT / "tox.ini")

    def get(env, key):
        sec = f"testenv:{env}"
        raw = cfg.get(sec, key, fallback=None) if cfg.has_section(sec) else None
        raw = cfg.get("testenv", key, fallback="") if raw is None else raw
        # {[section]key} references, as tox substitutes them
        return re.sub(r"\{\[([^\]]+)\]([^}]+)\}", lambda m: cfg.get(m.group(1), m.group(2)),
                      raw)

    envs = _lines(cfg.get("tox", "envlist"), ",|\n")
    assert envs, "tox.ini: no envlist"
    return {env: (_lines(get(env, "extras"), ",|\n"),
                  [d for d in _lines(get(env, "deps")) if not d.startswith("-")])
            for env in envs}


@pytest.mark.parametrize("reqs,bad", [
    (["cupy-cuda12x>=13,<15", "nvidia-cuda-nvrtc==13.5.37"], True),      # the old nvrtc extra
    (["cupy-cuda12x", "nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-nvrtc>=13"], True),
    (["cupy-cuda12x", "nvidia-cuda-nvrtc"], True),
    (["cupy-cuda12x", "cuda-toolkit[nvrtc]==13.*"], True),
    (["cupy-cuda13x", "nvidia-cuda-nvrtc-cu12==12.9.86"], True),         # 13x loads NVRTC 12
    (["cupy-cuda12x", "cupy-cuda13x"], True),
    (["cupy-cuda12x[ctk]", "nvidia-cuda-nvrtc==13.*"], True),
    (["cupy-cuda12x", "nvidia-cuda-nvrtc-cu12==12.*"], False),
    (["cupy-cuda12x[ctk]>=14"], False),
    (["cupy-cuda13x", "nvidia-cuda-nvrtc==13.5.37", "nvidia-cuda-nvrtc-cu12==12.9.86"], False),
    (["cupy-cuda12x"], False),                                           # the system's NVRTC
    (["nvidia-cuda-nvrtc-cu12==12.9.86", "nvidia-cuda-nvrtc==13.5.37"], False),   # no CuPy
])
def test_the_rule(reqs, bad):
    """The checker below flags what it should (it is not vacuous)."""
    assert bool(problems(reqs)) == bad, problems(reqs)


@pytest.mark.once
def test_no_extra_puts_another_nvrtc_beside_cupy():
    """The issue's "done": no extra installs nvidia-cuda-nvrtc>=13 beside cupy-cuda12x."""
    base, extras = _setup_cfg()
    assert {"cuda12", "cuda13", "nvrtc"} <= set(extras)
    bad = {name: problems(base + reqs) for name, reqs in extras.items()}
    assert not any(bad.values()), {k: v for k, v in bad.items() if v}


@pytest.mark.once
def test_tox_environments_install_one_cuda_major():
    """Each tox environment's extras (and deps) together: CuPy loads its own NVRTC."""
    base, extras = _setup_cfg()
    for env, (names, deps) in _tox_envs().items():
        unknown = set(names) - set(extras)
        assert not unknown, f"tox env {env}: unknown extras {unknown}"
        reqs = base + deps + [r for n in names for r in extras[n]]
        assert not problems(reqs), f"tox env {env}: {problems(reqs)}"
        assert "nvrtc" in names and any(_cupy_major(Requirement(r)) for r in reqs), \
            f"tox env {env}: the offline NVRTC checks and CuPy's runtime are both tested"


@pytest.mark.once
@pytest.mark.parametrize("major", [12, 13])
def test_user_extra_brings_the_nvrtc_of_its_cuda(major):
    """``.[cuda12]`` / ``.[cuda13]``: CuPy with the NVRTC wheel of its major, so that CuPy 14
    needs no CUDA toolkit to compile the kernels and loads that NVRTC, not the system's."""
    _, extras = _setup_cfg()
    reqs = [Requirement(r) for r in extras[f"cuda{major}"]]
    assert {_cupy_major(r) for r in reqs} - {None} == {major}
    assert set().union(*(nvrtc_majors(r) for r in reqs)) == {major}


@pytest.mark.once
def test_constraints_pin_no_cupy_or_nvrtc():
    """The constraint files pin NumPy and setuptools only: the CUDA major is the extras'."""
    for path in sorted((ROOT / ".ci").glob("*constraints*.txt")):
        for line in _lines(path.read_text()):
            req = Requirement(line)
            assert _cupy_major(req) is None and not nvrtc_majors(req) and \
                not req.name.lower().startswith("nvidia-"), f"{path.name}: {line}"


_PROBE = r"""
import json
out = {}
try:
    import cupy
    out["cupy"] = cupy.__version__
    out["cuda"] = int(cupy.cuda.runtime.runtimeGetVersion())
    try:
        out["nvrtc"] = list(cupy.cuda.nvrtc.getVersion())
    except Exception as err:
        out["error"] = f"{type(err).__name__}: {err}"
except ImportError:
    pass
print(json.dumps(out))
"""


def test_installed_cupy_loads_its_own_nvrtc(tmp_path):
    """The CuPy installed here (none: nothing to check) loads an NVRTC of its CUDA major.  In
    a fresh interpreter: in this one the offline checks may have loaded both NVRTCs already,
    and cuda.pathfinder would take the one loaded first."""
    res = subprocess.run([sys.executable, "-c", _PROBE], cwd=tmp_path, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    info = json.loads(res.stdout.strip().splitlines()[-1])
    if "cupy" not in info:
        return                                    # no CuPy: the NumPy and OpenCL paths only
    cuda_major = info["cuda"] // 1000
    if "nvrtc" not in info:
        # CuPy 13 loads libnvrtc.so.<its major> from the system's library path only, never
        # from the wheels: without a CUDA toolkit it loads none, which is no mismatch.
        assert int(info["cupy"].split(".")[0]) < 14, \
            f"CuPy {info['cupy']} for CUDA {cuda_major} loads no NVRTC: {info['error']}"
        return
    assert info["nvrtc"][0] == cuda_major, \
        f"CuPy {info['cupy']} for CUDA {cuda_major} loads NVRTC {info['nvrtc']}"


# ---- the device check, on a stub CuPy --------------------------------------------------------
DEFAULT_ARCHS = {12: (50, 52, 53, 60, 61, 62, 70, 72, 75, 80, 86, 87, 89, 90, 100, 101, 103,
                      120, 121),
                 13: (75, 80, 86, 87, 88, 89, 90, 100, 103, 107, 110, 120, 121)}


def make_stub_cupy(cc="70", nvrtc=(13, 5), runtime=12090, name=b"Tesla V100-SXM2-16GB",
                   archs=None, nvrtc_error=None):
    """A ``cupy`` module with what ``_runtime_cupy`` reads of a device; ``calls`` counts the
    reads of the compute capability and of NVRTC's version."""
    calls = Counter()
    stub = types.ModuleType("cupy")
    stub.__path__ = []

    class Device:
        def __init__(self, device_id=0):
            self.id = int(device_id)

        @property
        def compute_capability(self):
            calls["compute_capability"] += 1
            return cc[self.id] if isinstance(cc, dict) else cc

        @property
        def attributes(self):
            return {"MultiProcessorCount": 80, "MaxThreadsPerBlock": 1024}

        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    def get_version():
        calls["nvrtc"] += 1
        if nvrtc_error is not None:
            raise nvrtc_error
        return nvrtc

    def get_supported_archs():
        return archs if archs is not None else DEFAULT_ARCHS[nvrtc[0]]

    cuda = types.ModuleType("cupy.cuda")
    cuda.Device = Device
    cuda.nvrtc = types.SimpleNamespace(getVersion=get_version,
                                       getSupportedArchs=get_supported_archs)
    cuda.runtime = types.SimpleNamespace(runtimeGetVersion=lambda: runtime,
                                         getDeviceProperties=lambda i: {"name": name})
    stub.cuda = cuda
    stub.calls = calls
    return stub


def load_runtime(monkeypatch, stub):
    """A fresh copy of ``cupy_abn._runtime_cupy`` on ``stub`` (CuPy itself not needed; the
    real module, if imported, is untouched)."""
    monkeypatch.setitem(sys.modules, "cupy", stub)
    path = Path(cupy_abn.__file__).parent / "_runtime_cupy.py"
    spec = importlib.util.spec_from_file_location("cupy_abn._runtime_cupy_on_stub", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _array_on(device_id):
    return types.SimpleNamespace(device=types.SimpleNamespace(id=device_id))


def test_v100_with_nvrtc13_names_the_gpu_and_the_fix(monkeypatch):
    """cupy-cuda12x that loaded NVRTC 13 on a V100: the first compile would fail."""
    R = load_runtime(monkeypatch, make_stub_cupy(cc="70", nvrtc=(13, 5), runtime=12090))
    with pytest.raises(UnsupportedDeviceError) as info:
        R.runtime_for(_array_on(0))
    msg = str(info.value)
    for part in ("CUDA device 0", "Tesla V100-SXM2-16GB", "7.0 (sm_70)", "NVRTC 13.5",
                 "CUDA 13", "sm_75", "NVRTC 12 compiles for sm_50",
                 "pip uninstall nvidia-cuda-nvrtc", "'nvidia-cuda-nvrtc-cu12==12.*'",
                 "'.[cuda12]'", "cupy-cuda12x", "libnvrtc.so.13", "docs/install.md"):
        assert part in msg, (part, msg)
    assert "pip uninstall cupy-cuda12x" not in msg         # the right CuPy is installed
    e = info.value
    assert (e.device_id, e.arch, e.nvrtc_major, e.cuda_major, e.minimum) == (0, 70, 13, 12, 75)
    assert isinstance(e, CudaSetupError) and isinstance(e, RuntimeError)


def test_cuda13_cupy_on_a_v100_says_to_install_cuda12(monkeypatch):
    R = load_runtime(monkeypatch, make_stub_cupy(cc="70", nvrtc=(13, 0), runtime=13000))
    with pytest.raises(UnsupportedDeviceError) as info:
        R.CupyRuntime(0)
    msg = str(info.value)
    assert "pip uninstall cupy-cuda13x nvidia-cuda-nvrtc" in msg, msg
    assert "pip install 'cupy-cuda12x>=13' 'nvidia-cuda-nvrtc-cu12==12.*'" in msg, msg
    assert "pathfinder" not in msg                          # CuPy and NVRTC agree


def test_kepler_is_below_every_supported_cuda(monkeypatch):
    R = load_runtime(monkeypatch, make_stub_cupy(cc="37", nvrtc=(12, 9), runtime=12090,
                                                 name=b"Tesla K80"))
    with pytest.raises(UnsupportedDeviceError) as info:
        R.CupyRuntime(0)
    msg = str(info.value)
    assert "Tesla K80" in msg and "3.7 (sm_37)" in msg and "below sm_50" in msg, msg
    assert "no CUDA major that cupy-abn supports compiles for it" in msg, msg


@pytest.mark.parametrize("cc,nvrtc,runtime", [
    ("70", (12, 9), 12090),     # V100 with CUDA 12
    ("50", (12, 0), 12000),     # Maxwell, the oldest of CUDA 12
    ("75", (13, 5), 13020),     # Turing, the oldest of CUDA 13
    ("90", (13, 5), 13020),
    ("120", (12, 9), 12090),
])
def test_supported_devices_pass_silently(monkeypatch, cc, nvrtc, runtime):
    R = load_runtime(monkeypatch, make_stub_cupy(cc=cc, nvrtc=nvrtc, runtime=runtime))
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        rt = R.CupyRuntime(0)
    assert rt.multiprocessors == 80


@pytest.mark.parametrize("nvrtc,runtime,fix", [
    ((13, 5), 12090, "pip uninstall nvidia-cuda-nvrtc; pip install 'nvidia-cuda-nvrtc-cu12==12.*'"),
    ((12, 9), 13020, "pip install 'nvidia-cuda-nvrtc==13.*'"),
])
def test_nvrtc_of_another_major_warns(monkeypatch, nvrtc, runtime, fix):
    """An H100 works with either NVRTC, but not the one CuPy's CUDA major calls for: warn."""
    R = load_runtime(monkeypatch, make_stub_cupy(cc="90", nvrtc=nvrtc, runtime=runtime))
    with pytest.warns(NvrtcMismatchWarning) as rec:
        R.CupyRuntime(0)
    msg = str(rec[0].message)
    assert f"CuPy for CUDA {runtime // 1000} (cupy-cuda{runtime // 1000}x) loaded NVRTC " \
           f"{nvrtc[0]}.{nvrtc[1]}" in msg and fix in msg, msg


def test_no_nvrtc_says_what_to_install(monkeypatch):
    err = RuntimeError('Failure finding "libnvrtc.so.13 or libnvrtc.so.12"')
    R = load_runtime(monkeypatch, make_stub_cupy(cc="90", nvrtc=(12, 9), runtime=12090,
                                                 nvrtc_error=err))
    with pytest.raises(CudaSetupError) as info:
        R.CupyRuntime(0)
    assert not isinstance(info.value, UnsupportedDeviceError)
    msg = str(info.value)
    assert "loads no NVRTC" in msg and "'nvidia-cuda-nvrtc-cu12==12.*'" in msg, msg
    assert info.value.__cause__ is err


def test_the_check_runs_once_per_device(monkeypatch):
    stub = make_stub_cupy(cc={0: "90", 1: "70"}, nvrtc=(12, 9), runtime=12090)
    R = load_runtime(monkeypatch, stub)
    rt0 = R.runtime_for(_array_on(0))
    for _ in range(5):
        assert R.runtime_for(_array_on(0)) is rt0
    assert stub.calls == Counter(nvrtc=1, compute_capability=1)
    R.runtime_for(_array_on(1))
    R.runtime_for(_array_on(1))
    assert stub.calls == Counter(nvrtc=2, compute_capability=2)


def test_minimum_comes_from_the_loaded_nvrtc(monkeypatch):
    """NVRTC's own list decides (a future NVRTC 13 that drops sm_75 raises the minimum)."""
    R = load_runtime(monkeypatch, make_stub_cupy(cc="75", nvrtc=(13, 9), runtime=13090,
                                                 archs=(80, 90, 100)))
    with pytest.raises(UnsupportedDeviceError, match=r"below sm_80"):
        R.CupyRuntime(0)


# ---- the table ------------------------------------------------------------------------------
def test_min_arch_table():
    assert _nvrtc.NVRTC_MIN_ARCH == {12: 50, 13: 75}
    assert _nvrtc.min_arch(12) == 50 and _nvrtc.min_arch(13) == 75
    assert _nvrtc.min_arch(14) == 75            # a newer major: at least the newest known
    assert _nvrtc.min_arch(13, [80, 90]) == 80  # the loaded NVRTC's list decides
    assert _nvrtc.min_arch(12, [35, 50]) == _nvrtc.KERNEL_MIN_ARCH


def _found(major):
    nv = _nvrtc.available((major,)).get(major)
    if nv is None:
        pytest.skip(f"NVRTC {major} not found (pip install .[nvrtc])")
    return nv


@pytest.mark.once
@pytest.mark.parametrize("major", sorted(_nvrtc.NVRTC_MIN_ARCH))
def test_table_is_what_the_nvrtc_wheels_support(major):
    nv = _found(major)
    assert min(nv.supported_archs()) == _nvrtc.NVRTC_MIN_ARCH[major], nv.supported_archs()
    assert _nvrtc.min_arch(major, nv.supported_archs()) == _nvrtc.min_arch(major)


def _arch_sensitive(defines):
    """Float64 accumulation, float16 storage, 64-bit indices, packs: what an old GPU is most
    likely to lack."""
    d = dict(x[2:].partition("=")[::2] for x in defines)
    return ((d.get("ACC_BITS") == "64") + ("16" in (d.get("STORE_BITS"), d.get("PARAM_BITS")))
            + (d.get("IDX64") == "1") + (int(d.get("VEC", "1")) > 1))


def _variants():
    """Default tier: one variant per family, the most arch-sensitive.  Full tier: one per
    family and combination of storage, parameter and accumulator types, indices, packs and
    the other switches (the activation and the saved-tensor kind change only arithmetic on
    those types): 355 of the 1,594 variants, each major in about 2 min on 2 cores."""
    best = {}
    for fam, defines in K.all_variants():
        if FULL:
            key = (fam,) + tuple(sorted(d for d in defines
                                        if not d.startswith(("-DACT=", "-DT_KIND="))))
            best.setdefault(key, (fam, defines))
        elif fam not in best or _arch_sensitive(defines) > _arch_sensitive(best[fam][1]):
            best[fam] = (fam, defines)
    return list(best.values())


@pytest.mark.once
@pytest.mark.timeout(2400)
@pytest.mark.parametrize("major", sorted(_nvrtc.NVRTC_MIN_ARCH))
def test_kernels_compile_at_the_minimum(major):
    """Every family builds a cubin for the oldest GPU of the major, as CuPy would on it (in
    the full tier every type, index and pack combination)."""
    nv = _found(major)
    arch = _nvrtc.min_arch(major)
    option, kind = _nvrtc.cupy_arch_option(arch, nv.version)
    assert kind == "cubin", option
    target = _nvrtc.Target(arch, "cubin")
    jobs = [(major, fam, d, target) for fam, d in _variants()]
    done = _nvrtc.compile_many(jobs)
    assert {j[1] for j in jobs} == set(K.FILES)
    for (_, fam, d, _), res in zip(jobs, done):
        assert res.data[:4] == b"\x7fELF", (fam, d)


def test_install_doc_shows_the_table():
    """docs/install.md, "Supported GPUs": one row per CUDA major, with its minimum."""
    text = (ROOT / "docs" / "install.md").read_text()
    assert "## Supported GPUs" in text
    section = text.split("## Supported GPUs", 1)[1].split("\n## ", 1)[0]
    rows = {int(m.group(1)): m.group(2) for m in
            re.finditer(r"^\|\s*CUDA (\d+)\b[^|]*\|([^\n]*)$", section, re.M)}
    assert set(rows) == set(_nvrtc.NVRTC_MIN_ARCH), rows
    for major, rest in rows.items():
        arch = _nvrtc.min_arch(major)
        assert f"sm_{arch}" in rest and f"{arch // 10}.{arch % 10}" in rest, (major, rest)
    assert "UnsupportedDeviceError" in section and "NvrtcMismatchWarning" in section
