"""Stand-ins for the two modules Chainer 7.8.1 imports at start-up that may not be installed.

``chainer/_environment_check.py`` imports ``numpy.distutils.system_info`` (whose ``get_info``
it reads on macOS only) and ``pkg_resources`` (``require``, ``DistributionNotFound``,
``VersionConflict`` and ``get_distribution``, to check CuPy's and iDeep's versions);
``chainer.testing`` imports ``pkg_resources`` too (``WorkingSet().require``,
``ResolutionError``).  NumPy has no ``numpy.distutils`` on Python >= 3.12, and setuptools has
no ``pkg_resources`` from version 81 (a fresh venv on Python >= 3.12 has no setuptools at
all), so ``import chainer`` fails there.  :func:`apply` appends a finder to the END of
``sys.meta_path`` that serves minimal stand-ins for exactly those names: every other finder
is asked first, so an installed module always wins.  The ``pkg_resources`` stand-in reads
versions with :mod:`importlib.metadata` and compares them with ``packaging`` where it is
importable, else with the PEP 440 rules below (as ``pkg_resources``' own copy of packaging
decides); it checks the named distributions only, not their dependencies.  ChainerMN uses
neither module.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import re
import sys
from types import ModuleType
from typing import Any, Dict, Iterable, List, Optional, Sequence, Tuple, Union

_MARK = "__cupy_abn_stand_in__"


# ---------------------------------------------------------------- numpy.distutils
def get_info(name: str, notfound_action: int = 0) -> Dict[str, Any]:
    """``numpy.distutils.system_info.get_info``: no build information (Chainer reads it to
    detect macOS's Accelerate only)."""
    return {}


# ---------------------------------------------------------------- pkg_resources
class ResolutionError(Exception):
    """Base of the errors of ``require`` (as in ``pkg_resources``)."""


class DistributionNotFound(ResolutionError):
    """No installed distribution of ``req``'s project."""

    def __init__(self, req: "_Requirement", requirers: Optional[Iterable[str]] = None):
        super().__init__(req, requirers)
        self.req, self.requirers = req, requirers

    def __str__(self) -> str:
        return f"The '{self.req}' distribution was not found and is required by the application"


class VersionConflict(ResolutionError):
    """The installed distribution ``dist`` does not satisfy ``req``."""

    def __init__(self, dist: "Distribution", req: "_Requirement"):
        super().__init__(dist, req)
        self.dist, self.req = dist, req

    def report(self) -> str:
        return f"{self.dist} is installed but {self.req} is required"

    def __str__(self) -> str:
        return f"({self.dist}, Requirement.parse('{self.req}'))"


class Distribution:
    """An installed distribution: ``project_name``, ``key`` (lower case) and ``version``."""

    def __init__(self, project_name: str, version: str, location: Optional[str] = None):
        self.project_name, self.version, self.location = project_name, version, location
        self.key = project_name.lower()

    def __repr__(self) -> str:
        return f"{self.project_name} {self.version}"


class _Requirement:
    """``name[extras]<specifiers>``; markers are not supported without ``packaging``."""

    def __init__(self, text: str):
        self.text = text.strip()
        packaging = _packaging()
        if packaging is not None:
            req = packaging.requirements.Requirement(self.text)
            self.name: str = req.name
            self.specifier: str = str(req.specifier)
            self.marker: Any = req.marker
            self._set: Any = req.specifier
            return
        m = re.fullmatch(r"([A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?)\s*(\[[^\]]*\])?\s*"
                         r"\(?([^;()]*)\)?", self.text)
        if m is None:
            raise ValueError(f"unsupported requirement without packaging: {text!r}")
        self.name, self.marker, self._set = m.group(1), None, None
        self.specifier = ",".join(s.strip() for s in m.group(3).split(",") if s.strip())
        for clause in self.specifier.split(",") if self.specifier else []:
            _parse_clause(clause)           # a malformed clause fails here, as in packaging

    def contains(self, version: str) -> bool:
        """Whether ``version`` satisfies the specifiers (pre-releases included, as
        ``pkg_resources`` does)."""
        if self._set is not None:
            return bool(self._set.contains(version, prereleases=True))
        return all(_satisfies(version, *_parse_clause(c))
                   for c in (self.specifier.split(",") if self.specifier else []))

    def __str__(self) -> str:
        return self.name + self.specifier


def _packaging() -> Optional[ModuleType]:
    """The ``packaging`` package with its requirement and specifier modules, or None."""
    try:
        pkg = importlib.import_module("packaging")
        importlib.import_module("packaging.requirements")
        importlib.import_module("packaging.specifiers")
        return pkg
    except ImportError:
        return None


def _requirements(specs: Sequence[Union[str, Iterable[str]]]) -> List[_Requirement]:
    lines: List[str] = []
    for spec in specs:
        lines += spec.splitlines() if isinstance(spec, str) else [s for s in spec]
    return [_Requirement(line) for line in lines
            if line.strip() and not line.strip().startswith("#")]


def _installed(req: _Requirement) -> Distribution:
    try:
        dist = importlib.metadata.distribution(req.name)
    except importlib.metadata.PackageNotFoundError:
        raise DistributionNotFound(req) from None
    version = dist.version
    if version is None:                 # metadata without a version: not a usable install
        raise DistributionNotFound(req)
    return Distribution(getattr(dist, "name", None) or req.name, version)


def require(*requirements: Union[str, Iterable[str]]) -> List[Distribution]:
    """``pkg_resources.require``: the installed distributions of ``requirements``, or
    :class:`DistributionNotFound` / :class:`VersionConflict`.  Requirements whose marker
    does not hold are ignored; dependencies of the distributions are not resolved."""
    found = []
    for req in _requirements(requirements):
        if req.marker is not None and not req.marker.evaluate():
            continue
        dist = _installed(req)
        if not req.contains(dist.version):
            raise VersionConflict(dist, req)
        found.append(dist)
    return found


def get_distribution(dist: str) -> Distribution:
    """``pkg_resources.get_distribution``: the installed distribution of a project (a
    requirement string is checked as by :func:`require`)."""
    return require(dist)[0]


class WorkingSet:
    """``pkg_resources.WorkingSet`` as ``chainer.testing`` uses it: ``require``."""

    def __init__(self, entries: Optional[Iterable[str]] = None):
        self.entries = list(entries) if entries is not None else list(sys.path)

    def require(self, *requirements: Union[str, Iterable[str]]) -> List[Distribution]:
        return require(*requirements)


def fixup_namespace_packages(path_item: str, parent: Optional[str] = None) -> None:
    """No ``pkg_resources``-style namespace packages exist without ``pkg_resources``: nothing
    to fix up (pytest's ``monkeypatch.syspath_prepend`` calls this)."""


# ---------------------------------------------------------------- PEP 440, without packaging
_VERSION = re.compile(
    r"v?(?:(?P<epoch>\d+)!)?(?P<release>\d+(?:\.\d+)*)"
    r"(?:[-_.]?(?P<pre_l>a|b|c|rc|alpha|beta|pre|preview)[-_.]?(?P<pre_n>\d+)?)?"
    r"(?:-(?P<post_n1>\d+)|[-_.]?(?P<post_l>post|rev|r)[-_.]?(?P<post_n2>\d+)?)?"
    r"(?:[-_.]?(?P<dev_l>dev)[-_.]?(?P<dev_n>\d+)?)?"
    r"(?:\+(?P<local>[a-z0-9]+(?:[-_.][a-z0-9]+)*))?", re.IGNORECASE)
_PRE = {"a": 0, "alpha": 0, "b": 1, "beta": 1, "c": 2, "rc": 2, "pre": 2, "preview": 2}

_Key = Tuple[int, Tuple[int, ...], Tuple[int, ...], Tuple[int, ...], Tuple[int, ...]]


class _Version:
    """A PEP 440 version: ordering key, release, and pre/post/dev flags."""

    def __init__(self, text: str):
        m = _VERSION.fullmatch(text.strip())
        if m is None:
            raise ValueError(f"invalid version: {text!r}")
        self.epoch = int(m["epoch"] or 0)
        self.release = tuple(int(p) for p in m["release"].split("."))
        self.pre = None if m["pre_l"] is None else (_PRE[m["pre_l"].lower()],
                                                     int(m["pre_n"] or 0))
        post = m["post_n1"] or ((m["post_n2"] or "0") if m["post_l"] else None)
        self.post = None if post is None else int(post)
        self.dev = None if m["dev_l"] is None else int(m["dev_n"] or 0)
        self.local = m["local"]

    def base(self) -> Tuple[int, Tuple[int, ...]]:
        """Epoch and release without trailing zeros (1.0 == 1.0.0)."""
        release = self.release
        while len(release) > 1 and release[-1] == 0:
            release = release[:-1]
        return (self.epoch, release)

    @property
    def key(self) -> _Key:
        if self.pre is not None:
            pre: Tuple[int, ...] = (1,) + self.pre
        elif self.post is None and self.dev is not None:
            pre = (0,)                  # 1.0.dev0 sorts before 1.0a0
        else:
            pre = (2,)
        post = (0,) if self.post is None else (1, self.post)
        dev = (1,) if self.dev is None else (0, self.dev)
        return self.base() + (pre, post, dev)

    @property
    def is_prerelease(self) -> bool:
        return self.pre is not None or self.dev is not None


def _parse_clause(clause: str) -> Tuple[str, str]:
    m = re.fullmatch(r"\s*(~=|===|==|!=|<=|>=|<|>)\s*(\S+?)\s*", clause)
    if m is None:
        raise ValueError(f"invalid specifier: {clause!r}")
    op, text = m.group(1), m.group(2)
    if op != "===":
        _Version(text[:-2] if op in ("==", "!=") and text.endswith(".*") else text)
    return op, text


def _prefix_match(version: _Version, prefix: str) -> bool:
    """``== prefix.*``: the release padded with zeros starts with the prefix's release (an
    epoch and pre/post/dev parts of the prefix must match too)."""
    want = _Version(prefix)
    if version.epoch != want.epoch:
        return False
    n = len(want.release)
    release = version.release + (0,) * max(0, n - len(version.release))
    if release[:n] != want.release:
        return False
    if want.pre is None and want.post is None and want.dev is None:
        return True
    return (version.pre, version.post, version.dev) == (want.pre, want.post, want.dev)


def _satisfies(text: str, op: str, spec: str) -> bool:
    """One PEP 440 clause, pre-releases allowed (``pkg_resources.require``'s behaviour)."""
    if op == "===":
        return text.strip().lower() == spec.strip().lower()
    v = _Version(text)
    if op in ("==", "!="):
        if spec.endswith(".*"):
            equal = _prefix_match(v, spec[:-2])
        else:
            s = _Version(spec)
            equal = v.key == s.key and (s.local is None
                                        or (v.local or "").lower() == s.local.lower())
        return equal if op == "==" else not equal
    s = _Version(spec)
    if op == "~=":
        prefix = ".".join(map(str, s.release[:-1]))
        return v.key >= s.key and _prefix_match(v, f"{s.epoch}!{prefix}")
    if op == ">=":
        return v.key >= s.key
    if op == "<=":
        return v.key <= s.key
    same_release = v.base() == s.base()
    if op == "<":   # not a pre-release of the bound's release, unless the bound is one
        return v.key < s.key and not (same_release and v.is_prerelease
                                      and not s.is_prerelease)
    # ">": not a post-release (unless the bound is one) nor a local version of its release
    return v.key > s.key and not (same_release and (v.local is not None or (
        v.post is not None and s.post is None)))


# ---------------------------------------------------------------- the finder
_MODULES: Dict[str, Tuple[bool, Dict[str, Any]]] = {
    "numpy.distutils": (True, {}),
    "numpy.distutils.system_info": (False, {"get_info": get_info}),
    "pkg_resources": (False, {
        "require": require, "get_distribution": get_distribution,
        "ResolutionError": ResolutionError, "DistributionNotFound": DistributionNotFound,
        "VersionConflict": VersionConflict, "Distribution": Distribution,
        "WorkingSet": WorkingSet, "working_set": WorkingSet(),
        "fixup_namespace_packages": fixup_namespace_packages}),
}


def _missing(module: str) -> Any:
    def __getattr__(name: str) -> Any:
        raise AttributeError(f"module {module!r} has no attribute {name!r} (it is "
                             f"cupy_abn.chainer's stand-in: {module} is not installed)")
    return __getattr__


class _Loader(importlib.abc.Loader):
    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return None

    def exec_module(self, module: ModuleType) -> None:
        name = module.__name__
        module.__dict__.update(_MODULES[name][1])
        module.__doc__ = (f"cupy_abn.chainer's stand-in for {name}, which is not installed "
                          f"here (see cupy_abn/chainer/_standins.py)")
        setattr(module, _MARK, True)
        setattr(module, "__getattr__", _missing(name))


class _Finder(importlib.abc.MetaPathFinder):
    """Serves the stand-ins; it sits last on ``sys.meta_path``."""

    def find_spec(self, fullname: str, path: Optional[Sequence[str]] = None,
                  target: Optional[ModuleType] = None
                  ) -> Optional[importlib.machinery.ModuleSpec]:
        if fullname not in _MODULES:
            return None
        return importlib.machinery.ModuleSpec(fullname, _Loader(),
                                              is_package=_MODULES[fullname][0])


def is_stand_in(module: ModuleType) -> bool:
    """Whether ``module`` is one of these stand-ins (not the installed module)."""
    return bool(getattr(module, "__dict__", {}).get(_MARK, False))


def apply() -> bool:
    """Append the finder to ``sys.meta_path`` unless it is there; return whether it was
    added."""
    if any(getattr(f, "_cupy_abn_stand_ins", False) for f in sys.meta_path):
        return False
    finder = _Finder()
    setattr(finder, "_cupy_abn_stand_ins", True)
    sys.meta_path.append(finder)
    return True
