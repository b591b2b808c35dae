"""Training: the engine (ANN / QAT / SNN / hybrid), losses (CE on the time mean, TET, knowledge distillation),
optimizers and per-iteration schedules, crash-safe checkpoints, YAML configs and DDP plumbing; ``budget`` (per-phase
seeds, step timing with the Trainer's own step, equal-epoch plans) and ``precision`` (exact-fp32 evaluation, TF32)
for studies that train many short phases under a wall-clock budget (the evidence suite in ``benchmarks/evidence``).

Example::

    from multispike.train import resolve_config, run_training
    cfg = resolve_config("configs/cpu/vgg_small_if_cifar10.yaml", {"out": "runs/x"})
    summary = run_training(cfg)      # also: multispike train --config ... (alone or under torchrun)
"""
from .budget import EqualEpochPlan, equal_epoch_plan, measure_step_seconds, phase_seed
from .checkpoint import (Checkpoint, CheckpointError, atomic_write_bytes, atomic_write_text, capture_rng_state,
                         load_checkpoint, load_model_state, restore_rng_state, save_checkpoint)
from .config import (MODES, RESUME_MUST_MATCH, ConfigError, TrainConfig, config_conflicts, load_yaml_config,
                     resolve_config, save_config)
from .config_args import add_config_arguments, config_from_args
from .distributed import (DistInfo, all_reduce_sum, cleanup_distributed, exit_process, init_distributed,
                          seed_everything, sync_bn_stats, unwrap_model, wrap_model)
from .engine import EXIT_AFTER_STEPS_ENV, Trainer, prefix_correct, quantizer_report
from .hooks import TRUSTED_HOOKS_ENV, UntrustedHookError, list_convert_hooks, register_convert_hook
from .guards import NonFiniteError, RunLock, RunLockedError, StopSignals, TrainingInterrupted, ensure_writable_dir
from .hybrid import call_convert_hook, lmht_hybrid, mlif_hybrid
from .losses import CEOnMean, TETLoss, build_loss, ce_on_mean, distillation_loss, tet_loss
from .precision import exact_fp32, get_tf32, set_tf32, synchronize
from .optim import DEFAULT_NEURON_PARAM_PATTERNS, LRSchedule, build_optimizer, build_param_groups, match_neuron_param
from ..convert.recipe import structure_snapshot
from .rebuild import describe_checkpoint, needs_rebuild, rebuild_model
from .runner import build_loaders, build_model, load_convert_hook, run_training, subset_indices

__all__ = [
    "EqualEpochPlan", "equal_epoch_plan", "measure_step_seconds", "phase_seed",
    "exact_fp32", "get_tf32", "set_tf32", "synchronize",
    "Checkpoint", "CheckpointError", "atomic_write_bytes", "atomic_write_text", "capture_rng_state",
    "load_checkpoint", "load_model_state", "restore_rng_state", "save_checkpoint",
    "MODES", "RESUME_MUST_MATCH", "ConfigError", "TrainConfig", "add_config_arguments", "config_conflicts",
    "config_from_args", "load_yaml_config", "resolve_config", "save_config",
    "DistInfo", "all_reduce_sum", "cleanup_distributed", "exit_process", "init_distributed", "seed_everything",
    "sync_bn_stats", "unwrap_model", "wrap_model",
    "EXIT_AFTER_STEPS_ENV", "Trainer", "prefix_correct", "quantizer_report",
    "TRUSTED_HOOKS_ENV", "UntrustedHookError", "list_convert_hooks", "register_convert_hook",
    "NonFiniteError", "RunLock", "RunLockedError", "StopSignals", "TrainingInterrupted", "ensure_writable_dir",
    "call_convert_hook", "lmht_hybrid", "mlif_hybrid",
    "build_loaders", "build_model", "load_convert_hook", "run_training", "subset_indices",
    "describe_checkpoint", "needs_rebuild", "rebuild_model", "structure_snapshot",
    "CEOnMean", "TETLoss", "build_loss", "ce_on_mean", "tet_loss", "distillation_loss",
    "DEFAULT_NEURON_PARAM_PATTERNS", "LRSchedule", "build_optimizer", "build_param_groups", "match_neuron_param",
]
