"""scikit-learn's digits (1,797 real 8x8 images, shipped with the package): a fixed,
stratified train/validation split, standardized with the training set's statistics."""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

SPLIT_SEED = 0          # the split is the same for every run and every training seed
VALIDATION_FRACTION = 0.25


@dataclass(frozen=True)
class Digits:
    """Images ``(N, 1, 8, 8)`` float32 and labels ``(N,)`` int32 of both sets."""
    x_train: np.ndarray
    t_train: np.ndarray
    x_val: np.ndarray
    t_val: np.ndarray

    def describe(self) -> dict:
        """What the JSON records about the data."""
        return {"name": "scikit-learn load_digits (8x8 grey images, 10 classes)",
                "train": int(len(self.t_train)), "validation": int(len(self.t_val)),
                "split": f"stratified, {VALIDATION_FRACTION:.0%} validation, "
                         f"random_state={SPLIT_SEED}",
                "preprocessing": "pixels / 16, then standardized with the training mean "
                                 "and standard deviation"}


def load() -> Digits:
    """The split digits.

    Raises
    ------
    SystemExit
        When scikit-learn is missing, naming the extra that installs it.
    """
    try:
        from sklearn.datasets import load_digits
        from sklearn.model_selection import train_test_split
    except ImportError as err:
        raise SystemExit(f"scikit-learn is needed for the digits ({err}); install it with "
                         'pip install "cupy-abn[experiments]"') from None
    data = load_digits()
    x = (data.images / 16.0).astype(np.float32)[:, None]   # (N, 1, 8, 8)
    t = data.target.astype(np.int32)
    x_tr, x_va, t_tr, t_va = train_test_split(x, t, test_size=VALIDATION_FRACTION,
                                              stratify=t, random_state=SPLIT_SEED)
    mean, std = x_tr.mean(), x_tr.std()
    return Digits(np.ascontiguousarray((x_tr - mean) / std, np.float32), t_tr,
                  np.ascontiguousarray((x_va - mean) / std, np.float32), t_va)
