"""CUDA C sources of cupy-abn, shipped as package data ``cupy_abn.kernels``."""
