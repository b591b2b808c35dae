"""multispike eval: accuracy at every timestep, spike statistics, op counts and energy of a model, as a report.

Writes ``<out>/result.json``, ``<out>/report.md`` and PNG plots (accuracy vs T, per-layer rates, per-layer T,
energy breakdown). ``--compare`` adds ``comparison.md``/``.json``/``.png`` over this run and earlier ones, or
compares earlier runs alone when no model is given.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

EPILOG = """\
examples:
  multispike eval --model vgg_small --neuron if --timesteps 4 --dataset cifar10 --limit 512 --out runs/eval_if
  multispike eval --checkpoint runs/vgg_small --limit 1000 --out runs/vgg_small/eval
  multispike eval --model resnet20_cifar --weights snn.safetensors --neuron lmht --levels 2 --timesteps 2 \\
      --dataset cifar10 --out runs/eval_lmht
  multispike eval --model vggsnn_small --neuron lif --dataset nmnist --timesteps 8 --encoding dvs --out runs/nm
  multispike eval --out runs/cmp --compare runs/eval_if/result.json runs/eval_lmht/result.json

Energy conventions reported side by side: DIET/M-LIF eq. (11) with delta = E_ANN / E_SNN, multispike's
value-weighted count (a spike of count k = k accumulates, exact fan-out at borders), LM-HT SOPs, NeuroBench
effective ops, and a memory-access model (ours, not the paper's).
"""


def _kv(text: str) -> tuple[str, Any]:
    """``--neuron-kwargs/--model-kwargs`` entries: values are JSON (``levels=2``, ``v_reset=null``), else text."""
    from ...data.provenance import parse_key_value

    return parse_key_value(text, json.loads, (json.JSONDecodeError,), example="levels=2")


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "eval", help="evaluate a model: accuracy per timestep, spike rates, op counts, energy; JSON/Markdown/PNG",
        description=__doc__.split("\n\n")[0], epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    src = p.add_argument_group("model")
    src.add_argument("--model", help="zoo model name (see `multispike.models.list_models()`)")
    src.add_argument("--checkpoint", help="a `multispike train` run directory, checkpoint directory or checkpoint "
                                          "file; the model is rebuilt from the config stored in it")
    src.add_argument("--weights", help="a .safetensors state dict to load into --model")
    src.add_argument("--neuron", default=None, help="neuron for --model (if, lif, lmht, mlif, relu, qcfs, ...)")
    src.add_argument("--levels", type=int, default=None, help="neuron 'levels' (L of LM-HT)")
    src.add_argument("--lanes", type=int, default=None, help="neuron 'lanes' (S of one-hot M-LIF)")
    src.add_argument("--v-threshold", type=float, default=None, help="neuron 'v_threshold'")
    src.add_argument("--neuron-kwargs", type=_kv, nargs="*", default=[], metavar="KEY=VALUE",
                     help="extra neuron arguments (values parsed as JSON when possible)")
    src.add_argument("--model-kwargs", type=_kv, nargs="*", default=[], metavar="KEY=VALUE",
                     help="extra create_model arguments")
    src.add_argument("--num-classes", type=int, default=None, help="classifier outputs (default: from the dataset)")
    data = p.add_argument_group("data")
    from ...data.provenance import add_data_arguments
    add_data_arguments(data, limit_help="evaluate a class-stratified, seeded subset of N samples (default: all)")
    data.add_argument("--split", default="test", help="split to evaluate (default test)")
    data.add_argument("--batch-size", type=int, default=128, help="evaluation batch size (default 128)")
    data.add_argument("--no-normalize", action="store_true", help="do not normalise with the dataset mean/std")
    data.add_argument("--split-by", default="number", choices=("number", "time"),
                      help="event datasets: integrate events into --timesteps frames by event count or by time")
    run = p.add_argument_group("evaluation")
    run.add_argument("--timesteps", "-T", type=int, default=None,
                     help="T (default: the checkpoint's, else 4); accuracy is reported at every prefix t <= T")
    run.add_argument("--input-mode", default="auto", choices=("auto", "repeat", "time_major", "batch_first", "model"),
                     help="how inputs reach the model (default auto: the model encodes static images itself)")
    run.add_argument("--encoding", default=None, choices=("static", "dvs"),
                     help="energy convention for the first layer: static (MAC) or dvs (all AC); default from data")
    run.add_argument("--energy", default="45nm", help="energy constants: 45nm (4.6/0.9 pJ), fp16 or int8")
    run.add_argument("--op-batches", type=int, default=None, help="count operations on the first N batches only")
    run.add_argument("--no-neurobench", action="store_true", help="skip the NeuroBench-compatible op counts")
    run.add_argument("--membrane", action="store_true", help="also record membrane statistics")
    run.add_argument("--tta-flip", action="store_true",
                     help="flip test-time augmentation: accuracy from the mean logits of each image and its mirror "
                          "image (two passes per inference; rates, ops and energy are those of one pass)")
    run.add_argument("--tta-translate", action="store_true",
                     help="also average one-pixel shifted views (airbench94's TTA level 2; 3 passes per inference, "
                          "6 with --tta-flip)")
    run.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    run.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    run.add_argument("--name", default=None, help="run name in the report (default: the model name)")
    out = p.add_argument_group("output")
    out.add_argument("--out", required=True, help="output directory for result.json, report.md and plots")
    out.add_argument("--compare", nargs="+", default=None, metavar="RESULT",
                     help="earlier result.json files (or their directories) to put in one table and plot")
    out.add_argument("--no-plots", action="store_true", help="write JSON and Markdown only")
    out.add_argument("--no-progress", action="store_true", help="disable the progress bar")
    p.set_defaults(func=run_eval)


def _positive(value: int | None, flag: str) -> None:
    if value is not None and value < 1:
        raise ValueError(f"{flag} must be >= 1, got {value}")


def _neuron_kwargs(args: argparse.Namespace, base: dict | None = None) -> dict:
    kw = dict(base or {})
    kw.update(dict(args.neuron_kwargs or []))
    for key, flag in (("levels", args.levels), ("lanes", args.lanes), ("v_threshold", args.v_threshold)):
        if flag is not None:
            kw[key] = flag
    return kw


def _load_weights(model, path: str) -> None:
    from ...train.checkpoint import CheckpointError, load_model_state

    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"--weights {p} does not exist")
    if p.suffix != ".safetensors":
        raise ValueError(f"--weights must be a .safetensors file (no pickled .pt/.pth: they can run code), got {p}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        state = load_file(str(p))
    except (SafetensorError, OSError, RuntimeError) as exc:
        raise CheckpointError(f"cannot read --weights {p}: {exc}") from exc
    if state and all(k.startswith("model.") for k in state):  # a multispike checkpoint's tensors file
        state = {k[len("model."):]: v for k, v in state.items() if k.startswith("model.")}
    load_model_state(model, state, source=str(p))


def _build_model(args: argparse.Namespace, num_classes: int | None, in_channels: int | None, ckpt=None):
    """Returns ``(model, name, defaults)``; ``defaults`` holds the checkpoint's T and provenance."""
    from ...models import create_model

    if ckpt is not None:
        from ...train.checkpoint import CheckpointError, load_model_state

        cfg = ckpt.meta.get("config") or {}
        from ...convert.recipe import model_timesteps
        from ...train.rebuild import needs_rebuild, rebuild_model
        if needs_rebuild(ckpt.meta):
            # converted / QAT-prepared / hybrid / --init-from networks: their module tree is not create_model's
            model, name = rebuild_model(ckpt)
            defaults = {"dataset": cfg.get("dataset"), "timesteps": model_timesteps(model) or cfg.get("timesteps"),
                        "normalize": cfg.get("normalize", True), "checkpoint": str(ckpt.path),
                        "epoch": ckpt.meta.get("epoch"), "data_dir": cfg.get("data_dir")}
            return model, name, defaults
        name = ckpt.meta.get("model") or cfg.get("model")
        if not name:
            raise CheckpointError(f"checkpoint {ckpt.path} does not record its model name; it cannot be rebuilt "
                                  f"(use --model NAME --weights {ckpt.path.with_suffix('.safetensors')})")
        nk = dict(cfg.get("neuron_kwargs") or {})
        for key in ("levels", "lanes", "v_threshold"):
            if cfg.get(key) is not None:
                nk[key] = cfg[key]
        nk = _neuron_kwargs(args, nk)
        T = cfg.get("timesteps", 1)
        model = create_model(name, num_classes=cfg.get("num_classes") or num_classes or 10,
                             neuron=args.neuron or cfg.get("neuron", "relu"), T=T,
                             in_channels=cfg.get("in_channels") or in_channels, neuron_kwargs=nk,
                             **{**(cfg.get("model_kwargs") or {}), **dict(args.model_kwargs or [])})
        load_model_state(model, ckpt.model_state, source=f"checkpoint {ckpt.path}")
        defaults = {"dataset": cfg.get("dataset"), "timesteps": T, "normalize": cfg.get("normalize", True),
                    "checkpoint": str(ckpt.path), "epoch": ckpt.meta.get("epoch"),
                    "data_dir": cfg.get("data_dir")}
        return model, name, defaults
    T = args.timesteps or 4
    model = create_model(args.model, num_classes=num_classes or 10, neuron=args.neuron, T=T,
                         in_channels=in_channels, neuron_kwargs=_neuron_kwargs(args),
                         **dict(args.model_kwargs or []))
    if args.weights:
        _load_weights(model, args.weights)
    return model, args.model, {"timesteps": T}


def _data(args: argparse.Namespace, dataset: str, T: int, normalize: bool):
    """``(batches, info, kind)`` for the evaluation split."""
    import torch

    from ...data import TensorLoader, get_dataset, load_dataset

    info = get_dataset(dataset)
    if info.kind == "events":
        from ...data.events import collate_time_major

        ds, labels, info = load_dataset(dataset, args.data_dir, args.split, data_type="frame", frames_number=T,
                                        split_by=args.split_by)
        if args.limit is not None:
            from ...data.subset import stratified_indices
            ds = torch.utils.data.Subset(ds, stratified_indices(torch.as_tensor(labels), args.limit).tolist())
        loader = torch.utils.data.DataLoader(ds, batch_size=args.batch_size, shuffle=False,
                                             collate_fn=collate_time_major)
        return loader, info, "events"
    from ...data.provenance import load_split

    spec = args.data_spec
    spec.normalize = normalize
    images, labels, info = load_split(spec, args.split, limit=args.limit, num_classes=args.model_classes,
                                      in_channels=args.model_channels, log=print)
    if not (isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4):
        raise TypeError(f"dataset {dataset!r} yields {getattr(images, 'dtype', type(images).__name__)}; eval handles "
                        "uint8 image datasets [N, C, H, W] and event datasets")
    mean, std = (info.mean, info.std) if normalize else (None, None)
    loader = TensorLoader(images, labels, args.batch_size, shuffle=False, mean=mean, std=std)
    return loader, info, "static"


def run_eval(args: argparse.Namespace) -> int:
    import torch

    from ...metrics import compare_reports, evaluate, write_report

    for value, flag in ((args.limit, "--limit"), (args.batch_size, "--batch-size"), (args.timesteps, "--timesteps"),
                        (args.op_batches, "--op-batches"), (args.threads, "--threads")):
        _positive(value, flag)
    if args.model and args.checkpoint:
        raise ValueError("give either --model or --checkpoint, not both (a checkpoint records its model)")
    if args.weights and not args.model:
        raise ValueError("--weights needs --model NAME (the architecture to load them into)")
    if not (args.model or args.checkpoint):
        if not args.compare:
            raise ValueError("nothing to do: give --model NAME or --checkpoint PATH to evaluate, and/or --compare "
                             "RESULT.json ... to compare earlier runs")
        from ...train.guards import ensure_writable_dir
        ensure_writable_dir(args.out, "--out")
        paths = compare_reports(args.compare, args.out)
        print(f"comparison of {len(args.compare)} runs written to {paths['markdown']}")
        return 0
    from ...train.guards import check_finite_state, ensure_writable_dir
    ensure_writable_dir(args.out, "--out")   # fail now, not after the whole evaluation
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda requested but CUDA is not available; use --device cpu")

    # Dataset metadata first: it gives num_classes and in_channels for the model.
    ckpt = None
    cfg: dict[str, Any] = {}
    if args.checkpoint:
        from ...train.checkpoint import load_checkpoint
        ckpt = load_checkpoint(args.checkpoint)
        check_finite_state(ckpt.model_state, f"checkpoint {ckpt.path}")
        cfg = ckpt.meta.get("config") or {}
    # dataset, root, reader options, normalisation and the data record all come from the checkpoint unless given
    from ...data.provenance import data_opts, data_spec
    spec = data_spec(cfg, args.dataset, args.data_dir, data_opts(args),
                     origin=str(ckpt.path) if ckpt is not None else "flags")
    args.data_spec = spec
    dataset, args.data_dir = spec.dataset, spec.data_dir
    from ...data import get_dataset
    info = get_dataset(dataset)
    in_channels = info.input_shape[0] if info.input_shape else None
    model, name, defaults = _build_model(args, args.num_classes or info.num_classes, in_channels, ckpt)
    T = args.timesteps or defaults.get("timesteps") or 4
    normalize = not args.no_normalize and bool(defaults.get("normalize", True))
    args.model_classes = getattr(model, "num_classes", None)
    args.model_channels = getattr(model, "in_channels", None)
    batches, info, kind = _data(args, dataset, T, normalize)
    model_classes = getattr(model, "num_classes", None)
    if model_classes is not None and info.num_classes is not None and info.num_classes != model_classes:
        # more classes than outputs: labels beyond the head crash or score 0; fewer: the accuracy means another task
        raise ValueError(f"the model has {model_classes} output classes but dataset {dataset!r} has "
                         f"{info.num_classes}; evaluate it on the data it was trained for (or rebuild --model with "
                         f"--num-classes {info.num_classes})")
    encoding = args.encoding or ("dvs" if kind == "events" else "static")
    input_mode = args.input_mode
    if input_mode == "auto" and kind == "events":
        input_mode = "time_major"
    model = model.to(device)
    result = evaluate(model, batches, T_max=T, input_mode=input_mode, device=device, op_batches=args.op_batches,
                      membrane=args.membrane, energy=args.energy, encoding=encoding,
                      input_events="count" if kind == "events" else None, neurobench=not args.no_neurobench,
                      name=args.name or name, progress=not args.no_progress, tta_flip=args.tta_flip,
                      tta_translate=args.tta_translate, meta={"model": name, "dataset": dataset, "split": args.split, "limit": args.limit,
                            **{k: v for k, v in defaults.items() if k in ("checkpoint", "epoch")}})
    paths = write_report(result, args.out, plots_enabled=not args.no_plots)
    acc = ", ".join(f"t={t}: {100 * a:.2f}%" for t, a in result.accuracy_vs_T)
    tta = " with " + " + ".join(n for n, on in (("flip", args.tta_flip), ("translate", args.tta_translate)) if on) \
        + " TTA" if args.tta_flip or args.tta_translate else ""
    print(f"{result.name} on {dataset}/{args.split} ({result.samples} samples){tta}: {acc}")
    from ...neurons.base import MemoryModule
    spiking = any(isinstance(m, MemoryModule) for m in model.modules())
    if result.energy and not spiking:
        # a pure ANN (ReLU, QCFS, QAC): no spike, so an SNN energy and the ratio δ = E_ANN / E_SNN do not apply
        print(f"energy per sample ({result.energy['constants']['name']}): ANN {result.energy['diet']['e_ann_uj']:.4g} "
              f"uJ (no spiking layer: convert it to compare an SNN's energy)")
    elif result.energy:
        d = result.energy["diet"]
        delta = f"{d['delta']:.2f}" if d["delta"] is not None else "n/a"
        print(f"energy per sample ({result.energy['constants']['name']}): ANN {d['e_ann_uj']:.4g} uJ, SNN (DIET) "
              f"{d['e_snn_uj']:.4g} uJ, delta {delta}; multispike {result.energy['multispike']['e_uj']:.4g} uJ")
    if result.ops and result.ops["unsupported"]:
        print("unsupported layers (not counted): " + ", ".join(u["name"] for u in result.ops["unsupported"]))
    print(f"report written to {paths['markdown']}")
    if args.compare:
        cmp_paths = compare_reports([result, *args.compare], args.out)
        print(f"comparison written to {cmp_paths['markdown']}")
    return 0
