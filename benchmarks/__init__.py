"""Benchmarks of cupy-abn (run as scripts, or as packages: python -m benchmarks.static)."""
