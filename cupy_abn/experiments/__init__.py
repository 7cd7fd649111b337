"""Experiments that reproduce the paper's results in miniature, on real data.

:mod:`cupy_abn.experiments.activation_swap`: Table 1 of the supplement (ReLU vs leaky ReLU,
trained with one and validated with the other), on scikit-learn's digits.
"""
