"""What forward hands to backward, and the layout of the per-channel vectors.

Every backend keeps its per-channel quantities in one ``(N_ROWS, C)`` array in the accumulation
dtype, so that kernels take one pointer and the saved state holds one small array.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

#: The modes of :func:`cupy_abn.abn_forward`: ``"standard"`` (plain ABN, keeps x),
#: ``"inplace"`` (INPLACE-ABN II, the default) and ``"inplace_v1"`` (INPLACE-ABN I).
MODES = ("standard", "inplace", "inplace_v1")

# Rows of the per-channel ``stats`` array.  The forward is y = (x - MEAN) * SCALE + BETA with
# SCALE = G * INVSTD; subtracting the mean first keeps y accurate when |mean| >> std.
MEAN, VAR, INVSTD, G, SCALE, BETA = range(6)
N_ROWS = 6

# Rows of the per-channel backward coefficients: dx = (dy - t * A - B) * K.
COEF_A, COEF_B, COEF_K = range(3)
N_COEF = 3

# What the backward kernels use as ``t`` (docs/math.md, "Backward").
T_XHAT_FROM_X = 0   # plain ABN: xhat = (x - mean) * invstd
T_XHAT_FROM_Y = 1   # INPLACE-ABN I and evaluation: xhat = (y - beta) / g
T_U = 2             # INPLACE-ABN II: u = y - beta (= g * xhat), no division per element


def t_kind(mode: str, training: bool) -> int:
    """The ``t`` that backward reduces and applies for a mode."""
    if mode == "standard":
        return T_XHAT_FROM_X
    if mode == "inplace" and training:
        return T_U
    return T_XHAT_FROM_Y


@dataclass
class SavedState:
    """State retained between :func:`abn_forward` and :func:`abn_backward`.

    In the in-place modes it holds ``z`` (the output, which is the caller's ``x`` buffer) and
    per-channel vectors only: nothing of x's size is allocated for backward.

    Attributes
    ----------
    z : array
        The forward output (for the in-place modes, the very buffer that held ``x``).
    x : array or None
        The input, kept by ``mode="standard"`` only.
    stats : array, shape (6, C)
        Per-channel mean, var, invstd, g, scale and beta in the accumulation dtype.
    gamma : array, shape (C,)
        The scale parameter (its sign gives the gradient of ``g = |gamma| + eps``).
    m : float
        Elements per channel that the statistics were computed over (global in sync mode).
    has_residual : bool
        The forward added a residual before the activation (``abn_forward(residual=)``).
    residual : array or None
        That residual, kept by the in-place modes (not copied: it must not change before
        the backward).
    """
    mode: str
    activation: str
    activation_param: float
    training: bool
    m: float
    z: Any
    x: Optional[Any]
    stats: Any
    gamma: Any
    param_dtype: Any
    # The axes' layout when the forward took ``axis`` (the stages saw (N, C, S)), else None.
    layout: Optional[Any] = None
    # The forward had a residual add: the backward returns dL/dr as well.
    has_residual: bool = False
    # r as the stages read it, for the in-place modes' backward (y = phi_inv(z) - r); None in
    # standard mode, which rebuilds nothing from z.
    residual: Optional[Any] = None

    @property
    def shape(self) -> tuple:
        """The shape of the forward output (x's), which grad_output must have."""
        return self.layout.shape if self.layout is not None else tuple(self.z.shape)
