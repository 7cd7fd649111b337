"""The demo: one ResNet-style network trained twice, with ``L.BatchNormalization`` +
``F.leaky_relu`` and with :class:`cupy_abn.chainer.InPlaceABN`, side by side.

``python -m cupy_abn.demo --help`` lists the options; ``scripts/demo.sh`` sets up a fresh
machine and runs it.  :mod:`.network` builds the two networks and the synthetic data,
:mod:`.memory` measures the peak memory of a training step, :mod:`.plot` draws the result.
"""
