"""``init_weights``: a warm start that fills the network built from the config with another checkpoint's weights
(a float ANN into its QCFS twin), keeping the neuron parameters the checkpoint lacks at their initialisation."""
import pytest
import torch

from multispike.cli.main import main
from multispike.quant.qcfs import QCFS
from multispike.train import load_checkpoint
from multispike.train.config import ConfigError, TrainConfig
from multispike.train.rebuild import rebuild_model

from conftest import DIGITS_ARGS as DIGITS


def test_qcfs_twin_starts_from_the_ann_weights_with_clips_from_the_data(digits_relu_run, tmp_path, capsys):
    out = tmp_path / "qcfs"
    # one step at lr 0: every trained tensor must still be the ANN's (BN running statistics do move)
    assert main(["train", "--neuron", "qcfs", "--levels", "4", "--init-weights", str(digits_relu_run),
                 "--max-steps", "1", "--epochs", "1", "--opt", "sgd", "--lr", "0", "--sched", "constant",
                 "--momentum", "0", "--weight-decay", "0",
                 "--neuron-lr", "0", *DIGITS, "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "kept the initial" in printed and "QCFS clips" in printed
    ann = load_checkpoint(digits_relu_run).model_state
    twin = load_checkpoint(out)
    for key, value in ann.items():
        if "running_" in key or "num_batches_tracked" in key:
            continue
        assert torch.equal(twin.model_state[key], value), key
    clips = {k: v for k, v in twin.model_state.items() if k not in ann}
    assert clips and all(k.endswith("threshold") for k in clips)
    # the clips come from the data percentile, not the constructor's default 8
    assert all(0 < float(v) != 8.0 for v in clips.values())
    model, _ = rebuild_model(twin)
    assert sum(isinstance(m, QCFS) for m in model.modules()) == len(clips)
    assert twin.meta["config"]["init_weights"] == str(digits_relu_run)


def test_a_checkpoint_of_another_network_is_refused_with_the_missing_tensors(digits_relu_run, tmp_path, capsys):
    code = main(["train", "--neuron", "qcfs", "--levels", "4", "--init-weights", str(digits_relu_run), "--epochs", "1",
                 *[a for a in DIGITS if a not in ("--model-kwargs", "input_size=8")], "--model", "digits_cnn",
                 "--out", str(tmp_path / "bad")])
    err = capsys.readouterr().err
    assert code != 0
    assert "init_weights" in err and str(digits_relu_run) in err


def test_init_weights_conflicts_with_init_from_and_needs_a_model():
    with pytest.raises(ConfigError, match="init_weights"):
        TrainConfig(model="vgg_small", init_weights="a", init_from="b").validate()
    with pytest.raises(ConfigError, match="init_weights"):
        TrainConfig(model=None, mode="hybrid", init_weights="a", ann_checkpoint="b").validate()


def test_qac_twin_keeps_its_quantizer_parameters_and_takes_every_ann_tensor(digits_relu_run, tmp_path):
    out = tmp_path / "qac"
    assert main(["train", *[a if a != "ann" else "qat" for a in DIGITS], "--neuron", "qac", "--neuron-kwargs",
                 "param=t_alpha", "alpha=2.0", "t=2.0", "--init-weights", str(digits_relu_run), "--max-steps", "1",
                 "--epochs", "1", "--opt", "sgd", "--lr", "0", "--sched", "constant", "--momentum", "0",
                 "--weight-decay", "0", "--neuron-lr", "0", "--quant-lr", "0", "--out", str(out)]) == 0
    ann = load_checkpoint(digits_relu_run).model_state
    twin = load_checkpoint(out).model_state
    for key, value in ann.items():
        if "running_" not in key and "num_batches_tracked" not in key:
            assert torch.equal(twin[key], value), key
    extra = {k: float(v) for k, v in twin.items() if k not in ann}
    assert extra and {k.rsplit(".", 1)[-1] for k in extra} == {"t", "clip", "fixed_T"}
    assert all(v == 2.0 for k, v in extra.items() if not k.endswith("fixed_T"))    # t0 = 2, α0 = 2 as configured
    assert all(v == 0 for k, v in extra.items() if k.endswith("fixed_T"))          # T_l still learnable


def test_qac_twin_without_alpha_takes_its_clips_from_the_trained_ann(digits_relu_run, tmp_path, capsys):
    out = tmp_path / "qac_data"
    assert main(["train", *[a if a != "ann" else "qat" for a in DIGITS], "--neuron", "qac", "--neuron-kwargs",
                 "param=t_alpha", "t=2.0", "--init-weights", str(digits_relu_run), "--max-steps", "1", "--epochs", "1",
                 "--opt", "sgd", "--lr", "0", "--sched", "constant", "--momentum", "0", "--weight-decay", "0",
                 "--neuron-lr", "0", "--quant-lr", "0", "--out", str(out)]) == 0
    assert "QAC clips α from the data" in capsys.readouterr().out
    twin = load_checkpoint(out).model_state
    clips = [float(v) for k, v in twin.items() if k.endswith(".clip")]
    ts = [float(v) for k, v in twin.items() if k.endswith(".t")]
    assert clips and len(set(clips)) > 1 and all(0 < c != 8.0 for c in clips)   # per layer, from the data
    assert ts and all(t == 2.0 for t in ts)
