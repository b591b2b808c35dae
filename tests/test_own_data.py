"""A researcher's own image data through every CLI workflow (issue 16).

The README pipeline - train a QCFS ANN, convert to IF and LM-HT, fine-tune from the conversion, reparameterise,
QAT from the ANN, mixed-timestep conversion, calibration, eval, export - runs on a small ImageFolder tree of real
CIFAR-10 images written as PNG, with only ``--dataset imagefolder --data-dir DIR`` on the first command. Each
step's accuracy is checked against its source network (the exact identities of the conversions), and no step may
pick another dataset or teacher. Unit tests cover the ImageFolder defaults (native size, no enlarge-then-crop,
subset before decoding, ``test/``, memory check) and the data checks.
"""
import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from multispike.cli.main import main
from multispike.data import ImageFolder, load_dataset, locate
from multispike.data.provenance import DataMismatchError, check_data, data_spec
from multispike.data.subset import stratified_indices

KEEP = ("airplane", "automobile", "frog", "ship")
QUICK = ["--no-progress", "--num-threads", "1"]


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


def _cifar():
    from multispike.data import load_cifar

    root = os.environ.get("MULTISPIKE_DATA")
    try:
        return {s: load_cifar(root, "cifar10", s) for s in ("train", "test")}
    except FileNotFoundError as exc:
        pytest.skip(f"real CIFAR-10 not found: {exc}")


def _write_tree(root: Path, cifar: dict, n_train: int, n_test: int, side: int, test_dir: str = "test") -> dict:
    """CIFAR-10 images of four classes as PNG: ``root/train/<class>/`` and ``root/<test_dir>/<class>/``.

    ``side < 32`` box-filters each image to ``side`` pixels (still a real photograph, cheaper to train on).
    Returns the written uint8 arrays per split, in the tree's sorted order.
    """
    from PIL import Image

    written = {}
    for split, folder, n in (("train", "train", n_train), ("test", test_dir, n_test)):
        s = cifar[split]
        arrays = []
        for name in sorted(KEEP):
            c = s.classes.index(name)
            d = root / folder / name
            d.mkdir(parents=True)
            for i in (s.labels == c).nonzero().flatten()[:n].tolist():
                im = Image.fromarray(s.images[i].permute(1, 2, 0).numpy())
                if side != 32:
                    im = im.resize((side, side), Image.Resampling.BOX)
                im.save(d / f"{i:05d}.png")
                arrays.append(np.asarray(im))
        written[split] = arrays
    return written


@pytest.fixture(scope="module")
def cifar():
    return _cifar()


# ---------------------------------------------------------------------------------------------- ImageFolder
def test_native_size_keeps_real_pixels_exactly(cifar, tmp_path):
    """32x32 CIFAR PNGs decode at 32x32 with no resampling (the old default upscaled to 256 and cropped 224);
    ``size=32`` alone is the same (no enlarge-then-crop); a test/ folder is accepted by catalogue and reader."""
    written = _write_tree(tmp_path, cifar, 3, 2, 32)
    assert locate("imagefolder", tmp_path) == tmp_path            # train/ + test/ (no val/) is found
    images, labels, info = load_dataset("imagefolder", tmp_path, "test")
    assert images.shape == (8, 3, 32, 32) and info.input_shape == (3, 32, 32)
    assert info.classes == tuple(sorted(KEEP)) and labels.tolist() == [0, 0, 1, 1, 2, 2, 3, 3]
    expect = torch.from_numpy(np.stack(written["test"])).permute(0, 3, 1, 2)
    assert torch.equal(images, expect)
    again, _, _ = load_dataset("imagefolder", tmp_path, "test", size=32)
    assert torch.equal(again, expect)
    # asking for a larger size enlarges (asked for); the ImageNet geometry still applies to large images
    assert load_dataset("imagefolder", tmp_path, "test", size=48)[0].shape == (8, 3, 48, 48)
    assert ImageFolder(tmp_path / "train").size == 32


