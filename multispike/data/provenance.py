"""Which data a saved network belongs to, and the check that a later step uses the same.

Every training run records a *data record* in its config (``config["data_info"]``): the class names in label
order, the number of classes, the input shape ``[C, H, W]`` and the normalisation. Every workflow that starts
from a checkpoint (``eval``, ``convert``, ``calibrate``, ``reparam``, ``qat``/``train --init-from``,
``export``) takes the dataset, its root, its reader options (``dataset_kwargs``) and the normalisation from that
checkpoint (:func:`data_spec`), lets explicit flags override them, prints one line saying what it uses
(:func:`describe_data`) and refuses data whose classes or input shape differ from the record before any work
(:func:`check_data`).

Example::

    spec = data_spec(ckpt.meta["config"], origin=str(ckpt.path))
    images, labels, info = load_split(spec, "test", limit=500)      # stratified, checked, one line printed
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Callable, Mapping

import torch

from .._errors import ParameterError

__all__ = ["DataSpec", "data_spec", "data_record", "check_data", "describe_data", "load_split", "DataMismatchError"]


class DataMismatchError(ParameterError):
    """The data a step would use do not match the data the network was trained on (classes or input shape).

    A :class:`~multispike._errors.ParameterError`: the fix names the ``dataset``/``data_dir``/``data_opts``
    parameters (the command line writes them as its flags)."""


@dataclass
class DataSpec:
    """Where a checkpoint's images come from (read from its saved config, overridable by flags).

    Attributes:
        dataset, data_dir, dataset_kwargs, normalize: what :func:`multispike.data.load_dataset` gets.
        record: the data record saved with the network (``{}`` for checkpoints written before records existed).
        origin: where the settings came from, for the printed line (a checkpoint path, or ``"flags"``).
        overridden: the settings given by flags instead of the checkpoint.
    """

    dataset: str
    data_dir: str | None = None
    normalize: bool = True
    dataset_kwargs: dict = field(default_factory=dict)
    record: dict = field(default_factory=dict)
    origin: str = "flags"
    overridden: list = field(default_factory=list)


def data_spec(cfg: Mapping[str, Any] | None, dataset: str | None = None, data_dir: str | None = None,
              data_opts: Mapping[str, Any] | None = None, normalize: bool | None = None,
              origin: str | None = None) -> DataSpec:
    """The data of a saved config, with explicit overrides (flags win).

    A ``dataset`` other than the checkpoint's drops the checkpoint's ``data_dir`` and reader options (they
    belong to the other dataset); ``data_opts`` are merged over the options that remain.
    """
    cfg = dict(cfg or {})
    saved = cfg.get("dataset")
    same = dataset is None or dataset == saved
    overridden = []
    if dataset is not None and not same:
        overridden.append("dataset")
    if data_dir is not None and data_dir != cfg.get("data_dir"):
        overridden.append("data_dir")
    kwargs = dict(cfg.get("dataset_kwargs") or {}) if same else {}
    if data_opts:
        overridden.append("dataset_kwargs")
        kwargs.update(dict(data_opts))
    if normalize is not None and normalize != bool(cfg.get("normalize", True)):
        overridden.append("normalize")
    return DataSpec(dataset=dataset or saved or "cifar10",
                    data_dir=data_dir if data_dir is not None else (cfg.get("data_dir") if same else None),
                    normalize=bool(cfg.get("normalize", True)) if normalize is None else bool(normalize),
                    dataset_kwargs=kwargs, record=dict(cfg.get("data_info") or {}),
                    origin=origin or ("checkpoint" if saved else "flags"), overridden=overridden)


def data_record(info: Any, images: torch.Tensor | None = None, normalize: bool = True) -> dict:
    """The data record a run saves (``config["data_info"]``) from a loaded split's catalog entry and images."""
    shape = list(images.shape[1:]) if isinstance(images, torch.Tensor) and images.dim() >= 2 else \
        (list(info.input_shape) if getattr(info, "input_shape", None) else None)
    classes = list(getattr(info, "classes", ()) or ())
    return {"dataset": getattr(info, "name", None), "classes": classes or None,
            "num_classes": getattr(info, "num_classes", None) or (len(classes) or None), "input_shape": shape,
            "mean": list(info.mean) if normalize and getattr(info, "mean", None) else None,
            "std": list(info.std) if normalize and getattr(info, "std", None) else None}


