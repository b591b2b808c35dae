"""A :class:`~multispike.train.config.TrainConfig` from command-line flags, and from the checkpoint a run starts from.

:func:`add_config_arguments` adds ``--config`` and one flag per config field (the flag is the field with ``-``
for ``_``; its help, group and choices come from the field); :func:`config_from_args` resolves defaults < YAML <
flags; :func:`inherit_from_checkpoint` gives a run started from a checkpoint (``init_from``, hybrid
``ann_checkpoint``) the checkpoint's data settings and a fine-tune learning rate. Split from
:mod:`multispike.train.config` (the fields, their validation and YAML), which still resolves these names.
"""
from __future__ import annotations

import argparse
import dataclasses
import os
import re
from typing import Any

from ..data.provenance import parse_key_value
from .config import (_FIELDS, _GROUP_TITLES, _HINTS, ConfigError, TrainConfig, _unwrap_optional, load_yaml_config,
                     resolve_config)

__all__ = ['add_config_arguments', 'config_from_args', 'inherit_from_checkpoint', 'FINETUNE_LR', 'INHERITED_DATA_KEYS', 'HYBRID_HOOKS']

def _parse_kv(text: str) -> tuple[str, Any]:
    return parse_key_value(text, example="levels=2")


def _optional(conv):
    def parse(text: str):
        if text.lower() in ("none", "null"):
            return None
        return conv(text)
    parse.__name__ = conv.__name__
    return parse