def test_decoding_shows_progress(cifar, tmp_path, capsys):
    _write_tree(tmp_path, cifar, 3, 1, 8)
    load_dataset("imagefolder", tmp_path, "train", progress=True)
    assert "decoding train/" in capsys.readouterr().err              # tqdm on stderr
    load_dataset("imagefolder", tmp_path, "train")                    # automatic: a small tree decodes silently
    assert "decoding" not in capsys.readouterr().err


def test_subset_is_stratified_and_chosen_before_decoding(cifar, tmp_path, monkeypatch):
    _write_tree(tmp_path, cifar, 10, 1, 8)
    import multispike.data.imagefolder as imf

    decoded = []
    real = imf.decode_image
    monkeypatch.setattr(imf, "decode_image", lambda path, *a, **k: decoded.append(path) or real(path, *a, **k))
    images, labels, _ = load_dataset("imagefolder", tmp_path, "train", subset=8, subset_seed=3)
    assert images.shape == (8, 3, 8, 8) and len(decoded) == 8                    # only the chosen files
    assert torch.bincount(labels, minlength=4).tolist() == [2, 2, 2, 2]           # every class, not the first two
    full = ImageFolder(tmp_path / "train")
    assert labels.tolist() == full.targets[stratified_indices(full.targets, 8, 3)].tolist()


