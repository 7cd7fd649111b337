"""The GPU proof: one command that turns the docs' predictions into measurements on any
machine with an NVIDIA GPU.

    python -m benchmarks.gpu_proof --out DIR [--budget-s 480] [--dry-run]
    python -m benchmarks.gpu_proof prepare        # with network: wheels for an offline machine
    python -m benchmarks.gpu_proof unpack DIR     # DIR -> benchmarks/results/gpu_proof_<device>/

The steps, in order of value, each with its share of the budget (``plan.py``): the device
and versions (installs included), the GPU tests, the kernel benchmark next to PyTorch, CuPy
and Chainer, the demo network's memory, and the fit of the static model to the measured
times.  Mapillary's ``inplace_abn`` is built in the background and timed only if its build
finished in time.  ``--dry-run`` runs the same path on the CPU at toy sizes.

Modules: ``plan`` (steps, shares, budget), ``child`` (child processes, progress),
``wheels`` (prepared wheels, offline installs, the inplace_abn build), ``steps`` (what each
step runs and reads back), ``proof`` (the run and its output folder), ``unpack``,
``pytest_plugin`` (test order, per-test timeout and deadline of the test step) and
``testrecord`` (its settings and counts, readable without pytest).
"""
from __future__ import annotations

import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"
# Written by ``prepare`` where there is network, read offline by the proof (git-ignored).
WHEELS = ROOT / "build" / "gpu-proof-wheels"
# Installed wheels, the inplace_abn build and the step results of the latest run.
WORK = Path(tempfile.gettempdir()) / "cupy_abn_gpu_proof"
