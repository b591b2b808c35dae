"""Training configuration: one flat dataclass whose keys are the YAML keys and the CLI flags.

Resolution order (timm's two-stage idea, ecosystem.md §8 "Config"): the dataclass defaults, then the YAML
file given by ``--config`` (flat ``key: value``; an unknown key is an error naming it and suggesting the
closest one), then the flags given explicitly on the command line. ``lr`` is ``--lr``,
``weight_decay`` is ``--weight-decay``, booleans have ``--x/--no-x``, dictionaries take ``KEY=VALUE`` pairs
(values parsed as YAML scalars). The resolved config is written as ``config.json`` and ``args.yaml`` beside
every result (:func:`save_config`).

Example::

    cfg = resolve_config(yaml_path="configs/cpu/vgg_small_if_cifar10.yaml", overrides={"epochs": 2})
    save_config(cfg, "runs/x")

Size (over 450 lines): one flat dataclass whose fields are the YAML keys and the CLI flags, with their help
texts (about half the file is field declarations), and their validation; the command-line side is
:mod:`multispike.train.config_args`.
"""
from __future__ import annotations

import dataclasses
import difflib
import json
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping

import yaml

from .._errors import ParameterError
from .checkpoint import atomic_write_text
from .losses import LOSSES
from ..quant.latency import LATENCY_WEIGHTINGS
from .optim import DEFAULT_NEURON_PARAM_PATTERNS, OPTIMIZERS, SCHEDULES

__all__ = ["TrainConfig", "ConfigError", "MODES", "AMP_MODES", "RESUME_MUST_MATCH", "load_yaml_config",
           "resolve_config", "save_config", "config_conflicts"]

MODES = ("ann", "qat", "snn", "hybrid")
AMP_MODES = ("none", "bf16", "fp16")
DIST_BN = ("reduce", "broadcast", "none")

#: Keys whose value must be the same when resuming: changing them makes the checkpoint meaningless for this
#: run (another network, other data, another optimizer state layout) or breaks the bit-exact replay.
RESUME_MUST_MATCH = ("mode", "model", "neuron", "timesteps", "dataset", "dataset_kwargs", "num_classes",
                     "in_channels", "levels", "lanes", "v_threshold", "neuron_kwargs", "model_kwargs", "subset", "opt",
                     "loss", "seed", "batch_size", "ann_checkpoint", "init_from", "init_weights", "prepare_qat",
                     "quant_opt", "distill_from", "distill_weight", "distill_temperature")


class ConfigError(ParameterError):
    """An unknown key, a value of the wrong type or out of range, or conflicting settings (a ``ValueError``).

    A message that names other settings writes them as ``{field}`` templates with the field in ``params``
    (:class:`~multispike._errors.ParameterError`): ``str(error)`` shows the field (= YAML key), and
    ``multispike train`` prints the flag that sets it.
    """

    def __init__(self, template: str = "", *params: str) -> None:
        super().__init__(template, *params)


def _f(default: Any, help: str, group: str, choices: tuple | None = None, cli: bool = True, **kw) -> Any:
    meta = {"help": help, "group": group, "cli": cli}
    if choices is not None:
        meta["choices"] = choices
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda d=default: type(d)(d), metadata=meta, **kw)
    return field(default=default, metadata=meta, **kw)