def test_memory_estimate_refuses_before_allocating(cifar, tmp_path, monkeypatch, capsys):
    _write_tree(tmp_path, cifar, 2, 1, 8)
    import multispike.data.imagefolder as imf

    monkeypatch.setattr(imf, "available_memory", lambda: 1000)        # 1 kB free: 8 images of 3x8x8 = 1.5 kB
    with pytest.raises(MemoryError, match=r"decoding 8 images .* needs .* GiB.*--subset"):
        load_dataset("imagefolder", tmp_path, "train")
    rc = main(["train", "--dataset", "imagefolder", "--data-dir", str(tmp_path), "--model", "vgg_small", "--mode",
               "ann", "--neuron", "relu", "--timesteps", "1", *QUICK, "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert rc == 1 and err.count("\n") == 1 and "needs" in err and "Traceback" not in err


def test_data_checks_name_the_mismatch():
    info = type("I", (), {"name": "imagefolder", "classes": ("a", "b", "c"), "num_classes": 3})()
    with pytest.raises(DataMismatchError, match=r"trained on 2 classes .* has 3 classes .*new \['c'\]"):
        check_data({"classes": ["a", "b"]}, info)
    with pytest.raises(DataMismatchError, match="another order"):
        check_data({"classes": ["b", "a", "c"]}, info)
    with pytest.raises(DataMismatchError, match=r"3x16x16 inputs but imagefolder gives 3x8x8.*size=16"):
        check_data({"input_shape": [3, 16, 16]}, info, torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(DataMismatchError, match="has outputs for 10 classes"):
        check_data({}, info, num_classes=10)
    check_data({"classes": ["a", "b", "c"], "input_shape": [3, 8, 8]}, info, torch.zeros(2, 3, 8, 8))
    # flags override the checkpoint; another dataset drops the checkpoint's root and reader options
    cfg = {"dataset": "imagefolder", "data_dir": "/x", "dataset_kwargs": {"size": 16}, "normalize": True}
    spec = data_spec(cfg, data_opts={"mode": "L"})
    assert (spec.dataset, spec.data_dir, spec.dataset_kwargs) == ("imagefolder", "/x", {"size": 16, "mode": "L"})
    spec = data_spec(cfg, dataset="cifar10")
    assert (spec.data_dir, spec.dataset_kwargs, spec.overridden) == (None, {}, ["dataset"])


# ---------------------------------------------------------------------------------------------- the pipeline
def test_readme_pipeline_on_an_imagefolder_tree(cifar, tmp_path, capsys):
    tree = tmp_path / "tree"
    _write_tree(tree, cifar, 80, 25, 16)
    runs = tmp_path / "runs"
    ann = runs / "qcfs_ann"
    # the only data flags of the whole pipeline: --dataset imagefolder --data-dir DIR on the first command
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tree), "--model", "vgg_small", "--neuron",
                 "qcfs", "--levels", "4", "--mode", "ann", "--opt", "adam", "--lr", "0.003", "--weight-decay", "0",
                 "--epochs", "3", "--batch-size", "32", "--no-augment", *QUICK, "--out", str(ann)]) == 0
    out = capsys.readouterr().out
    assert "data: imagefolder/train, 320 images" in out and "3x16x16, 4 classes" in out
    assert "QCFS clips ϑ from the data (99.9% of each layer" in out
    cfg = _json(ann / "config.json")
    assert cfg["data_info"]["classes"] == sorted(KEEP) and cfg["data_info"]["input_shape"] == [3, 16, 16]
    assert cfg["model_kwargs"]["input_size"] == [3, 16, 16]        # sized from the data, no --model-kwargs
    ann_acc = _json(ann / "summary.json")["final_acc"]
    assert ann_acc >= 0.35                                          # 4 classes: well above chance (0.25)

    # convert -> IF: reads the tree from the checkpoint, says so, and eval reproduces its curve
    if8 = runs / "if_T8"
    assert main(["convert", "--checkpoint", str(ann), "--to", "if", "--timesteps", "8", "--out", str(if8)]) == 0
    out = capsys.readouterr().out
    assert f"data: imagefolder/test, 100 images, root {tree}" in out and f"[from {ann}" in out
    res = _json(if8 / "conversion.json")
    assert res["ann"]["acc"] == ann_acc and res["samples"] == 100
    assert res["snn"]["acc"] >= ann_acc - 0.15                       # 8 steps >= 4 QCFS levels: close to the ANN
    ev = runs / "eval_if"
    assert main(["eval", "--checkpoint", str(if8), "--no-plots", "--no-progress", "--out", str(ev)]) == 0
    assert [a for _, a in _json(ev / "result.json")["accuracy_vs_T"]] == res["snn"]["acc_per_t"]

    # convert -> LM-HT with the exact bias scale: Theorem 4.4's identity, the SNN classifies as the ANN
    lmht = runs / "lmht_L2T2"
    assert main(["convert", "--checkpoint", str(ann), "--to", "lmht", "--levels", "2", "--timesteps", "2",
                 "--hybrid-bias-scale", "L", "--no-sanity", "--out", str(lmht)]) == 0
    assert _json(lmht / "conversion.json")["snn"]["acc"] == ann_acc

    # an identity T-GIM keeps the identity and is exportable; export measures on real test images of the tree
    lmht_id = runs / "lmht_id"
    assert main(["convert", "--checkpoint", str(ann), "--to", "lmht", "--levels", "2", "--timesteps", "2",
                 "--hybrid-bias-scale", "L", "--tgim", "identity", "--no-sanity", "--out", str(lmht_id)]) == 0
    # Identity mixing is not the averaging T-GIM of the exactness theorem: deeper layers see spikes that vary over
    # the two steps, so the SNN matches the ANN only approximately: how many of the 100 images flip depends on the
    # trained ANN, i.e. on the CPU's numerics (1-2 on an AMD EPYC, 7 on an Intel Xeon with AMX).
    assert abs(_json(lmht_id / "conversion.json")["snn"]["acc"] - ann_acc) <= 0.10
    capsys.readouterr()
    for net in (if8, lmht_id):
        nir = runs / f"{net.name}.nir"
        assert main(["export", "--checkpoint", str(net), "--samples", "40", "--out", str(nir)]) == 0
        out = capsys.readouterr().out
        assert "fidelity measured on 40 imagefolder test images" in out and "bit-identical" in out
        nir_acc, own_acc = [float(v) for v in
                            out.split("literal NIR semantics on 40 test samples: ")[1].split("%)")[0].split(
                                "% (the original network: ")]
        assert abs(nir_acc - own_acc) <= 2.5                   # at most one of 40 flips at float rounding

    # an ANN gets the step that makes it exportable; an --init-from fine-tune of a conversion exports
    rc = main(["export", "--checkpoint", str(ann), "--out", str(runs / "ann.nir")])
    assert rc == 2 and f"multispike convert --checkpoint {ann} --to lmht" in capsys.readouterr().err
    ft_if = runs / "ft_if"
    assert main(["train", "--mode", "snn", "--init-from", str(if8), "--epochs", "1", "--subset", "32", "--batch-size",
                 "32", "--eval-subset", "16", *QUICK, "--out", str(ft_if)]) == 0
    assert main(["export", "--checkpoint", str(ft_if), "--samples", "16", "--out", str(runs / "ft_if.nir")]) == 0
    assert "bit-identical" in capsys.readouterr().out

    # fine-tune from the conversion with no data flag: inherits the tree (not CIFAR-10) and a fine-tune lr
    ft = runs / "ft"
    assert main(["train", "--mode", "snn", "--init-from", str(lmht), "--freeze-bn", "--subset", "32", "--epochs", "1",
                 "--batch-size", "32", "--eval-subset", "40", *QUICK, "--out", str(ft)]) == 0
    out = capsys.readouterr().out
    ft_cfg = _json(ft / "config.json")
    assert ft_cfg["dataset"] == "imagefolder" and ft_cfg["data_dir"] == str(tree) and ft_cfg["lr"] == 0.01
    assert "fine-tune default" in out

    # reparameterise the LM-HT network: an IF network with L·T steps, same classification
    rp = runs / "lmht_as_if"
    assert main(["reparam", "--checkpoint", str(lmht), "--out", str(rp)]) == 0
    rep = _json(rp / "reparam.json")
    assert rep["lmht"]["acc"] == ann_acc and rep["agreement"]["argmax_agreement"] >= 0.95

    # QAT from the ANN (inherits the tree), mixed-timestep conversion = the quantized ANN, calibration against the
    # QAT network (never the QCFS ANN it started from)
    qat = runs / "qat"
    assert main(["qat", "--init-from", str(ann), "--epochs", "1", "--subset", "64", "--batch-size", "32",
                 "--no-augment", *QUICK, "--out", str(qat)]) == 0
    assert _json(qat / "config.json")["dataset"] == "imagefolder"
    mixed = runs / "mixed"
    assert main(["convert", "--checkpoint", str(qat), "--to", "mixed", "--out", str(mixed)]) == 0
    mres = _json(mixed / "conversion.json")
    assert mres["snn"]["acc"] == mres["ann"]["acc"] == _json(qat / "summary.json")["final_acc"]
    cal = runs / "cal"
    assert main(["calibrate", "--checkpoint", str(mixed), "--epochs", "1", "--calib-samples", "32",
                 "--limit", "40", "--out", str(cal)]) == 0
    cres = _json(cal / "calibration.json")
    assert Path(cres["teacher_checkpoint"]).is_relative_to(qat)
    assert cres["after"]["samples"] == 40

    # eval with a stratified --limit: all four classes even though test/ is sorted by class
    ev_ann = runs / "eval_ann"
    assert main(["eval", "--checkpoint", str(ann), "--limit", "8", "--no-plots", "--no-progress", "--out",
                 str(ev_ann)]) == 0
    assert _json(ev_ann / "result.json")["samples"] == 8
    out = capsys.readouterr().out
    assert "no spiking layer" in out and "delta" not in out and "SNN (DIET)" not in out     # a pure ANN

    # a mismatch is one clear line before any work
    rc = main(["eval", "--checkpoint", str(ann), "--data-opt", "size=8", "--no-plots", "--no-progress", "--out",
               str(runs / "bad")])
    err = capsys.readouterr().err
    assert rc == 2 and "trained on 3x16x16 inputs" in err and "size=16" in err and err.count("\n") == 1


