"""YAML + CLI configuration: precedence, type checks, unknown keys with suggestions, saved resolved config."""
import argparse
import json
from pathlib import Path

import pytest
import yaml

from multispike.cli.main import build_parser, main
from multispike.train import ConfigError, TrainConfig, add_config_arguments, config_conflicts, config_from_args, \
    load_yaml_config, resolve_config, save_config

REPO = Path(__file__).resolve().parents[1]


def _parse(argv):
    p = argparse.ArgumentParser()
    add_config_arguments(p)
    return config_from_args(p.parse_args(argv))


def test_unknown_key_names_it_and_suggests_the_closest(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("model: vgg_small\nlearning_rate: 0.1\n")
    with pytest.raises(ConfigError, match=r"unknown config key 'learning_rate'.*did you mean 'lr'\?") as exc:
        load_yaml_config(f)
    assert str(f) in str(exc.value)
    f.write_text("model: vgg_small\nweight_decy: 0.1\n")
    with pytest.raises(ConfigError, match="did you mean 'weight_decay'"):
        load_yaml_config(f)
    f.write_text("zzzzqqq: 1\n")
    with pytest.raises(ConfigError, match="valid keys: .*batch_size"):
        load_yaml_config(f)
    with pytest.raises(ConfigError, match="did you mean 'timesteps'"):
        resolve_config(overrides={"timestep": 4, "model": "m"})


def test_yaml_sets_defaults_and_explicit_flags_override(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text(yaml.safe_dump({"model": "vgg_small", "lr": 0.05, "epochs": 3, "nesterov": True,
                                 "neuron_kwargs": {"tau": 2.0, "detach_reset": True}, "milestones": [2, 3],
                                 "weight-decay": 1e-3}))
    cfg = _parse(["--config", str(f), "--epochs", "5", "--no-nesterov", "--neuron-kwargs", "tau=4", "surrogate=atan",
                  "--levels", "2"])
    assert cfg.lr == 0.05 and cfg.epochs == 5 and cfg.nesterov is False and cfg.weight_decay == 1e-3
    assert cfg.milestones == [2.0, 3.0]
    # KEY=VALUE flags refine the YAML mapping; values are parsed as YAML scalars
    assert cfg.neuron_kwargs == {"tau": 4, "detach_reset": True, "surrogate": "atan"}
    assert cfg.neuron_arguments() == {"tau": 4, "detach_reset": True, "surrogate": "atan", "levels": 2}
    # untouched keys keep the dataclass defaults
    assert cfg.batch_size == TrainConfig().batch_size
    bare = _parse(["--model", "m", "--resume"])
    assert bare.resume == "auto"
    assert _parse(["--model", "m", "--clip-grad", "none"]).clip_grad is None


def test_type_and_range_errors_are_clear(tmp_path):
    f = tmp_path / "x.yaml"
    f.write_text("model: m\nepochs: ten\n")
    with pytest.raises(ConfigError, match=r"epochs must be an integer, got 'ten'"):
        load_yaml_config(f)
    f.write_text("model: m\nnesterov: 1\n")
    with pytest.raises(ConfigError, match="nesterov must be true or false"):
        load_yaml_config(f)
    f.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="flat mapping"):
        load_yaml_config(f)
    f.write_text("model: m\nlr: 1e-3\n")           # PyYAML reads '1e-3' as a string: still accepted as a float
    assert load_yaml_config(f)["lr"] == 1e-3
    with pytest.raises(ConfigError, match="mode='bptt' is not allowed; choose one of ann, qat, snn, hybrid"):
        resolve_config(overrides={"model": "m", "mode": "bptt"})
    with pytest.raises(ConfigError, match="label_smoothing must be in"):
        resolve_config(overrides={"model": "m", "label_smoothing": 1.0})
    with pytest.raises(ConfigError, match="needs per-step outputs"):
        resolve_config(overrides={"model": "m", "mode": "ann", "loss": "tet"})
    with pytest.raises(ConfigError, match="needs ann_checkpoint"):
        resolve_config(overrides={"mode": "hybrid"})
    with pytest.raises(ConfigError, match="no model given"):
        resolve_config()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_yaml_config(tmp_path / "missing.yaml")


def test_loss_defaults_follow_the_mode():
    assert resolve_config(overrides={"model": "m", "mode": "ann"}).resolved_loss() == "ce"
    assert resolve_config(overrides={"model": "m", "mode": "qat"}).resolved_loss() == "ce"
    assert resolve_config(overrides={"model": "m"}).resolved_loss() == "ce_mean"


def test_resolved_config_is_saved_as_json_and_yaml(tmp_path):
    cfg = resolve_config(overrides={"model": "vgg_small", "neuron_kwargs": {"tau": 2.0}, "epochs": 2})
    save_config(cfg, tmp_path / "run", extra={"world_size": 1})
    j = json.loads((tmp_path / "run" / "config.json").read_text())
    y = yaml.safe_load((tmp_path / "run" / "args.yaml").read_text())
    assert j == y
    assert j["model"] == "vgg_small" and j["epochs"] == 2 and j["neuron_kwargs"] == {"tau": 2.0}
    assert j["world_size"] == 1
    # the saved file is itself a valid config (minus the extras)
    y.pop("world_size")
    f = tmp_path / "again.yaml"
    f.write_text(yaml.safe_dump(y))
    assert resolve_config(f) == cfg


def test_config_conflicts_lists_the_keys():
    saved = resolve_config(overrides={"model": "a", "timesteps": 4, "dataset": "cifar10"}).to_dict()
    now = resolve_config(overrides={"model": "b", "timesteps": 2, "dataset": "cifar10", "epochs": 9})
    lines = config_conflicts(saved, now)
    assert [line.split(":")[0] for line in lines] == ["model", "timesteps"]


def test_cli_help_documents_every_config_key(capsys):
    parser = build_parser()
    with pytest.raises(SystemExit):
        parser.parse_args(["train", "--help"])
    text = capsys.readouterr().out
    for name, f in TrainConfig.__dataclass_fields__.items():
        if f.metadata.get("cli", True):   # data_info is recorded by the run, not set by a flag
            assert "--" + name.replace("_", "-") in text, name


def test_cli_print_config_and_bad_key_exit_code(tmp_path, capsys):
    f = tmp_path / "x.yaml"
    f.write_text("model: vgg_small\nepochs: 3\n")
    assert main(["train", "--config", str(f), "--lr", "0.5", "--print-config"]) == 0
    cfg = json.loads(capsys.readouterr().out)
    assert cfg["lr"] == 0.5 and cfg["epochs"] == 3
    f.write_text("model: vgg_small\nepoch: 3\n")
    assert main(["train", "--config", str(f)]) == 2
    assert "unknown config key 'epoch'" in capsys.readouterr().err


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.yaml")), ids=lambda p: str(p.relative_to(REPO)))
def test_every_shipped_recipe_is_a_valid_config(path):
    cfg = resolve_config(path)
    assert cfg.model or cfg.mode == "hybrid"
