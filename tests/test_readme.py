"""The README's Python examples are the quickstart's (docs/quickstart.md), block for block.

The docs' doctest build runs the quickstart's ``{testcode}`` blocks (tests/test_docs.py), with
NumPy standing in for CuPy where no GPU is, and fails when an example leaves an in-place layer
on a copy (an InPlaceFallbackWarning, docs/conf.py); this test makes sure that what it runs is
what the README shows.
"""
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _readme_blocks() -> list:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    return re.findall(r"^```python\n(.*?)^```", text, re.S | re.M)


def _quickstart_blocks() -> list:
    text = (ROOT / "docs" / "quickstart.md").read_text(encoding="utf-8")
    blocks = re.findall(r"^```\{testcode\}[^\n]*\n(.*?)^```", text, re.S | re.M)
    # a MyST directive's options (":hide:", ...) open the block; they are not code
    return [re.sub(r"\A(?::[\w-]+:[^\n]*\n)+", "", b) for b in blocks]


def test_quickstart_has_the_two_examples():
    blocks = _quickstart_blocks()
    assert len(blocks) == 2, blocks
    assert "cupy_abn.abn_forward" in blocks[0]          # the plain CuPy/NumPy loop
    assert "import cupy_abn.chainer" in blocks[1]       # the Chainer block


def test_readme_examples_are_the_quickstarts():
    readme = [b.strip() for b in _readme_blocks()]
    quickstart = [b.strip() for b in _quickstart_blocks()]
    assert readme == quickstart, (
        "README.md's ```python blocks must equal docs/quickstart.md's {testcode} blocks, in "
        "order (the doctest build runs the quickstart's)")


def test_examples_fail_on_a_fallback_copy():
    conf = (ROOT / "docs" / "conf.py").read_text(encoding="utf-8")
    cleanup = conf.split("doctest_global_cleanup", 1)[-1]
    assert "InPlaceFallbackWarning" in cleanup