_FIELD_REF = re.compile(r"\{([a-z_]+)\}")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add ``--config`` and one flag per :class:`TrainConfig` key.

    Every flag uses ``default=argparse.SUPPRESS`` so that :func:`config_from_args` can tell explicit flags
    (which override the YAML file) from defaults.
    """
    parser.add_argument("-c", "--config", default=None, metavar="YAML",
                        help="YAML file of defaults (keys = the flag names with '_'); explicit flags override it")
    groups = {name: parser.add_argument_group(title) for name, title in _GROUP_TITLES.items()}
    for name, f in _FIELDS.items():
        if not f.metadata.get("cli", True):
            continue
        tp, optional = _unwrap_optional(_HINTS[name])
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
        flag = "--" + name.replace("_", "-")
        # other settings named as {field} (the ConfigError convention) read as their flags here
        help_text = _FIELD_REF.sub(lambda m: "--" + m.group(1).replace("_", "-") if m.group(1) in _FIELDS
                                   else m.group(0), f.metadata["help"])
        if "default" not in help_text:
            help_text += f" (default: {default!r})"
        # argparse %-formats help strings: a literal % (a percentile such as 99.9%) must be doubled
        kw: dict[str, Any] = dict(dest=name, default=argparse.SUPPRESS, help=help_text.replace("%", "%%"))
        if "choices" in f.metadata:
            kw["choices"] = f.metadata["choices"]
        if tp is bool:
            kw["action"] = argparse.BooleanOptionalAction
        elif tp is dict:
            kw.update(nargs="+", type=_parse_kv, metavar="KEY=VALUE")
        elif tp is list:
            kw.update(nargs="*", type=str if name == "neuron_param_patterns" else float,
                      metavar="PATTERN" if name == "neuron_param_patterns" else "X")
        else:
            conv = {int: int, float: float, str: str}[tp]
            kw["type"] = _optional(conv) if optional else conv
            if "choices" not in kw:
                kw["metavar"] = name.upper()
        if name == "resume":
            kw.update(nargs="?", const="auto", metavar="PATH")
        groups[f.metadata["group"]].add_argument(flag, **kw)


#: Data settings a run started from a checkpoint (--init-from, hybrid --ann-checkpoint) inherits unless given.
INHERITED_DATA_KEYS = ("dataset", "data_dir", "dataset_kwargs", "normalize")
#: Default learning rate of a fine-tune (--init-from without --lr): the network is already trained, so the
#: from-scratch default (0.1 for SGD) would throw much of it away in the first steps.
FINETUNE_LR = {"sgd": 0.01, "adam": 1e-4, "adamw": 1e-4}
#: ``--neuron X --init-from ANN`` runs the hybrid initialisation of X (mode hybrid with this hook).
HYBRID_HOOKS = {"mlif": "multispike.train.hybrid:mlif_hybrid", "lmht": "multispike.train.hybrid:lmht_hybrid"}


def inherit_from_checkpoint(cfg: TrainConfig, explicit: set[str] | frozenset[str] = frozenset(),
                            log=print) -> TrainConfig:
    """Fill the data settings (and a fine-tune's lr) of a run that starts from a checkpoint.

    The checkpoint is ``cfg.init_from`` (or ``cfg.ann_checkpoint`` in hybrid mode). Keys in ``explicit`` (given in
    the YAML file or on the command line) are kept; the dataset, its root, reader options and normalisation
    otherwise come from the checkpoint's config - a fine-tune never silently falls back to the default dataset.
    A different ``dataset`` given explicitly drops the checkpoint's root and options (they belong to the other
    dataset). Without an explicit ``lr``, an ``--init-from`` run uses :data:`FINETUNE_LR` for its optimizer.
    Prints what it inherited (one line).
    """
    src = cfg.init_from if cfg.init_from is not None else (cfg.ann_checkpoint if cfg.mode == "hybrid" else None)
    if src is None:
        return cfg
    from .rebuild import read_checkpoint_meta

    path, meta = read_checkpoint_meta(src)
    saved = meta.get("config") or {}
    took = []
    is_ann = not meta.get("conversion") and saved.get("mode") in ("ann", "qat")
    if cfg.init_from is not None and cfg.mode == "snn" and "neuron" in explicit and cfg.neuron != saved.get("neuron"):
        hook = HYBRID_HOOKS.get(cfg.neuron)
        if not (is_ann and hook):
            # The IF route is another command (a conversion, not a hybrid initialisation): quoted as its command line.
            raise ConfigError(
                f"{{neuron}} {cfg.neuron} differs from the {saved.get('neuron')!r} network of {{init_from}} {src}, "
                f"and {{init_from}} keeps the checkpoint's neurons. " + (
                    f"Hybrid initialisation from an ANN exists for {{neuron}} {' / '.join(HYBRID_HOOKS)}; for IF "
                    f"neurons run `multispike convert --checkpoint {src} --to if --timesteps T --out DIR` and "
                    f"{{init_from}} DIR" if is_ann else "Drop {neuron}, or start from the ANN it was converted from"),
                "neuron", "init_from")
        # --neuron mlif|lmht --init-from ANN: the hybrid initialisation of that neuron (ANN -> SNN, then fine-tune)
        cfg.mode, cfg.ann_checkpoint, cfg.init_from, cfg.convert_hook = "hybrid", src, None, hook
        took.append(f"hybrid initialisation ({hook})")
        if "lr" not in explicit:
            cfg.lr = FINETUNE_LR.get(cfg.opt, cfg.lr)
            took.append(f"lr={cfg.lr:g} (fine-tune default for {cfg.opt}; pass --lr to change)")
    if saved.get("dataset") and "dataset" not in explicit:
        for key in INHERITED_DATA_KEYS:
            if key not in explicit and key in saved:
                setattr(cfg, key, saved[key] if not isinstance(saved[key], dict) else dict(saved[key]))
                took.append(key)
    elif "dataset" in explicit and saved.get("dataset") and cfg.dataset != saved.get("dataset"):
        log(f"note: {path} was trained on {saved['dataset']!r}; this run uses --dataset {cfg.dataset!r} (its classes "
            f"and input size are checked against the checkpoint's)")
    if cfg.init_from is not None and "lr" not in explicit:
        cfg.lr = FINETUNE_LR.get(cfg.opt, cfg.lr)
        took.append(f"lr={cfg.lr:g} (fine-tune default for {cfg.opt}; pass --lr to change)")
    if took:
        log(f"from {path}: " + ", ".join(f"{k}={getattr(cfg, k)!r}" if k in INHERITED_DATA_KEYS else k for k in took))
    return cfg.validate()


def config_from_args(args: argparse.Namespace, log=print) -> TrainConfig:
    """Build the config from a namespace produced by a parser with :func:`add_config_arguments`.

    A run that starts from a checkpoint inherits its data settings and gets a fine-tune lr unless they are
    given (:func:`inherit_from_checkpoint`).
    """
    overrides = {}
    for name in _FIELDS:
        if hasattr(args, name):
            value = getattr(args, name)
            if _unwrap_optional(_HINTS[name])[0] is dict and isinstance(value, list):
                value = dict(value)
            overrides[name] = value
    yaml_path = getattr(args, "config", None)
    explicit = set(overrides) | (set(load_yaml_config(yaml_path)) if yaml_path else set())
    cfg = resolve_config(yaml_path, overrides)
    if getattr(args, "print_config", False) or os.environ.get("RANK", "0") != "0":
        log = lambda *a, **k: None  # noqa: E731 - --print-config prints JSON only; one rank speaks
    return inherit_from_checkpoint(cfg, explicit, log=log)