# ---------------------------------------------------------------------------------------------- QCFS clips
def test_qcfs_clips_start_at_a_percentile_of_the_data(cifar):
    from multispike.models import create_model
    from multispike.quant.clip_init import init_qcfs_clips, parse_clip_init
    from multispike.quant.qcfs import QCFS

    torch.manual_seed(0)
    model = create_model("vgg_small", num_classes=10, neuron="qcfs", T=1, neuron_kwargs={"levels": 4})
    x = (cifar["train"].images[:64].float() / 255 - 0.45) / 0.25
    bn_before = {k: v.clone() for k, v in model.named_buffers()}
    rows = init_qcfs_clips(model, [x[:32], x[32:]], percentile=99.0)
    assert [r["before"] for r in rows] == [8.0] * 5 and all(0 < r["after"] < 8.0 for r in rows)
    assert all(torch.equal(v, bn_before[k]) for k, v in model.named_buffers())      # only the clips changed
    # the invariant: each layer's clip is its inputs' 99th percentile, measured with the earlier clips in place
    model.train()
    for (name, layer), row in zip([(n, m) for n, m in model.named_modules() if isinstance(m, QCFS)], rows):
        seen = []
        h = layer.register_forward_pre_hook(lambda mod, a, seen=seen: seen.append(a[0].flatten()))
        with torch.no_grad():
            model(x[:32]), model(x[32:])
        h.remove()
        v = torch.cat(seen)
        assert float(layer.threshold.detach()) == row["after"]
        assert (v > row["after"]).float().mean() <= 0.01 + 1e-6 and (v >= row["after"]).float().mean() >= 0.01
    assert parse_clip_init("none") is None and parse_clip_init("99.9%") == 99.9 and parse_clip_init("max") == 100
    with pytest.raises(ValueError, match="percentile"):
        parse_clip_init("120%")