@dataclass
class TrainConfig:
    """Every setting of a training run (see ``multispike train --help`` for the flags)."""

    # --- data ------------------------------------------------------------------------------------------
    dataset: str = _f("cifar10", "dataset name in the multispike.data catalog", "data")
    data_dir: str | None = _f(None, "dataset root (default: $MULTISPIKE_DATA, else ../shared/datasets)", "data")
    dataset_kwargs: dict = _f({}, "extra arguments of the dataset reader, KEY=VALUE (e.g. size=64 for imagefolder, "
                              "label=coarse for cifar100)", "data")
    subset: int | None = _f(None, "train on a class-stratified subset of N training images (seeded; chosen before "
                            "decoding, so a subset of a large image tree costs only its own memory)", "data")
    eval_subset: int | None = _f(None, "evaluate on a class-stratified subset of N test images (seeded)", "data")
    batch_size: int = _f(64, "images per process and step (global batch = batch_size x world size)", "data")
    eval_batch_size: int | None = _f(None, "evaluation batch size (default: batch_size)", "data")
    augment: bool = _f(True, "training augmentation (random crop with padding, horizontal flip)", "data")
    crop_padding: int = _f(4, "zero padding of the random crop in pixels (0 disables cropping)", "data")
    hflip: bool = _f(True, "random horizontal flips", "data")
    hflip_mode: str = _f("random", "random: each image flipped with probability 1/2 every epoch; alternate: "
                         "randomly in epoch 0, then each image's flip toggles every epoch (airbench94)", "data",
                         ("random", "alternate"))
    whiten_images: int = _f(0, "before training, initialise a model's whitening stem (a model with init_whitening, "
                            "e.g. airbench94_cifar) from the 2x2 patches of this many training images (0: off; "
                            "airbench94: 5000)", "data")
    normalize: bool = _f(True, "normalise inputs with the dataset's channel mean/std", "data")
    data_info: dict | None = _f(None, "recorded by the run, not a flag: the data's class names, input shape and "
                                "normalisation, which every later step checks its data against", "data", cli=False)
    pad_mode: str = _f("zeros", "border of the random crop: zeros (torchvision) or reflect (airbench's translate)",
                       "data", ("zeros", "reflect"))
    cutout: int = _f(0, "cutout: zero a random square of this side per training image (0: off)", "data")

    # --- model -----------------------------------------------------------------------------------------
    model: str | None = _f(None, "zoo model name (multispike.models.list_models())", "model")
    neuron: str = _f("if", "neuron/activation name: relu, qcfs, qac, if, lif, lmht, mlif", "model")
    timesteps: int = _f(4, "T, the number of timesteps (1 for an ANN)", "model")
    num_classes: int | None = _f(None, "classes (default: from the dataset)", "model")
    in_channels: int | None = _f(None, "input channels (default: from the dataset)", "model")
    levels: int | None = _f(None, "neuron_kwargs 'levels' (L of LM-HT, levels of QCFS)", "model")
    lanes: int | None = _f(None, "neuron_kwargs 'lanes' (S of one-hot M-LIF)", "model")
    v_threshold: float | None = _f(None, "neuron_kwargs 'v_threshold' (initial firing threshold)", "model")
    neuron_kwargs: dict = _f({}, "extra neuron constructor arguments, KEY=VALUE", "model")
    model_kwargs: dict = _f({}, "extra create_model arguments, KEY=VALUE", "model")

    # --- training --------------------------------------------------------------------------------------
    mode: str = _f("snn", "ann: plain CE; qat: quantization-aware (logs T_l/bit widths); snn: BPTT/STBP; "
                   "hybrid: load an ANN checkpoint, convert, fine-tune", "training", MODES)
    loss: str | None = _f(None, "ce (ann/qat default), ce_mean (CE on the time mean; snn/hybrid default) or tet",
                          "training", LOSSES)
    tet_lambda: float = _f(1e-3, "TET: weight λ of the MSE regulariser", "training")
    tet_phi: float = _f(1.0, "TET: MSE target φ", "training")
    label_smoothing: float = _f(0.0, "label smoothing ε in [0, 1)", "training")
    epochs: int = _f(1, "training epochs", "training")
    clip_grad: float | None = _f(None, "clip the global gradient L2 norm to this value", "training")
    amp: str = _f("none", "mixed precision (autocast): bf16 on CUDA or CPU (CPUs with AVX512-BF16/AMX run it "
                  "several times faster), fp16 on CUDA only (ignored with a warning on CPU); evaluation after "
                  "training, conversion and `multispike eval` stay in float32", "training", AMP_MODES)
    channels_last: bool = _f(False, "run the model and the batches in torch.channels_last memory format", "training")
    spike_storage: str = _f("float", "training memory: 'bytes' keeps the spike inputs that conv/linear layers save for "
                            "the backward as uint8, restored bit for bit (multispike.layers.set_spike_storage)",
                            "training", ("float", "bytes"))
    recompute_bn: bool = _f(False, "training memory: the spiking neuron after a conv+BN (or after a residual add of "
                            "one) rebuilds its input in the backward from BN's input instead of saving it (bit-exact rebuild; float32 without AMP, "
                            "fused CPU/Triton neurons; multispike.layers.set_recompute_bn)", "training")
    ema_decay: float | None = _f(None, "keep an exponential moving average of the weights with this decay per update "
                                 "(e.g. 0.99); evaluation uses it and the final checkpoint holds it", "training")
    ema_every: int = _f(1, "EMA: update every N optimizer steps", "training")
    ema_warmup: bool = _f(True, "EMA: use decay min(ema_decay, (1+n)/(10+n)) at update n, so early averages do not "
                          "remember the random initialisation", "training")
    ema_mode: str = _f("average", "average: a separate averaged copy for evaluation; lookahead: after each update the "
                       "online weights are reset to the average, whose decay ramps as ema_decay·(s/S)^3 over the "
                       "schedule (airbench94: ema_decay 0.95^5, ema_every 5)", "training", ("average", "lookahead"))
    tta_flip: bool = _f(False, "evaluate with flip test-time augmentation: mean of the logits of each image and its "
                        "mirror image", "training")
    tta_translate: bool = _f(False, "evaluate with translate test-time augmentation too: one-pixel shifted views "
                             "(airbench94's TTA level 2 with tta_flip)", "training")
    time_budget_s: float | None = _f(None, "stop training cleanly once this many wall-clock seconds of training "
                                     "(incl. periodic evaluation) have passed, then evaluate and checkpoint", "training")
    max_steps: int | None = _f(None, "stop after this many optimizer steps (a fractional number of epochs: the last "
                               "epoch is cut short); the lr schedule spans min(epochs x steps per epoch, max_steps)",
                               "training")
    budget_min_steps: int = _f(0, "with time_budget_s: never stop for the budget before this many optimizer steps, "
                               "and let the budget-following lr schedule span at least that many (a phase that "
                               "overruns a tiny budget still takes a few steps with a whole schedule)", "training")
    budget_schedule: bool = _f(True, "with time_budget_s: the lr schedule advances by max(step fraction, time "
                               "fraction), so it ends at the budget when that comes first (not bit-reproducible)",
                               "training")
    ann_checkpoint: str | None = _f(None, "hybrid: the ANN checkpoint (its saved config rebuilds the ANN)",
                                    "training")
    convert_hook: str | None = _f(None, "hybrid: 'module:function' called as function(ann_model, config) -> "
                                  "SNN model", "training")
    init_from: str | None = _f(None, "start from the weights AND module structure of this checkpoint (run directory "
                               "or file; e.g. the output of `multispike convert`); model, neuron and T come from it, "
                               "the optimizer starts afresh", "training")
    init_weights: str | None = _f(None, "warm start: load the weights of this checkpoint (run directory or file, "
                                  "e.g. a float ANN) into the network built from {model}/{neuron}/{model_kwargs} "
                                  "(e.g. its QCFS twin with average pools); parameters the checkpoint lacks (QCFS "
                                  "clips ϑ, set by {clip_init}; QAC quantizer parameters) keep their initialisation; unexpected keys and shape "
                                  "mismatches are errors. The optimizer and schedule start afresh", "training")
    freeze_bn: bool | None = _f(None, "keep BatchNorm layers in eval mode while training (running statistics fixed, "
                                "γ/β still learned): fine-tune a converted SNN without re-estimating BN statistics "
                                "from spike trains, whose per-step variance differs from the ANN's activations (and "
                                "in train mode BN would undo LM-HT's exact ×L bias scale). Default: on when training "
                                "starts from a conversion (mode hybrid, or --init-from a converted network or a QCFS "
                                "ANN with --neuron lmht), off otherwise", "training")
    clip_init: str = _f("99.9%", "QCFS trained from scratch: start each clip ϑ at this percentile of its layer's "
                         "pre-activations on 4 training batches (layer by layer), or 'none' to keep the neuron's "
                         "threshold (8, or --neuron-kwargs threshold=X, which also disables it). QAT (prepare_qat): "
                         "the same for the clip α of every quantizer made from a ReLU, unless --alpha-init / "
                         "prepare_qat alpha is given", "training")
    prepare_qat: dict | None = _f(None, "after building the model run multispike.quant.qat.prepare_qat with these "
                                  "arguments (ReLU/QCFS -> QAC quantizer, MaxPool -> AvgPool), e.g. param=t_alpha t=4; "
                                  "`multispike qat` sets it", "training")
    latency_weight: float = _f(0.0, "QAT: weight λ of the latency term λ·Σ_l w_l·t_l on the QAC quantizers' "
                               "continuous timesteps (multispike.quant.latency.LatencyRegulariser; 0 = off, QAC's "
                               "cross-entropy only)", "training")
    distill_from: str | None = _f(None, "knowledge distillation: a trained network (run directory or checkpoint "
                                  "file, e.g. the float ANN a quantized twin starts from) whose logits the student "
                                  "learns beside the labels: loss = (1 − {distill_weight})·task + {distill_weight}·τ²·"
                                  "KL(softmax(teacher/τ) ‖ softmax(student/τ)), τ = {distill_temperature}. The teacher "
                                  "runs frozen, in eval mode, under the same autocast", "training")
    distill_weight: float = _f(0.5, "distillation: weight of the KL term, in (0, 1]; 1 = the teacher's soft targets "
                               "alone", "training")
    distill_temperature: float = _f(1.0, "distillation: softmax temperature τ (> 0) of teacher and student; the KL "
                                    "term is scaled by τ² so its gradients keep their size (Hinton et al. 2015)",
                                    "training")
    latency_per_layer: str = _f("uniform", "QAT: layer weights w_l of the latency term: uniform (1) or macs (the "
                                "synaptic MACs feeding the layer, normalised to mean 1)", "training",
                                LATENCY_WEIGHTINGS)
    timestep_freeze_fraction: float = _f(0.0, "QAT: train the last fraction of the schedule (e.g. 0.2) with every "
                                         "QAC layer's T_l fixed at round(t_l) - lowered to meet {timestep_budget} - "
                                         "so weights and clips adapt to the T the SNN will run "
                                         "(multispike.quant.latency.fix_timesteps; 0 = t learns to the end)",
                                         "training")
    timestep_budget: float | None = _f(None, "QAT: the largest mean T_l allowed when the T_l are fixed (at "
                                       "{timestep_freeze_fraction}); layers nearest their lower rounding boundary "
                                       "lose a level first. Weighted as {latency_per_layer} (uniform: the plain "
                                       "average QAC reports)", "training")

    # --- optimizer -------------------------------------------------------------------------------------
    opt: str = _f("sgd", "optimizer", "optimizer", OPTIMIZERS)
    lr: float = _f(0.1, "base learning rate", "optimizer")
    momentum: float = _f(0.9, "SGD momentum", "optimizer")
    nesterov: bool = _f(False, "SGD with Nesterov momentum", "optimizer")
    weight_decay: float = _f(5e-4, "weight decay", "optimizer")
    betas: list = _f([0.9, 0.999], "Adam/AdamW betas", "optimizer")
    eps: float = _f(1e-8, "Adam/AdamW epsilon", "optimizer")
    decay_norm_and_bias: bool = _f(True, "apply weight decay to biases and normalisation weights too", "optimizer")
    bias_lr_scale: float = _f(1.0, "lr multiplier of biases and normalisation parameters; their weight decay is "
                              "divided by it so lr x wd stays the weights' (airbench94: 64)", "optimizer")
    bias_lr_scope: str = _f("all", "what bias_lr_scale multiplies: all biases and normalisation parameters, or only "
                            "normalisation layers' (norm: airbench94, whose whitening-conv bias keeps the weights' lr)",
                            "optimizer", ("all", "norm"))
    freeze_after: dict = _f({}, "PATTERN=EPOCHS: train the parameters whose name matches the fnmatch pattern for the "
                            "first EPOCHS epochs only (airbench94 freezes its whitening bias after 3: stem.0.bias=3)",
                            "optimizer")
    neuron_lr: float | None = _f(None, "learning rate of thresholds/leaks/T-GIM (default: lr)", "optimizer")
    neuron_weight_decay: float | None = _f(None, "weight decay of the neuron group (default: weight_decay)",
                                           "optimizer")
    neuron_lr_scheduled: bool = _f(True, "apply the lr schedule to the neuron group (off: fixed neuron_lr)",
                                   "optimizer")
    quant_opt: str | None = _f(None, "QAT: optimizer of the QAC quantizers' (t, α) - e.g. adam while the weights use "
                               "sgd (default: opt)", "optimizer", OPTIMIZERS)
    quant_lr: float | None = _f(None, "QAT: learning rate of (t, α) (default: neuron_lr, else lr); t is in units of "
                                "timesteps, so it wants a far larger rate than the weights (e.g. 3e-2 with adam)",
                                "optimizer")
    quant_weight_decay: float | None = _f(None, "QAT: weight decay of (t, α) (default: neuron_weight_decay, else "
                                          "weight_decay)", "optimizer")
    quant_lr_scheduled: bool | None = _f(None, "QAT: apply the lr schedule to (t, α) (default: "
                                         "neuron_lr_scheduled)", "optimizer")
    neuron_param_patterns: list = _f(list(DEFAULT_NEURON_PARAM_PATTERNS),
                                     "fnmatch patterns of neuron-group parameter names (no dot: the attribute "
                                     "name; with a dot: the full name)", "optimizer")

    # --- schedule --------------------------------------------------------------------------------------
    sched: str = _f("cosine", "learning-rate schedule (per iteration)", "schedule", SCHEDULES)
    warmup_epochs: float = _f(0.0, "linear warm-up length in epochs", "schedule")
    warmup_fraction: float | None = _f(None, "warm-up length as a fraction of the schedule's steps (overrides "
                                       "warmup_epochs, so it scales with --epochs; airbench94: 0.23)", "schedule")
    warmup_lr: float = _f(0.0, "learning rate at the start of the warm-up", "schedule")
    min_lr: float = _f(0.0, "cosine: final learning rate", "schedule")
    milestones: list = _f([], "multistep: epochs at which the lr is multiplied by decay_rate", "schedule")
    decay_epochs: float = _f(30.0, "step: decay period in epochs", "schedule")
    decay_rate: float = _f(0.1, "step/multistep: multiplicative decay γ", "schedule")

    # --- run -------------------------------------------------------------------------------------------
    out: str = _f("runs/train", "output directory (log.jsonl, config.json, args.yaml, checkpoints/)", "run")
    resume: str | None = _f(None, "continue a killed run: bare --resume (= 'auto') uses <out>/checkpoints/last.json; "
                                 "or give a run directory or checkpoint file", "run")
    overwrite: bool = _f(False, "start afresh in an --out that already holds checkpoints (deletes them)", "run")
    seed: int = _f(0, "random seed (each rank adds its rank)", "run")
    deterministic: bool = _f(False, "request deterministic kernels (torch.use_deterministic_algorithms)", "run")
    device: str = _f("auto", "auto, cpu, cuda or cuda:<i>", "run")
    sync_bn: bool = _f(False, "convert BatchNorm to SyncBatchNorm (CUDA + DDP only)", "run")
    dist_bn: str = _f("reduce", "DDP: reconcile BN running stats each epoch by averaging (reduce) or copying "
                      "rank 0's (broadcast)", "run", DIST_BN)
    save_checkpoints: bool = _f(True, "write checkpoints (off: only log.jsonl and summary.json, for a caller that "
                                "keeps the trained model in memory, e.g. the evidence suite; such a run cannot be "
                                "resumed)", "run")
    tf32: bool | None = _f(None, "CUDA: allow TF32 matmuls/convolutions while training (None: leave torch's setting); "
                           "the final evaluation always runs in exact float32 (TF32 off)", "run")
    checkpoint_every_steps: int = _f(0, "also checkpoint every N optimizer steps (0: only at epoch ends)", "run")
    keep_checkpoints: int = _f(2, "keep the N newest checkpoints (plus the best; 0 keeps all)", "run")
    eval_every: int = _f(1, "evaluate every N epochs (and always after the last)", "run")
    progress: bool = _f(True, "tqdm progress bars (rank 0 only)", "run")
    tensorboard: str | None = _f(None, "also write TensorBoard event files (epoch scalars) to this directory; needs "
                                       "the tensorboard package (pip install 'multispike[tensorboard]')", "run")
    log_every_steps: int = _f(0, "also append a 'step' record (loss, lr, images/s, elapsed) to log.jsonl every N "
                              "optimizer steps (0: epoch records only)", "run")
    num_threads: int | None = _f(None, "torch.set_num_threads for CPU training", "run")

    # ------------------------------------------------------------------------------------------------------
    def resolved_loss(self) -> str:
        """The loss actually used: ``loss`` or the mode's default."""
        if self.loss is not None:
            return self.loss
        return "ce" if self.mode in ("ann", "qat") else "ce_mean"

    def neuron_arguments(self) -> dict:
        """``neuron_kwargs`` with the ``levels``/``lanes``/``v_threshold`` shortcuts merged in (shortcuts win)."""
        kw = dict(self.neuron_kwargs)
        for key in ("levels", "lanes", "v_threshold"):
            value = getattr(self, key)
            if value is not None:
                kw[key] = value
        return kw

    def to_dict(self) -> dict:
        return dataclasses.asdict(self)

    def validate(self) -> "TrainConfig":
        """Range checks that need more than a type (raises :class:`ConfigError`)."""
        def need(cond: bool, msg: str, *params: str) -> None:
            if not cond:
                raise ConfigError(msg, *params)
        for f in dataclasses.fields(self):
            choices = f.metadata.get("choices")
            value = getattr(self, f.name)
            if choices and value is not None and value not in choices:
                raise ConfigError(f"{f.name}={value!r} is not allowed; choose one of {', '.join(choices)}")
        need(self.timesteps >= 1, f"timesteps must be >= 1, got {self.timesteps}")
        need(self.epochs >= 1, f"epochs must be >= 1, got {self.epochs}")
        need(self.batch_size >= 1, f"batch_size must be >= 1, got {self.batch_size}")
        need(self.eval_batch_size is None or self.eval_batch_size >= 1,
             f"eval_batch_size must be >= 1, got {self.eval_batch_size}")
        need(self.subset is None or self.subset >= 1, f"subset must be >= 1 images, got {self.subset}")
        need(self.eval_subset is None or self.eval_subset >= 1, f"eval_subset must be >= 1, got {self.eval_subset}")
        need(self.crop_padding >= 0, f"crop_padding must be >= 0 pixels, got {self.crop_padding}")
        need(0.0 <= self.label_smoothing < 1.0, f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        need(0.0 <= self.tet_lambda <= 1.0, f"tet_lambda must be in [0, 1], got {self.tet_lambda}")
        need(self.lr >= 0, f"lr must be >= 0, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.clip_grad is None or self.clip_grad > 0, f"clip_grad must be > 0 (or unset), got {self.clip_grad}")
        need(len(self.betas) == 2, f"betas must be two numbers, got {self.betas}")
        need(self.checkpoint_every_steps >= 0, f"checkpoint_every_steps must be >= 0, got "
                                               f"{self.checkpoint_every_steps}")
        need(self.keep_checkpoints >= 0, f"keep_checkpoints must be >= 0, got {self.keep_checkpoints}")
        need(self.eval_every >= 1, f"eval_every must be >= 1, got {self.eval_every}")
        need(self.cutout >= 0, f"cutout must be >= 0 pixels, got {self.cutout}")
        need(self.ema_decay is None or 0.0 < self.ema_decay < 1.0,
             f"ema_decay must be in (0, 1) (or unset), got {self.ema_decay}")
        need(self.ema_every >= 1, f"ema_every must be >= 1, got {self.ema_every}")
        need(self.ema_mode == "average" or self.ema_decay is not None,
             "{ema_mode} lookahead needs {ema_decay} (its largest decay, e.g. 0.774 = 0.95^5)", "ema_mode", "ema_decay")
        need(self.bias_lr_scale > 0 and self.bias_lr_scale == self.bias_lr_scale,
             f"bias_lr_scale must be > 0, got {self.bias_lr_scale}")
        for pattern, epochs in self.freeze_after.items():
            need(isinstance(pattern, str) and pattern != "" and isinstance(epochs, int)
                 and not isinstance(epochs, bool) and epochs >= 0,
                 f"freeze_after maps parameter-name patterns to whole epochs >= 0 (e.g. stem.0.bias=3), got "
                 f"{pattern!r}={epochs!r}", "freeze_after")
        need(self.warmup_fraction is None or 0.0 <= self.warmup_fraction <= 1.0,
             f"warmup_fraction must be in [0, 1], got {self.warmup_fraction}")
        need(self.whiten_images >= 0, f"whiten_images must be >= 0, got {self.whiten_images}")
        need(self.time_budget_s is None or self.time_budget_s > 0,
             f"time_budget_s must be > 0 seconds (or unset), got {self.time_budget_s}")
        need(self.max_steps is None or self.max_steps >= 1, f"max_steps must be >= 1 (or unset), got {self.max_steps}")
        need(self.budget_min_steps >= 0, f"budget_min_steps must be >= 0, got {self.budget_min_steps}")
        need(self.log_every_steps >= 0, f"log_every_steps must be >= 0, got {self.log_every_steps}")
        need(self.num_threads is None or self.num_threads >= 1, f"num_threads must be >= 1, got {self.num_threads}")
        need(self.mode == "hybrid" or self.model is not None or self.init_from is not None,
             "no model given: set {model} (or 'model:' in the YAML config); see multispike.models.list_models()",
             "model")
        need(not (self.mode == "hybrid" and self.init_from is not None),
             "{mode} 'hybrid' builds its SNN from {ann_checkpoint}; {init_from} is for {mode} ann/qat/snn (e.g. "
             "fine-tuning the output of `multispike convert` with {mode} snn)", "mode", "ann_checkpoint", "init_from")
        need(self.init_weights is None or (self.init_from is None and self.mode != "hybrid"),
             "{init_weights} loads weights into the network built from {model}; {init_from} and {mode} 'hybrid' "
             "bring their own network: use one of them", "init_weights", "init_from", "mode")
        need(self.init_weights is None or self.model is not None,
             "{init_weights} needs {model} (the network to build and fill)", "init_weights", "model")
        need(0.0 < self.distill_weight <= 1.0, f"distill_weight must be in (0, 1], got {self.distill_weight}")
        need(self.distill_temperature > 0 and self.distill_temperature == self.distill_temperature,
             f"distill_temperature must be > 0, got {self.distill_temperature}")
        need(self.latency_weight >= 0 and self.latency_weight == self.latency_weight,
             f"latency_weight must be >= 0, got {self.latency_weight}")
        need(self.latency_weight == 0 or self.mode in ("qat", "ann"),
             f"latency_weight acts on QAC quantizers; use it with mode qat (mode is {self.mode!r})")
        need(0.0 <= self.timestep_freeze_fraction < 1.0,
             "{timestep_freeze_fraction} must be in [0, 1) (the fraction of training run with fixed T_l, e.g. 0.2), "
             f"got {self.timestep_freeze_fraction}", "timestep_freeze_fraction")
        need(self.timestep_freeze_fraction == 0 or self.mode == "qat",
             "{timestep_freeze_fraction} fixes the T_l of QAC quantizers; use it with {mode} qat "
             f"(mode is {self.mode!r})", "timestep_freeze_fraction", "mode")
        need(self.timestep_budget is None or (self.timestep_budget >= 1 and self.timestep_budget == self.timestep_budget),
             "{timestep_budget} must be a mean timestep >= 1 (every layer runs at least one step), got "
             f"{self.timestep_budget}", "timestep_budget")
        need(self.timestep_budget is None or self.timestep_freeze_fraction > 0,
             "{timestep_budget} is applied when the T_l are fixed: set {timestep_freeze_fraction} > 0 (e.g. 0.2)",
             "timestep_budget", "timestep_freeze_fraction")
        need(self.quant_lr is None or self.quant_lr >= 0, f"quant_lr must be >= 0, got {self.quant_lr}")
        need(self.quant_weight_decay is None or self.quant_weight_decay >= 0,
             f"quant_weight_decay must be >= 0, got {self.quant_weight_decay}")
        need(self.prepare_qat is None or self.mode in ("qat", "ann"),
             f"prepare_qat makes a quantized ANN; use it with mode qat (mode is {self.mode!r})")
        from ..quant.clip_init import parse_clip_init
        try:
            parse_clip_init(self.clip_init)
        except ValueError as exc:
            raise ConfigError(str(exc)) from None
        if self.mode == "hybrid":
            need(self.ann_checkpoint is not None, "{mode} 'hybrid' needs {ann_checkpoint} (a checkpoint of the ANN)",
                 "mode", "ann_checkpoint")
            need(self.convert_hook is not None, "{mode} 'hybrid' needs {convert_hook} 'module:function' that turns "
                                                "the loaded ANN into the SNN", "mode", "convert_hook")
        if self.resolved_loss() in ("ce_mean", "tet"):
            need(self.mode in ("snn", "hybrid"), f"loss {self.resolved_loss()!r} needs per-step outputs; use it with "
                                                 f"mode snn or hybrid (mode is {self.mode!r})")
        return self


_FIELDS = {f.name: f for f in dataclasses.fields(TrainConfig)}
_HINTS = typing.get_type_hints(TrainConfig)


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    args = typing.get_args(tp)
    if (typing.get_origin(tp) in (typing.Union, types.UnionType)) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        return rest[0], True
    return tp, False


#: Names other trainers use for our keys (timm, SpikingJelly, nanoGPT); checked before the fuzzy match.
_SYNONYMS = {"learning_rate": "lr", "optimizer": "opt", "scheduler": "sched", "lr_schedule": "sched", "t": "timesteps",
             "time_steps": "timesteps", "wd": "weight_decay", "arch": "model", "bs": "batch_size",
             "output": "out", "output_dir": "out", "data": "data_dir", "data_path": "data_dir", "smoothing":
             "label_smoothing", "warmup_lr_init": "warmup_lr", "lr_min": "min_lr", "decay_milestones": "milestones",
             "clip_grad_norm": "clip_grad", "num_epochs": "epochs", "threshold_lr": "neuron_lr"}


def _suggest(key: str, choices: list[str]) -> str:
    if key.lower() in _SYNONYMS:
        return f"; did you mean {_SYNONYMS[key.lower()]!r}?"
    close = difflib.get_close_matches(key, choices, n=1, cutoff=0.5)
    return f"; did you mean {close[0]!r}?" if close else f"; valid keys: {', '.join(sorted(choices))}"


def _coerce(key: str, value: Any, source: str) -> Any:
    """Check ``value`` against the declared type of ``key`` and convert int -> float where harmless."""
    tp, optional = _unwrap_optional(_HINTS[key])
    if value is None:
        if optional:
            return None
        raise ConfigError(f"{source}: {key} must not be null (expected {tp.__name__})")

    def bad(expected: str) -> ConfigError:
        return ConfigError(f"{source}: {key} must be {expected}, got {value!r} ({type(value).__name__})")
    if tp is bool:
        if not isinstance(value, bool):
            raise bad("true or false")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            if isinstance(value, float) and value.is_integer():
                return int(value)
            raise bad("an integer")
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            # PyYAML reads '1e-3' (no dot) as a string; accept numeric strings for floats.
            if isinstance(value, str):
                try:
                    return float(value)
                except ValueError:
                    pass
            raise bad("a number")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise bad("a string")
        return value
    if tp is list:
        if not isinstance(value, (list, tuple)):
            raise bad("a list")
        if key in ("betas", "milestones"):
            return [_coerce_number(key, v, source) for v in value]
        if key == "neuron_param_patterns" and not all(isinstance(v, str) for v in value):
            raise bad("a list of strings")
        return list(value)
    if tp is dict:
        if not isinstance(value, Mapping):
            raise bad("a mapping of KEY: VALUE")
        return dict(value)
    raise AssertionError(f"unhandled config type {tp}")  # pragma: no cover


def _coerce_number(key: str, v: Any, source: str) -> float:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        try:
            return float(v)
        except (TypeError, ValueError):
            raise ConfigError(f"{source}: every entry of {key} must be a number, got {v!r}") from None
    return float(v)


def load_yaml_config(path: str | Path) -> dict:
    """Read a flat YAML config and check every key and value type.

    Raises:
        ConfigError: unknown key (with the closest valid key), wrong type, or a non-mapping file.
        FileNotFoundError: the file does not exist.
    """
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"config file {path} does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from exc
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must be a flat mapping of key: value, got {type(data).__name__}")
    out = {}
    for raw_key, value in data.items():
        key = str(raw_key).replace("-", "_")
        if key not in _FIELDS:
            raise ConfigError(f"{path}: unknown config key {raw_key!r}{_suggest(key, list(_FIELDS))}")
        out[key] = _coerce(key, value, str(path))
    return out


def resolve_config(yaml_path: str | Path | None = None, overrides: Mapping[str, Any] | None = None) -> TrainConfig:
    """Defaults <- YAML file <- ``overrides`` (e.g. explicit CLI flags); validated.

    A mapping override (``neuron_kwargs``, ``model_kwargs``) is merged into the YAML's mapping key by key.
    """
    values: dict[str, Any] = {}
    if yaml_path is not None:
        values.update(load_yaml_config(yaml_path))
    for key, value in (overrides or {}).items():
        k = key.replace("-", "_")
        if k not in _FIELDS:
            raise ConfigError(f"unknown config key {key!r}{_suggest(k, list(_FIELDS))}")
        value = _coerce(k, value, "override")
        if isinstance(value, dict) and isinstance(values.get(k), dict):
            # KEY=VALUE flags refine the YAML's mapping instead of replacing it.
            value = {**values[k], **value}
        values[k] = value
    return TrainConfig(**values).validate()


def config_conflicts(saved: Mapping[str, Any], current: TrainConfig,
                     keys: tuple[str, ...] = RESUME_MUST_MATCH) -> list[str]:
    """Keys of :data:`RESUME_MUST_MATCH` whose value differs, as ``"key: saved -> current"`` lines."""
    now = current.to_dict()
    out = []
    for key in keys:
        if key in saved and saved[key] != now.get(key):
            out.append(f"{key}: {saved[key]!r} (checkpoint) vs {now.get(key)!r} (now)")
    return out


def save_config(config: TrainConfig | Mapping[str, Any], out_dir: str | Path, extra: Mapping[str, Any] | None = None
                ) -> None:
    """Write the resolved config as ``config.json`` and ``args.yaml`` in ``out_dir`` (atomically)."""
    data = config.to_dict() if isinstance(config, TrainConfig) else dict(config)
    if extra:
        data = {**data, **extra}
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(out / "config.json", json.dumps(data, indent=2, sort_keys=True) + "\n")
    atomic_write_text(out / "args.yaml", yaml.safe_dump(data, sort_keys=True))


# ----------------------------------------------------------------------------------------------------
# argparse integration
# ----------------------------------------------------------------------------------------------------
_GROUP_TITLES = {"data": "Dataset", "model": "Model", "training": "Training", "optimizer": "Optimizer",
                 "schedule": "Learning-rate schedule", "run": "Run, checkpoints and devices"}


# The command-line side moved to :mod:`multispike.train.config_args`; ``multispike.train.config.<name>`` still
# resolves it, with a DeprecationWarning (the names stay public in :mod:`multispike.train`). Resolved on first use
# because that module imports this one.
_ARGS_NAMES = frozenset(('add_config_arguments', 'config_from_args', 'inherit_from_checkpoint', 'FINETUNE_LR', 'INHERITED_DATA_KEYS', 'HYBRID_HOOKS'))


def __getattr__(name: str):
    if name not in _ARGS_NAMES:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    import warnings

    from . import config_args

    warnings.warn(f"multispike.train.config.{name} moved to multispike.train.config_args.{name} (also "
                  f"multispike.train.{name})", DeprecationWarning, stacklevel=2)
    return getattr(config_args, name)
