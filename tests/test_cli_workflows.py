"""Command-line workflows end to end on the embedded digits (and a few N-MNIST recordings):

convert to every target and reload the result through ``multispike eval`` (same accuracies at every prefix) and
through ``rebuild_model`` (bit-identical outputs); qat -> convert --mixed-timestep -> calibrate; LM-HT convert ->
fine-tune from the converted checkpoint -> reparam -> eval; events-train; bad inputs.
"""
import json
from pathlib import Path

import pytest
import torch

from multispike.cli.main import main
from multispike.data import dataset_status
from multispike.neurons.base import reset_net
from multispike.train import load_checkpoint
from multispike.convert.recipe import run_step
from multispike.train.rebuild import needs_rebuild, rebuild_model

QUICK = ["--no-progress", "--num-threads", "1"]
DIGITS = ["--dataset", "digits", "--model-kwargs", "input_size=8", "--batch-size", "32", "--no-augment",
          "--crop-padding", "0", "--opt", "adam", "--lr", "0.003", "--weight-decay", "0", "--eval-subset", "64", *QUICK]
LIMIT = ["--limit", "96"]


def _json(path: Path) -> dict:
    return json.loads(Path(path).read_text())


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Three tiny trained source networks: a QCFS ANN (4 levels), a ReLU ANN and a QAT model (QAC, t0 = 3)."""
    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    assert main(["train", "--model", "vgg_small", "--neuron", "qcfs", "--levels", "4", "--timesteps", "1", "--mode",
                 "ann", "--epochs", "1", *DIGITS, "--out", str(root / "qcfs")]) == 0
    assert main(["train", "--model", "vgg_small", "--neuron", "relu", "--timesteps", "1", "--mode", "ann",
                 "--subset", "256", "--epochs", "1", *DIGITS, "--out", str(root / "relu")]) == 0
    assert main(["qat", "--model", "vgg_small", "--t-init", "3", "--alpha-init", "4", "--subset", "512", "--epochs",
                 "1", *DIGITS, "--out", str(root / "qat")]) == 0
    return root


def _eval_curve(tmp: Path, ckpt_dir: Path) -> list[float]:
    out = tmp / (ckpt_dir.name + "_eval")
    assert main(["eval", "--checkpoint", str(ckpt_dir), *LIMIT, "--no-plots", "--no-progress", "--out", str(out)]) == 0
    return [a for _, a in _json(out / "result.json")["accuracy_vs_T"]]


def _same_outputs(source: Path, converted: Path) -> None:
    """The checkpoint rebuilt from its recipe computes exactly what a fresh conversion of the source computes."""
    ck = load_checkpoint(converted)
    assert needs_rebuild(ck.meta)
    rebuilt, _ = rebuild_model(ck)
    ann, _ = rebuild_model(source)
    fresh, _ = run_step(ann, ck.meta["conversion"]["steps"][0], data=None)
    fresh.load_state_dict(ck.model_state)   # data-derived values (thresholds) come from the saved state
    fresh.eval()
    x = torch.randn(5, 1, 8, 8)
    reset_net(fresh)
    reset_net(rebuilt)
    torch.testing.assert_close(rebuilt.forward_sequence(x), fresh.forward_sequence(x), atol=0, rtol=0)


@pytest.mark.parametrize("source,argv", [
    ("qcfs", ["--to", "if", "--timesteps", "4"]),
    ("relu", ["--to", "if", "--threshold", "99.9%", "--timesteps", "4", "--calib-batches", "2"]),
    ("qcfs", ["--to", "lmht", "--levels", "2", "--timesteps", "2", "--hybrid-bias-scale", "L"]),
    ("qat", ["--mixed-timestep", "--align", "aver+aver"]),
    ("qcfs", ["--to", "uniform", "--timesteps", "2", "--compare-align"]),
], ids=["qcfs-if", "relu-if-99.9", "lmht", "mixed", "uniform"])
def test_convert_round_trips_through_eval(runs, tmp_path, capsys, source, argv):
    out = tmp_path / "conv"
    assert main(["convert", "--checkpoint", str(runs / source), *argv, *LIMIT, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "saved" in printed and "accuracy" in printed
    res = _json(out / "conversion.json")
    assert (out / "report.txt").read_text().strip() in printed
    assert res["samples"] == 96 and 0.0 <= res["snn"]["acc"] <= 1.0
    assert _eval_curve(tmp_path, out) == res["snn"]["acc_per_t"]
    _same_outputs(runs / source, out)
    if res["to"] == "lmht":
        # hybrid bias scale L with QCFS levels = L·T: Theorem 4.4's identity, so the SNN classifies as the ANN
        assert res["snn"]["acc"] == res["ann"]["acc"]
        assert [r["T"] for r in res["sanity"]] == [2, 4]
    if res["to"] == "mixed":
        # aver+aver with integer T_l and v(0) = θ/2 reproduces the quantized ANN (§4.4 strong invariant)
        assert res["snn"]["acc"] == res["ann"]["acc"]
        assert [r["T"] for r in res["layers"]] == [3] * 5 and res["average_T"]["plain"] == 3.0
        assert "average T" in printed and "features.14" in printed
    if res["to"] == "uniform":
        assert [c["align"] for c in res["compare_align"]] == [None, "aver+aver"]
        assert "QCFS + aver+aver" in printed


def test_qat_logs_per_layer_timesteps_and_calibrate_chain(runs, tmp_path, capsys):
    log = [json.loads(x) for x in (runs / "qat" / "log.jsonl").read_text().splitlines()]
    assert log[0]["quantizers"]["features.0"] == {"timesteps": 3, "bit_width": pytest.approx(1.585, abs=1e-3)}
    cfg = _json(runs / "qat" / "config.json")
    assert cfg["mode"] == "qat" and cfg["neuron"] == "relu" and cfg["prepare_qat"]["param"] == "t_alpha"
    mixed = tmp_path / "mixed"
    assert main(["convert", "--checkpoint", str(runs / "qat"), "--to", "mixed", *LIMIT, "--out", str(mixed)]) == 0
    capsys.readouterr()
    cal = tmp_path / "cal"
    assert main(["calibrate", "--checkpoint", str(mixed), "--epochs", "1", "--lr", "1e-3", "--calib-samples", "64",
                 "--v-init-shape", "channel", *LIMIT, "--out", str(cal)]) == 0
    printed = capsys.readouterr().out
    res = _json(cal / "calibration.json")
    rep = res["report"]
    assert rep["epochs"] == 1 and rep["target"] == "quantized" and len(rep["epoch_losses"]) == 1
    # never worse than the conversion: a calibration that raises the loss keeps the converted v(0) and θ
    assert rep["loss_after"] <= rep["loss_before"]
    if rep["reverted"]:
        assert rep["loss_after"] == rep["loss_before"] and "converted v(0) and θ were kept" in printed
    assert res["teacher_checkpoint"].startswith(str(runs / "qat"))
    assert [l["T"] for l in res["layers"]] == [3] * 5 and res["average_T"]["plain"] == 3.0
    assert "loss (" in printed and "->" in printed and "average T = 3" in printed
    assert _eval_curve(tmp_path, cal) == res["after"]["acc_per_t"]
    # plain uniform QCFS at T = 2 < 4 levels leaves a gap; a calibrated (or kept) network round-trips too
    uni = tmp_path / "uni"
    assert main(["convert", "--checkpoint", str(runs / "qcfs"), "--to", "uniform", "--timesteps", "2", *LIMIT,
                 "--out", str(uni)]) == 0
    cal2 = tmp_path / "cal2"
    assert main(["calibrate", "--checkpoint", str(uni), "--epochs", "2", "--lr", "1e-2", "--calib-samples", "64",
                 "--target", "float", "--v-init-shape", "channel", *LIMIT, "--out", str(cal2)]) == 0
    rep2 = _json(cal2 / "calibration.json")["report"]
    assert rep2["target"] == "float" and rep2["loss_before"] > 1e-3 and rep2["loss_after"] <= rep2["loss_before"]
    if not rep2["reverted"]:
        assert [l["v_init_shape"][0] for l in rep2["layers"]] == [32, 32, 64, 64, 128]   # one v(0) per channel
    assert _eval_curve(tmp_path, cal2) == _json(cal2 / "calibration.json")["after"]["acc_per_t"]


def test_lmht_direct_convert_finetune_reparam_eval(runs, tmp_path, capsys):
    direct = tmp_path / "direct"
    assert main(["train", "--model", "vgg_small", "--neuron", "lmht", "--levels", "2", "--timesteps", "2",
                 "--subset", "64", "--epochs", "1", *DIGITS, "--out", str(direct)]) == 0
    assert len(_json(direct / "summary.json")["final_acc_per_t"]) == 2
    conv = tmp_path / "lmht"
    assert main(["convert", "--checkpoint", str(runs / "qcfs"), "--to", "lmht", "--timesteps", "2", "--no-sanity",
                 *LIMIT, "--out", str(conv)]) == 0
    ft = tmp_path / "ft"
    assert main(["train", "--mode", "snn", "--init-from", str(conv), "--freeze-bn", "--subset", "64", "--epochs", "1",
                 "--dataset", "digits", "--batch-size", "32", "--no-augment", "--crop-padding", "0", "--opt", "sgd",
                 "--lr", "5e-4", "--eval-subset", "64", *QUICK, "--out", str(ft)]) == 0
    cfg = _json(ft / "config.json")
    assert cfg["timesteps"] == 2 and cfg["model"] == "vgg_small" and cfg["init_from"] == str(conv)
    # --freeze-bn: BN running statistics stay those of the ANN (they are not re-estimated from spike trains)
    before, after = load_checkpoint(conv).model_state, load_checkpoint(ft).model_state
    bn = [k for k in before if k.endswith("running_mean")]
    assert bn and all(torch.equal(before[k], after[k]) for k in bn)
    assert not torch.equal(before["classifier.1.0.weight"], after["classifier.1.0.weight"])
    # the run's checkpoint rebuilds through --init-from: eval reproduces the trainer's own final evaluation
    out64 = tmp_path / "ft_eval64"
    assert main(["eval", "--checkpoint", str(ft), "--limit", "64", "--no-plots", "--no-progress", "--out",
                 str(out64)]) == 0
    assert [a for _, a in _json(out64 / "result.json")["accuracy_vs_T"]] == \
        _json(ft / "summary.json")["final_acc_per_t"]
    capsys.readouterr()
    rp = tmp_path / "rp"
    assert main(["reparam", "--checkpoint", str(ft), *LIMIT, "--out", str(rp)]) == 0
    printed = capsys.readouterr().out
    res = _json(rp / "reparam.json")
    assert res["reparameterization"]["steps"] == 4 and len(res["agreement"]["layers"]) == 5
    assert res["agreement"]["argmax_agreement"] >= 0.95 and res["agreement"]["samples"] == 96
    assert "count agreement" in printed and "reparameterised IF" in printed
    assert len(res["if"]["acc_per_t"]) == 4
    assert _eval_curve(tmp_path, rp) == res["if"]["acc_per_t"]
    # the fine-tuned run itself (structure from --init-from) evaluates like its training summary says
    ft_curve = _eval_curve(tmp_path, ft)
    assert ft_curve == res["lmht"]["acc_per_t"]


def test_lmht_fine_tuning_starts_from_the_exact_conversion_by_default(runs, tmp_path):
    """`convert --to lmht` and `train --neuron lmht --init-from <QCFS ANN>` both start from the ×L (exact)
    conversion: with L·T = the ANN's 4 levels the converted net has the ANN's accuracy, and a run at lr 0 (BN frozen
    by default for a converted start) evaluates exactly so."""
    conv = tmp_path / "lmht"
    assert main(["convert", "--checkpoint", str(runs / "qcfs"), "--to", "lmht", "--levels", "2", "--timesteps", "2",
                 "--no-sanity", *LIMIT, "--out", str(conv)]) == 0
    res = _json(conv / "conversion.json")
    assert res["step"]["args"]["hybrid_bias_scale"] == "exact" and res["snn"]["acc"] == res["ann"]["acc"]
    ft = tmp_path / "ft0"
    assert main(["train", "--mode", "snn", "--neuron", "lmht", "--levels", "2", "--timesteps", "2", "--init-from",
                 str(runs / "qcfs"), "--subset", "64", "--epochs", "1", "--dataset", "digits", "--batch-size", "32",
                 "--no-augment", "--crop-padding", "0", "--opt", "sgd", "--lr", "0", "--sched", "constant",
                 "--eval-subset", "96", *QUICK, "--out", str(ft)]) == 0
    cfg = _json(ft / "config.json")
    assert cfg["freeze_bn"] is True and cfg["timesteps"] == 2
    assert _json(ft / "summary.json")["final_acc"] == pytest.approx(res["ann"]["acc"], abs=1e-12)   # same 96 images
    model, _ = rebuild_model(ft)
    assert [m.in_scale for m in model.modules() if hasattr(m, "in_scale")][:2] == [2.0, 1.0]


def test_eval_rebuilds_a_hybrid_run_with_its_first_layer_scale(runs, tmp_path):
    """A hybrid LM-HT run's network is the converted QCFS ANN (first-layer in_scale = L, the ANN's model_kwargs),
    not create_model(neuron='lmht'): eval must reproduce the trainer's own final evaluation."""
    hy = tmp_path / "hy"
    assert main(["train", "--mode", "hybrid", "--ann-checkpoint", str(runs / "qcfs"), "--convert-hook",
                 "multispike.train.hybrid:lmht_hybrid", "--neuron", "lmht", "--levels", "2", "--timesteps", "2",
                 "--subset", "64", "--epochs", "1", "--dataset", "digits", "--batch-size", "32", "--no-augment",
                 "--crop-padding", "0", "--eval-subset", "64", *QUICK, "--out", str(hy)]) == 0
    model, _ = rebuild_model(hy)
    assert [m.in_scale for m in model.modules() if hasattr(m, "in_scale")][:2] == [2.0, 1.0]
    out = tmp_path / "hy_eval"
    assert main(["eval", "--checkpoint", str(hy), "--limit", "64", "--no-plots", "--no-progress", "--out",
                 str(out)]) == 0
    assert [a for _, a in _json(out / "result.json")["accuracy_vs_T"]] == _json(hy / "summary.json")["final_acc_per_t"]


