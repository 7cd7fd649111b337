"""Errors raised by the kernel runtimes."""
from __future__ import annotations

from typing import Sequence


class KernelCompileError(RuntimeError):
    """A kernel variant failed to compile.  Raised by the runtime when the variant is first
    asked for, with the family, the entry point and the defines that name the variant, and
    the compiler's message (and log)."""

    def __init__(self, runtime: str, family: str, entry: str, defines: Sequence[str],
                 message: str):
        self.family, self.entry, self.defines = family, entry, tuple(defines)
        super().__init__(f"{runtime}: compiling kernel family {family!r} (entry {entry!r}) "
                         f"with {' '.join(defines) or 'no defines'} failed: {message}")
