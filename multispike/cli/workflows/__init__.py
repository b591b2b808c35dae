"""End-to-end workflows behind the command line: convert, calibrate, reparameterise, QAT summaries.

Each workflow loads a checkpoint (any checkpoint :func:`multispike.train.rebuild.rebuild_model` can rebuild),
runs library functions that already exist - nothing here re-implements a conversion - measures accuracy at
every timestep prefix, writes a JSON result beside a readable ``report.txt``, and saves the resulting network as
a checkpoint that ``multispike eval --checkpoint``, ``multispike train --init-from`` and the other workflows load.

* :func:`convert_checkpoint` - a trained ANN / QCFS / QAT checkpoint to an IF, LM-HT, mixed-timestep (QAC) or
  uniform-T (QCFS with or without averaging alignment) SNN;
* :func:`calibrate_checkpoint` - QAC calibration of v(0) and θ of a converted SNN against its ANN (§4.5);
* :func:`reparameterize_checkpoint` - an LM-HT network to a single-threshold IF network with L·T steps (§2.7),
  with the per-layer agreement measured on data;
* :func:`qat_epoch_table` - per-epoch T_l / bit-width table of a ``multispike qat`` run.

Event-data training (``multispike events-train``) lives in :mod:`multispike.train.events`.

**Errors.** A bad argument raises :class:`multispike._errors.ParameterError` (a ``ValueError``) whose message
names the Python parameter (``timesteps must be >= 1``); the command line renders the same error with its flag
(``--timesteps must be >= 1``, :func:`multispike.cli.main.option_flags`). Hints that suggest *another* command
(``multispike train --neuron qcfs ...``) are written as that command line.

**Converted checkpoints.** A conversion changes the module tree (neurons replace activations, BN is folded,
layers get their own ``T_l``) and sets attributes that are not tensors. The checkpoint's JSON therefore holds a
*recipe* - the source network's descriptor and the conversion steps, each a
:func:`~multispike.convert.recipe.run_step` call that the conversion itself made - and a snapshot of the plain
attributes. Loading re-runs the steps on an untrained copy of the source architecture and then loads the
converted weights, so the rebuilt network computes exactly what the converted one did (the tests compare outputs
bit for bit).

Example::

    from multispike.cli.workflows import convert_checkpoint
    result = convert_checkpoint("runs/qcfs_ann", "lmht", out="runs/lmht", timesteps=2, levels=2)
    result["snn"]["acc_per_t"], result["sanity"]          # LM-HT accuracy, IF at T and L·T from the same ANN
"""
from __future__ import annotations

from .calibrate import calibrate_checkpoint, teacher_checkpoint
from .common import DataSpec, data_spec, format_table, prefix_accuracy, save_network, static_loader
from .convert import ALIGN_NONE, LEVELS_DROP_WARN, TARGETS, convert_checkpoint, parse_align_option, parse_bias_scale
from .qat import qat_epoch_table
from .reparam import reparameterize_checkpoint

__all__ = ["TARGETS", "ALIGN_NONE", "LEVELS_DROP_WARN", "DataSpec", "data_spec", "static_loader", "prefix_accuracy",
           "parse_align_option", "parse_bias_scale", "convert_checkpoint", "calibrate_checkpoint",
           "reparameterize_checkpoint", "teacher_checkpoint", "qat_epoch_table", "save_network", "format_table"]
