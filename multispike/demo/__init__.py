"""End-to-end demo on the embedded 8x8 digits: ANN -> SNN in a few timesteps, on this CPU in minutes.

Rows (each measured in the run that prints it, nothing copied):

* ``ann``   - a small CNN trained with ReLU.
* ``if``    - the same ANN converted to IF neurons (BN folded, θ from the 99.9th percentile of each layer's
  pre-activations, v(0) = θ/2), at T = 1, 2, 4, 8, 16, 32.
* ``lmht``, ``qac``, ``mlif`` - LM-HT, QAC and one-hot M-LIF comparisons.

Each row group is a producer in the explicit registry :data:`ROWS` (:mod:`multispike.demo.rows`, where each
recipe is described); every network is the zoo's ``digits_cnn`` (:class:`~multispike.models.digits.DigitsCNN`)
and is trained by the package's trainer (:func:`train_classifier`). ``EXTRA_ROWS`` is the registry's former
name (the same dict).

Every row is a dict with ``group``, ``method``, ``T`` (an int, a float average for mixed timesteps, or
``None`` for an ANN), ``accuracy`` (%, on the 359 test images) and ``notes``, plus method-specific fields
(per-layer ``T_l``, spike rates, energy). The tiny convolutions run fastest on one thread (measured: about
5x faster than two threads on a loaded 2-core CPU), so the demo sets ``torch.set_num_threads(cfg.threads)``
while it runs and restores the previous value afterwards.

Run it with ``multispike demo`` (see ``--help``); results go to ``<out>/results.json``.
"""
from __future__ import annotations

from ..models.digits import DigitsCNN
from .common import _loaders  # noqa: F401  (the tests build the demo's data with it)
from .common import (evaluate_prefixes, format_table, predictions, spike_rates, spike_statistics,
                     train_classifier)
from .config import DEFAULT_ROWS, DemoConfig
from .rows import ROWS, RowProducer, register_row
from .runner import run_demo

#: The row registry's former name (the same dict as :data:`ROWS`).
EXTRA_ROWS = ROWS

__all__ = ["DemoConfig", "DigitsCNN", "run_demo", "evaluate_prefixes", "train_classifier", "spike_rates",
           "spike_statistics", "predictions", "format_table", "ROWS", "RowProducer", "register_row", "EXTRA_ROWS",
           "DEFAULT_ROWS"]