def test_qcfs_clip_of_a_shared_activation_counts_every_call():
    """The measuring pass ends at the layer only when it runs once per forward; a module applied twice is measured
    on both of its inputs."""
    from torch import nn

    from multispike.quant.clip_init import init_qcfs_clips
    from multispike.quant.qcfs import QCFS

    class Twice(nn.Module):
        def __init__(self):
            super().__init__()
            self.act = QCFS(levels=4)
            self.head = nn.Linear(16, 2)

        def forward(self, x):
            return self.head(self.act(self.act(x) * 10.0 - 3.0))

    torch.manual_seed(0)
    x = 3.0 * torch.randn(64, 16)
    model = Twice()
    seen = []
    h = model.act.register_forward_pre_hook(lambda mod, a: seen.append(a[0].flatten()))
    with torch.no_grad():
        model(x[:32]), model(x[32:])
    h.remove()
    expected = float(torch.cat(seen).max())        # both calls of both batches, with the initial clip 8
    assert len(seen) == 4 and expected > float(x.max())   # the second call's inputs hold the maximum
    rows = init_qcfs_clips(model, [x[:32], x[32:]], percentile=100)
    assert len(rows) == 1 and rows[0]["after"] == expected == float(model.act.threshold.detach())


def test_convert_warns_when_the_quantized_ann_collapses_at_more_levels():
    """Issue 16's symptom: a QCFS ANN right at its trained levels but wrong at more levels gives an SNN whose
    accuracy falls with T; convert measures the ANN at the SNN's number of levels and says so."""
    from torch import nn

    from multispike.quant.qcfs import QCFS
    from multispike.cli.workflows.convert import _levels_check

    class Net(nn.Module):   # class 1 iff the 1-level code of x is 0: true at 1 level, a tie (class 0) at 8
        def __init__(self):
            super().__init__()
            self.act = QCFS(levels=1, threshold=1.0)

        def forward(self, x):
            q = self.act(x)
            return torch.cat([q, 1 - q], 1)

    x, y = torch.tensor([[0.45], [0.9]]), torch.tensor([1, 0])
    said = []
    check = _levels_check(Net(), [(x, y)], "if", 8, 2, {"acc": 1.0}, said.append)
    assert check["levels"] == 8 and check["trained_levels"] == [1] and check["acc"] == 0.5
    assert said == [check["warning"]] and "expect accuracy to fall as T grows" in said[0]
    assert _levels_check(Net(), [(x, y)], "lmht", 4, 2, {"acc": 1.0}, said.append)["levels"] == 8   # L·T
    assert _levels_check(Net(), [(x, y)], "if", 1, 2, {"acc": 1.0}, said.append) is None             # same levels
    fine = _levels_check(Net(), [(torch.tensor([[0.9], [0.1]]), torch.tensor([0, 1]))], "if", 8, 2, {"acc": 1.0},
                         said.append)
    assert fine["acc"] == 1.0 and fine["warning"] is None and len(said) == 2