def test_events_train_on_a_few_nmnist_recordings(tmp_path, capsys):
    row = next(r for r in dataset_status() if r.name == "nmnist")
    if not row.found:
        pytest.skip(f"N-MNIST-small not found ({row.fix})")
    out = tmp_path / "ev"
    assert main(["events-train", "--lanes", "1", "2", "3", "--frame-budget", "8", "--train-samples", "20",
                 "--test-samples", "10", "--epochs", "1", "--batch-size", "10", "--no-progress", "--out",
                 str(out)]) == 0
    printed = capsys.readouterr().out
    res = _json(out / "results.json")
    assert [(r["S"], r["G"], r["Q_F"]) for r in res["rows"]] == [(1, 1, 8), (2, 2, 4), (3, 4, 2)]
    assert all(len(r["acc_per_t"]) == r["Q_F"] for r in res["rows"])
    assert res["loss"] == "tet" and res["train_data"]["num_samples"] == 20 and res["test_data"]["num_samples"] == 10
    cfg = _json(out / "S3" / "config.json")
    assert cfg["neuron"] == "mlif" and cfg["lanes"] == 3 and cfg["timesteps"] == 2 and cfg["loss"] == "tet"
    assert "Q_F steps" in printed


@pytest.mark.parametrize("command", ["convert", "qat", "calibrate", "reparam", "events-train"])
def test_help(command, capsys):
    with pytest.raises(SystemExit) as exc:
        main([command, "--help"])
    assert exc.value.code == 0
    assert "example" in capsys.readouterr().out