def check_data(record: Mapping[str, Any], info: Any, images: torch.Tensor | None = None, *, where: str = "",
               num_classes: int | None = None, in_channels: int | None = None) -> None:
    """Raise :class:`DataMismatchError` when the loaded data differ from the network's record.

    Compares the class names (order matters: they are the label numbering), the number of classes (also
    against ``num_classes``, the network's outputs) and the input shape ``[C, H, W]`` (also the channels
    against ``in_channels``). Unknown values on either side are not compared.
    """
    where = f" ({where})" if where else ""
    name = getattr(info, "name", "the data")
    theirs = list(getattr(info, "classes", ()) or ())
    mine = list(record.get("classes") or [])
    if mine and theirs and mine != theirs:
        missing, extra = [c for c in mine if c not in theirs], [c for c in theirs if c not in mine]
        detail = (f"missing {missing[:5]}" if missing else "") + ("; " if missing and extra else "") + \
                 (f"new {extra[:5]}" if extra else "")
        raise DataMismatchError(
            f"the network was trained on {len(mine)} classes {mine[:5]}{' ...' if len(mine) > 5 else ''} but "
            f"{name}{where} has {len(theirs)} classes {theirs[:5]}{' ...' if len(theirs) > 5 else ''}"
            f"{' (' + detail + ')' if detail else ' (same names, another order: the labels would be permuted)'}. "
            f"Use the data it was trained on ({{dataset}}/{{data_dir}}), or train a network for these classes.",
            "dataset", "data_dir")
    k_data = getattr(info, "num_classes", None) or (len(theirs) or None)
    for k_net, what in ((record.get("num_classes"), "was trained on"), (num_classes, "has outputs for")):
        if k_net is not None and k_data is not None and int(k_net) != int(k_data):
            raise DataMismatchError(f"the network {what} {k_net} classes but {name}{where} has {k_data}. Use the "
                                    f"data it was trained on ({{dataset}}/{{data_dir}}/{{data_opts}}).", "dataset",
                                    "data_dir", "data_opts")
    shape = list(images.shape[1:]) if isinstance(images, torch.Tensor) and images.dim() == 4 else None
    rec_shape = record.get("input_shape")
    if shape is not None and rec_shape and list(rec_shape) != shape:
        raise DataMismatchError(
            f"the network was trained on {'x'.join(map(str, rec_shape))} inputs but {name}{where} gives "
            f"{'x'.join(map(str, shape))}. Pass the reader options of training (e.g. {{data_opts}} size="
            f"{rec_shape[-1]}" + (" mode=L" if rec_shape[0] == 1 else "") + ") or use its data.", "data_opts")
    if shape is not None and in_channels is not None and shape[0] != int(in_channels):
        raise DataMismatchError(f"the network takes {in_channels} input channel(s) but {name}{where} gives "
                                f"{shape[0]} ({{data_opts}} mode=L gives 1 channel, mode=RGB 3)", "data_opts")


