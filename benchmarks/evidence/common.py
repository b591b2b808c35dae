"""The evidence suite's shared machinery, re-exported under one name for the table scripts
(``from benchmarks.evidence import common as C``). Each part lives in a module named for what it does:

* :mod:`~benchmarks.evidence.profiles` - run profiles (scale, epochs, budgets) and constants;
* :mod:`~benchmarks.evidence.provenance` - commit, code digest, versions, hardware, the command as run;
* :mod:`~benchmarks.evidence.datasets` - stratified CIFAR-10 subsets and N-MNIST-small frames (files or bundle);
* :mod:`~benchmarks.evidence.run_context` - the per-process context (device, data, shared models, deadlines);
* :mod:`~benchmarks.evidence.table_run` - the time planner, a table's rows/claims/phases, its writer and CLI;
* :mod:`~benchmarks.evidence.phases` - training phases through :class:`multispike.train.Trainer`, equal-epoch
  plans and evaluation through :func:`multispike.metrics.prefix.prefix_accuracy`;
* :mod:`~benchmarks.evidence.shared_anns` - the float/QCFS ANNs shared between tables, operation counts;
* :mod:`~benchmarks.evidence.verdicts` and :mod:`~benchmarks.evidence.report` - verdict rules, Markdown/JSON.

There is no training loop and no evaluator here: every network is trained by ``multispike.train`` (the result
files say so in ``"trainer"``) and every accuracy comes from ``multispike.metrics.prefix``.

Time budgets. A table gets a wall-clock budget (from the profile or ``--max-seconds``). Its training phases
share it by weight: when a phase starts it is allotted ``(time left - reserve) * w / (sum of the weights of
the phases not yet run)``, so time a phase does not use flows to the later ones. Inside a phase the Trainer
runs ``round(epochs * batches)`` optimizer steps (``max_steps``) and stops cleanly at the allotment
(``time_budget_s``; its cosine schedule then follows the elapsed time, so it still ends at zero). Every such cut
is recorded in the phase record (``steps_planned``, ``steps_run``, ``cuts``). A hard deadline for the whole
run stops a phase after one step.
"""
from __future__ import annotations

from benchmarks.evidence.datasets import (CifarData, NMNISTData, _nmnist_root, default_data_dir, is_bundle,  # noqa: F401
                                          load_cifar_subset, load_nmnist, nmnist_raw_frames, read_manifest,
                                          stratified_subset)
from benchmarks.evidence.phases import (LimitedLoader, TrainSpec, loaders, phase_config, plan_equal_epochs,  # noqa: F401
                                        step_seconds, test_accuracy, train_phase)
from benchmarks.evidence.profiles import (BUNDLE_FORMAT, BUNDLE_MANIFEST, CIFAR_MEAN, CIFAR_STD, EPOCH_COST,  # noqa: F401
                                          NMNIST_RAW_FRAMES, PROFILES, REPO, SCHEMA_VERSION, SPEC_SECTION, TABLES,
                                          VERDICTS, Profile, get_profile)
from benchmarks.evidence.provenance import TRAINER, code_digest, command_line, environment  # noqa: F401
from benchmarks.evidence.report import _jsonable, render_markdown  # noqa: F401
from benchmarks.evidence.run_context import Context, Interrupted, install_signal_handlers  # noqa: F401
from benchmarks.evidence.shared_anns import (MODEL_FACTORIES, count_operations, create_backbone, float_ann,  # noqa: F401
                                             qcfs_ann, rec_model_factory, sgd_lr)
from benchmarks.evidence.table_run import (Planner, TableRun, add_common_args, make_context, run_table,  # noqa: F401
                                           table_main)
from benchmarks.evidence.verdicts import (equal_epochs_check, judge_close, judge_greater, noise_margin,  # noqa: F401
                                          noise_note, stderr_pp, subset_note)
from multispike.neurons.base import reset_net  # noqa: F401
from multispike.train.budget import phase_seed  # noqa: F401
from multispike.train.precision import exact_fp32, synchronize  # noqa: F401
