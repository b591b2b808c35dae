"""``multispike export``: write a spiking network to NIR and print its measured fidelity report."""
from __future__ import annotations

import argparse
import json

EPILOG = """\
modes:
  exact     threshold ladder / one-hot lanes (I, Threshold, Scale nodes): lossless; read back by
            multispike.export.import_from_nir (bit-identical) and by runtimes that import I/Threshold/Scale (Spyx)
  if        one nir.IF / nir.LIF per layer, what chips import: exact for hard-reset binary neurons, else
            approximate (soft reset -> reset to 0) or the sinabs multi-spike route for L > 1
  unrolled  LM-HT reparameterised into L sub-steps of nir.IF (dt' = dt/L), approximate

examples:
  multispike export --demo --out digits_if.nir
  multispike export --demo --mode if --out digits_chip.nir --report-json report.json
  multispike export --checkpoint runs/lmht/checkpoints/last.json --mode exact --out lmht.nir
  multispike export --model vgg_small --neuron if --timesteps 4 --out vgg.nir   (random weights, for testing)
"""


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("export", help="export a spiking network to NIR and print its measured fidelity report",
                       description="Export a multispike network to NIR (Neuromorphic Intermediate Representation) "
                                   "and print, per layer, what was written, whether it is exact and the measured "
                                   "agreement of the exported graph with the original network.",
                       epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--format", default="nir", choices=["nir"], help="exchange format (only 'nir')")
    src = p.add_argument_group("network (one of --demo, --checkpoint, --model)")
    src.add_argument("--demo", action="store_true",
                     help="train the demo's small CNN on the embedded digits, convert it to IF neurons and export it")
    src.add_argument("--checkpoint", default=None,
                     help="a multispike training checkpoint (run dir, checkpoints dir, last.json or a pair file); the "
                          "model is rebuilt from the config saved with it")
    src.add_argument("--model", default=None, help="zoo model name (multispike.models.list_models())")
    src.add_argument("--neuron", default=None, help="neuron of --model (if, lif, lmht, mlif; default from checkpoint)")
    src.add_argument("--timesteps", type=int, default=None, help="T (default: 4, or the checkpoint's)")
    src.add_argument("--num-classes", type=int, default=None, help="classes of --model (default 10)")
    src.add_argument("--neuron-kwargs", default=None,
                     help="JSON object of neuron arguments for --model, e.g. '{\"levels\": 2, \"tgim\": \"identity\"}'")
    data = p.add_argument_group("data (fidelity is measured on real test images when the dataset is known)")
    from ...data.provenance import add_data_arguments
    add_data_arguments(data)
    data.add_argument("--random-inputs", action="store_true",
                      help="measure on N(0, 1) random inputs even when the checkpoint names its dataset")
    p.add_argument("--mode", default="exact", choices=["exact", "if", "unrolled"], help="export mode (see below)")
    p.add_argument("--dt", type=float, default=1e-4, help="seconds per step written to the graph (default 1e-4, "
                                                          "the value snnTorch assumes)")
    p.add_argument("--out", required=True, help="output .nir file (HDF5)")
    p.add_argument("--report-json", default=None, help="also write the fidelity report as JSON here")
    p.add_argument("--samples", type=int, default=128, help="sample inputs on which fidelity is measured (default 128)")
    p.add_argument("--no-measure", action="store_true", help="skip the measurement (report the structure only)")
    p.add_argument("--demo-epochs", type=int, default=5, help="--demo: ANN training epochs (default 5)")
    p.add_argument("--seed", type=int, default=0, help="random seed (training, random sample inputs)")
    p.set_defaults(func=_run)


def _demo_network(args: argparse.Namespace):
    import torch

    from ...convert.converter import convert_to_snn
    from ...data.embedded import DIGITS_MEAN, DIGITS_STD, load_digits_split
    from ...data.loader import TensorLoader
    from ...demo import DigitsCNN, evaluate_prefixes, train_classifier

    torch.manual_seed(args.seed)
    x_tr, y_tr = load_digits_split("train")
    x_te, y_te = load_digits_split("test")
    train = TensorLoader(x_tr, y_tr, 64, shuffle=True, seed=args.seed, mean=DIGITS_MEAN, std=DIGITS_STD)
    test = TensorLoader(x_te, y_te, 256, shuffle=False, mean=DIGITS_MEAN, std=DIGITS_STD)
    calib = torch.cat([x for x, _ in TensorLoader(x_tr, y_tr, 256, shuffle=False, mean=DIGITS_MEAN,
                                                  std=DIGITS_STD)])[:512]
    ann = DigitsCNN("relu")
    train_classifier(ann, train, args.demo_epochs, 3e-3, "ANN (ReLU)", progress=False)
    T = args.timesteps or 4
    snn, _ = convert_to_snn(ann, T=T, threshold="99.9%", calibration_data=[calib])
    acc = evaluate_prefixes(snn, test)[-1]
    samples = torch.cat([x for x, _ in test])[:args.samples]
    labels = torch.cat([y for _, y in test])[:args.samples]
    info = f"demo: DigitsCNN trained {args.demo_epochs} epoch(s), converted to IF at T={T}: test accuracy {acc:.2f}%"
    return snn, samples[:8], samples, labels, info


def _samples(args: argparse.Namespace, cfg: dict, origin: str, model, size: tuple):
    """``(samples, labels, description)``: a class-stratified subset of ``--samples`` test images of the
    checkpoint's dataset (normalised as in training, checked against the network), else random N(0, 1) inputs."""
    import torch

    from ...data.provenance import data_opts, data_spec, load_split

    if (cfg.get("dataset") or args.dataset) and not args.random_inputs:
        spec = data_spec(cfg, args.dataset, args.data_dir, data_opts(args), origin=origin)
        images, labels, info = load_split(spec, "test", limit=args.samples, seed=args.seed,
                                          num_classes=getattr(model, "num_classes", None),
                                          in_channels=getattr(model, "in_channels", None), log=print)
        if isinstance(images, torch.Tensor) and images.dtype == torch.uint8 and images.dim() == 4:
            from ...data.loader import normalize

            mean, std = (info.mean, info.std) if spec.normalize else (None, None)
            x = normalize(images, mean, std, torch.float32) if mean is not None else images.float() / 255
            return x, labels, f"fidelity measured on {labels.numel()} {spec.dataset} test images (class-stratified)"
    gen = torch.Generator().manual_seed(args.seed)
    return (torch.randn(args.samples, *size, generator=gen), None,
            f"fidelity measured on {args.samples} random N(0, 1) inputs")


def _zoo_network(args: argparse.Namespace):
    from ...models import create_model, model_info

    cfg: dict = {}
    name = args.model
    state = None
    info = ""
    if args.checkpoint:
        from ...train.checkpoint import load_checkpoint, load_model_state

        ckpt = load_checkpoint(args.checkpoint)
        from ...train.guards import check_finite_state
        check_finite_state(ckpt.model_state, f"checkpoint {ckpt.path}")
        cfg = dict(ckpt.meta.get("config") or {})
        from ...train.rebuild import needs_rebuild, rebuild_model
        if needs_rebuild(ckpt.meta) and not (args.model or args.neuron or args.neuron_kwargs or args.num_classes):
            # converted / hybrid / QAT / --init-from networks: create_model would build another module tree; their
            # recipe (hooks from the allow-list only) rebuilds the saved one
            model, name = rebuild_model(ckpt)
            if args.timesteps and hasattr(model, "set_timesteps"):
                model.set_timesteps(int(args.timesteps))
            size = tuple(getattr(model, "input_size", None) or model_info(name).input_size)
            samples, labels, how = _samples(args, cfg, str(ckpt.path), model, size)
            info = f"checkpoint {ckpt.path} (rebuilt from its recipe); {how}"
            return model, samples[:2], samples, labels, info
        name = name or ckpt.meta.get("model") or cfg.get("model")
        if not name:
            raise ValueError(f"checkpoint {ckpt.path} does not record its model name; pass --model")
        state = (ckpt, load_model_state)
        info = f"checkpoint {ckpt.path}"
    if not name:
        raise ValueError("give a network: --demo, --checkpoint PATH or --model NAME")
    neuron_kwargs = dict(cfg.get("neuron_kwargs") or {})
    for key in ("levels", "lanes", "v_threshold"):
        if cfg.get(key) is not None:
            neuron_kwargs[key] = cfg[key]
    if args.neuron_kwargs:
        try:
            extra = json.loads(args.neuron_kwargs)
        except ValueError as exc:
            raise ValueError(f"--neuron-kwargs must be a JSON object, got {args.neuron_kwargs!r} ({exc})") from None
        if not isinstance(extra, dict):
            raise ValueError(f"--neuron-kwargs must be a JSON object, got {args.neuron_kwargs!r}")
        neuron_kwargs.update(extra)
    neuron = args.neuron or cfg.get("neuron") or "if"
    T = args.timesteps or cfg.get("timesteps") or 4
    num_classes = args.num_classes or cfg.get("num_classes") or 10
    model = create_model(name, num_classes=num_classes, neuron=neuron, T=T, in_channels=cfg.get("in_channels"),
                         neuron_kwargs=neuron_kwargs, **(cfg.get("model_kwargs") or {}))
    if state is not None:
        ckpt, load_model_state = state
        load_model_state(model, ckpt.model_state, source=f"checkpoint {ckpt.path}")
    else:
        info = f"model {name} with random weights (no --checkpoint)"
    model.eval()
    size = tuple(getattr(model, "input_size", None) or model_info(name).input_size)
    samples, labels, how = _samples(args, cfg, info.split(" ", 1)[-1] if state is not None else "flags", model, size)
    info += f"; neuron={neuron}, T={T}; {how}"
    return model, samples[:2], samples, labels, info


def _run(args: argparse.Namespace) -> int:
    from ...export import export_to_nir

    if args.samples < 1:
        raise ValueError(f"--samples must be >= 1, got {args.samples}")
    if args.demo and (args.checkpoint or args.model):
        raise ValueError("--demo builds its own network; do not combine it with --checkpoint/--model")
    from ...train.guards import ensure_writable_file
    ensure_writable_file(args.out, "--out")   # before building and measuring, not after
    if args.report_json:
        ensure_writable_file(args.report_json, "--report-json")
    if args.demo:
        model, example, samples, labels, info = _demo_network(args)
    else:
        model, example, samples, labels, info = _zoo_network(args)
    from ...neurons.base import MemoryModule
    if args.checkpoint and not any(isinstance(m, MemoryModule) for m in model.modules()):
        # an ANN (ReLU / QCFS / QAC): say which step makes it a spiking network, before any measurement
        from ...quant.qac import QACQuantizer
        from ...quant.qcfs import QCFS
        kinds = {type(m) for m in model.modules()}
        step = ("--to lmht --levels L --timesteps T --tgim identity (or --to if --timesteps T)" if QCFS in kinds else
                "--to uniform --timesteps T --align none" if QACQuantizer in kinds else
                "--to if --threshold 99.9% --timesteps T")
        raise ValueError(f"{args.checkpoint} holds an ANN without spiking neurons; NIR export writes spiking networks. "
                         f"Convert it first: `multispike convert --checkpoint {args.checkpoint} {step} --out DIR`, "
                         f"then `multispike export --checkpoint DIR`")
    print(info)
    batches = [samples[i:i + 64] for i in range(0, samples.shape[0], 64)]
    graph, report = export_to_nir(model, example, path=args.out, dt=args.dt, mode=args.mode, sample_inputs=batches,
                                  measure=not args.no_measure)
    print(report)
    if labels is not None and not args.no_measure:
        from ...export import import_from_nir

        imported = import_from_nir(args.out, restore=False)
        pred = imported(samples).argmax(-1)
        from ..workflows import prefix_accuracy
        own = prefix_accuracy(model, [(samples, labels)])["acc"]
        print(f"accuracy of the exported graph under literal NIR semantics on {labels.numel()} test samples: "
              f"{100.0 * float((pred == labels).float().mean()):.2f}% (the original network: {100.0 * own:.2f}%)")
    if args.report_json:
        from ...train.checkpoint import atomic_write_text

        atomic_write_text(args.report_json, report.to_json())
        print(f"report written to {args.report_json}")
    return 0