def describe_data(spec: DataSpec, info: Any = None, images: torch.Tensor | None = None, split: str | None = None,
                  n: int | None = None) -> str:
    """One line: dataset, root, options, size, classes, normalisation and where the settings came from."""
    from .catalog import resolve_data_root

    parts = [f"data: {spec.dataset}"]
    if split:
        parts[0] += f"/{split}"
    if n is not None:
        parts.append(f"{n} images")
    root = spec.data_dir if spec.data_dir is not None else f"{resolve_data_root(None)} (default root)"
    parts.append(f"root {root}")
    if spec.dataset_kwargs:
        parts.append("options " + " ".join(f"{k}={v}" for k, v in sorted(spec.dataset_kwargs.items())))
    if isinstance(images, torch.Tensor) and images.dim() == 4:
        parts.append("x".join(str(s) for s in images.shape[1:]))
    k = getattr(info, "num_classes", None)
    if k:
        parts.append(f"{k} classes")
    if spec.normalize and getattr(info, "mean", None):
        parts.append("normalised (mean " + ", ".join(f"{m:.3g}" for m in info.mean) + ")")
    elif not spec.normalize:
        parts.append("not normalised")
    src = f"from {spec.origin}" if spec.origin != "flags" else "from flags"
    if spec.overridden and spec.origin != "flags":
        src += f", overridden: {', '.join(spec.overridden)}"
    return ", ".join(parts) + f" [{src}]"


def load_split(spec: DataSpec, split: str, *, limit: int | None = None, seed: int = 0, progress: bool | None = None,
               num_classes: int | None = None, in_channels: int | None = None, log: Callable[[str], Any] | None = None,
               ) -> tuple[torch.Tensor, torch.Tensor, Any]:
    """Load ``split`` of ``spec`` (a stratified ``limit`` chosen before decoding), check it against the record.

    Returns:
        ``(images, labels, info)``.

    Raises:
        DataMismatchError: classes or input shape differ from the network's record (or ``num_classes`` /
            ``in_channels``).
    """
    from .catalog import load_dataset

    images, labels, info = load_dataset(spec.dataset, spec.data_dir, split, subset=limit, subset_seed=seed,
                                        progress=progress, **spec.dataset_kwargs)
    if log is not None:
        log(describe_data(spec, info, images, split, int(labels.shape[0]) if hasattr(labels, "shape") else None))
    check_data(spec.record, info, images, where=f"{split} split", num_classes=num_classes, in_channels=in_channels)
    return images, labels, info


def parse_key_value(text: str, loads: Callable[[str], Any] | None = None,
                    errors: tuple[type[BaseException], ...] = (), example: str = "size=32") -> tuple[str, Any]:
    """``"KEY=VALUE"`` -> ``(key, loads(value))``, the raw string when ``loads`` raises one of ``errors``.

    An ``argparse`` type for ``KEY=VALUE`` options; ``loads`` defaults to YAML (``yaml.safe_load``, so
    ``size=32`` gives an int). Raises ``argparse.ArgumentTypeError`` without ``=`` or with an empty key.
    """
    import argparse

    if loads is None:
        import yaml

        loads, errors = yaml.safe_load, (yaml.YAMLError,)
    if "=" not in text or not text.split("=", 1)[0]:
        raise argparse.ArgumentTypeError(f"expected KEY=VALUE (e.g. {example}), got {text!r}")
    key, raw = text.split("=", 1)
    try:
        return key, loads(raw)
    except errors:
        return key, raw


def _parse_opt(text: str) -> tuple[str, Any]:
    return parse_key_value(text)


def add_data_arguments(group: Any, *, limit_help: str | None = None) -> None:
    """The data flags every checkpoint workflow shares: ``--dataset``, ``--data-dir``, ``--data-opt``."""
    group.add_argument("--dataset", default=None, help="dataset (default: the checkpoint's)")
    group.add_argument("--data-dir", default=None, help="dataset root (default: the checkpoint's, else "
                                                        "$MULTISPIKE_DATA, else ../shared/datasets)")
    group.add_argument("--data-opt", "--dataset-kwargs", dest="data_opt", nargs="+", type=_parse_opt, default=None,
                       metavar="KEY=VALUE", help="reader options merged over the checkpoint's (e.g. size=32 resize=32 "
                                                 "mode=L for imagefolder)")
    if limit_help:
        group.add_argument("--limit", "--eval-subset", dest="limit", type=int, default=None, help=limit_help)


def data_opts(args: Any) -> dict | None:
    """``--data-opt`` pairs as a dict (``None`` when not given)."""
    pairs = getattr(args, "data_opt", None)
    return dict(pairs) if pairs else None