def test_mlif_hybrid_initialisation_from_an_ann_on_images(cifar, tmp_path, capsys):
    """``train --neuron mlif --lanes S --init-from ANN``: the one-hot M-LIF hybrid initialisation (§5.6) on an image
    tree, data and a fine-tune lr inherited from the ANN; the run evaluates like its summary says."""
    tree = tmp_path / "tree"
    _write_tree(tree, cifar, 20, 10, 16)
    ann, snn = tmp_path / "relu", tmp_path / "mlif"
    assert main(["train", "--dataset", "imagefolder", "--data-dir", str(tree), "--model", "vgg_small", "--neuron",
                 "relu", "--timesteps", "1", "--mode", "ann", "--epochs", "2", "--batch-size", "16", "--opt", "adam",
                 "--lr", "0.003", "--weight-decay", "0", *QUICK, "--out",
                 str(ann)]) == 0
    assert main(["train", "--neuron", "mlif", "--lanes", "2", "--timesteps", "2", "--init-from", str(ann), "--epochs",
                 "1", "--batch-size", "16", *QUICK, "--out", str(snn)]) == 0
    out = capsys.readouterr().out
    assert "hybrid initialisation (multispike.train.hybrid:mlif_hybrid)" in out
    cfg = _json(snn / "config.json")
    assert (cfg["mode"], cfg["ann_checkpoint"], cfg["init_from"]) == ("hybrid", str(ann), None)
    assert (cfg["dataset"], cfg["data_dir"], cfg["lr"]) == ("imagefolder", str(tree), 0.01)
    ev = tmp_path / "ev"
    # eval rebuilds the hybrid structure on placeholder zeros: no calibration runs there, so no mlif_hybrid_init
    # fallback warning ("layer input never positive") may reach the user
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert main(["eval", "--checkpoint", str(snn), "--no-plots", "--no-progress", "--out", str(ev)]) == 0
    assert not [str(w.message) for w in caught if "mlif_hybrid_init" in str(w.message)]
    assert [a for _, a in _json(ev / "result.json")["accuracy_vs_T"]] == _json(snn / "summary.json")["final_acc_per_t"]
    # --neuron if cannot come from an ANN by --init-from: the error names the convert step
    rc = main(["train", "--neuron", "if", "--init-from", str(ann), *QUICK, "--out", str(tmp_path / "x")])
    err = capsys.readouterr().err
    assert rc == 2 and "multispike convert --checkpoint" in err


# ---------------------------------------------------------------------------------------------- plots
def test_plots_ann_reference_integer_ticks_and_energy_headroom(monkeypatch, tmp_path):
    from multispike.metrics import plots

    figs = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.append(fig) or str(path))
    plots.plot_accuracy_vs_T({"ANN": [(1, 0.9)], "IF": [(1, 0.2), (2, 0.5), (3, 0.8)]}, tmp_path / "a.png")
    ax = figs[-1].axes[0]
    labels = [l.get_label() for l in ax.lines]
    assert labels == ["ANN (reference)", "IF"]                      # the ANN is a horizontal reference line
    ref = ax.lines[0]
    assert list(ref.get_ydata()) == [90.0, 90.0]
    plots.plot_accuracy_vs_T({"ANN": [(1, 0.9)]}, tmp_path / "b.png")   # alone: one point, integer t ticks
    ticks = [t for t in figs[-1].axes[0].get_xticks()]
    assert all(float(t).is_integer() for t in ticks)
    energy = {"constants": {"name": "45nm"}, "diet": {"e_ann_uj": 2.0, "e_snn_uj": 1.0},
              "multispike": {"e_uj": 1.0, "layers": [{"name": "a", "e_mac_uj": 0.5, "e_ac_uj": 0.0, "e_add_uj": 0.1},
                                                     {"name": "b", "e_mac_uj": 0.0, "e_ac_uj": 2.0, "e_add_uj": 0.2}]}}
    plots.plot_energy_breakdown(energy, tmp_path / "e.png")
    assert figs[-1].axes[0].get_ylim()[1] == pytest.approx(1.3 * 2.2)   # the tallest stack is not under the legend