@pytest.mark.parametrize("command", ["train", "qat"])
def test_help_names_other_settings_by_their_flags(command, capsys):
    """A setting's help that refers to another one ({field} in TrainConfig) shows that setting's flag."""
    import re

    with pytest.raises(SystemExit):
        main([command, "--help"])
    out = "".join(capsys.readouterr().out.split())   # argparse wraps lines, also inside a flag's name
    assert not re.search(r"\{[a-z_]+\}", out)
    assert "task+--distill-weight" in out and "fixed(at--timestep-freeze-fraction)" in out


def test_bad_inputs(runs, tmp_path, capsys):
    def err(argv: list[str]) -> str:
        assert main(argv) == 2, argv
        return capsys.readouterr().err

    out = ["--out", str(tmp_path / "x")]
    with pytest.raises(SystemExit):
        main(["convert", "--checkpoint", str(runs / "qcfs"), "--to", "snn", *out])
    assert "invalid choice: 'snn'" in capsys.readouterr().err
    assert "--timesteps must be >= 1, got 0" in err(["convert", "--checkpoint", str(runs / "qcfs"), "--to", "if",
                                                     "--timesteps", "0", *out])
    assert "--t-init must be >= 1" in err(["qat", "--model", "vgg_small", "--t-init", "0.5", *DIGITS, *out])
    assert "'aver+zero'" in err(["convert", "--checkpoint", str(runs / "qat"), "--to", "mixed", "--align",
                                 "aver+zero", *out])
    assert "no spiking layers" in err(["calibrate", "--checkpoint", str(runs / "qcfs"), *out])
    assert "learned T_l" in err(["convert", "--checkpoint", str(runs / "qat"), "--to", "mixed", "--timesteps", "2",
                                 *out])
    assert "use --to mixed" in err(["convert", "--checkpoint", str(runs / "qat"), "--to", "lmht", "--timesteps", "2",
                                    *out])
    assert "needs --timesteps" in err(["convert", "--checkpoint", str(runs / "qcfs"), "--to", "uniform", *out])
    assert "--threshold 'max' applies to --to if only" in err(["convert", "--checkpoint", str(runs / "qcfs"), "--to",
                                                               "lmht", "--timesteps", "2", "--threshold", "max", *out])
    assert "S_i=3" in err(["events-train", "--lanes", "3", "--frame-budget", "2", *out])
    assert "'vgg_small'" in err(["train", "--mode", "snn", "--init-from", str(runs / "qcfs"), "--model",
                                 "resnet8_cifar", *DIGITS, *out])


def test_qat_alpha_from_the_data_by_default(tmp_path, capsys):
    """`multispike qat` without --alpha-init starts each α from the data (one printed line, α != 8 in the
    checkpoint's first epoch); the recorded prepare_qat has no alpha, so rebuild_model reloads the trained α."""
    out = tmp_path / "qat"
    assert main(["qat", "--model", "vgg_small", "--t-init", "3", "--subset", "64", "--epochs", "1", *DIGITS,
                 "--out", str(out)]) == 0
    said = capsys.readouterr().out
    assert said.count("QAC clips α from the data (99.9% of each layer's pre-activations") == 1
    cfg = _json(out / "config.json")
    assert "alpha" not in cfg["prepare_qat"] and cfg["clip_init"] == "99.9%"
    model, _ = rebuild_model(load_checkpoint(out))
    from multispike.quant.qac import QACQuantizer

    alphas = [m.alpha for m in model.modules() if isinstance(m, QACQuantizer)]
    assert alphas and all(abs(a - 8.0) > 1.0 for a in alphas)
