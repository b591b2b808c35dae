"""``multispike export``: help, the demo network, checkpoints and errors."""
from __future__ import annotations

import json

import pytest
import torch

pytest.importorskip("nir", reason="NIR export needs the optional extra multispike[nir] (nir, nirtorch, h5py)")

from multispike.cli.main import main  # noqa: E402
from multispike.export import import_from_nir  # noqa: E402


def test_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["export", "--help"])
    assert exc.value.code == 0
    out = capsys.readouterr().out
    assert "--mode {exact,if,unrolled}" in out and "threshold ladder" in out


def test_demo_export_prints_the_fidelity_report(tmp_path, capsys):
    out_file = tmp_path / "digits.nir"
    report_file = tmp_path / "report.json"
    rc = main(["export", "--demo", "--demo-epochs", "1", "--timesteps", "2", "--samples", "48",
               "--out", str(out_file), "--report-json", str(report_file)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "converted to IF at T=2" in text
    assert "NIR export (mode='exact'" in text and "bit-identical" in text
    assert "accuracy of the exported graph under literal NIR semantics on 48 test samples" in text
    report = json.loads(report_file.read_text())
    assert report["mode"] == "exact" and report["exact"] is True and report["T"] == 2
    assert [layer["name"] for layer in report["layers"]] == ["act1", "act2", "act3"]
    net = import_from_nir(out_file)
    assert net(torch.zeros(3, 1, 8, 8)).shape == (3, 10)


def test_checkpoint_export(tmp_path, capsys):
    from multispike.models import create_model
    from multispike.train.checkpoint import save_checkpoint

    cfg = {"model": "resnet8_cifar", "neuron": "if", "timesteps": 2, "num_classes": 10,
           "neuron_kwargs": {"v_threshold": 0.5, "v_init": 0.25, "payload": "threshold"}}
    model = create_model("resnet8_cifar", num_classes=10, neuron="if", T=2, neuron_kwargs=cfg["neuron_kwargs"])
    save_checkpoint(tmp_path / "ckpt", model, None, {"config": cfg, "model": "resnet8_cifar"}, epoch=1, step=1)
    rc = main(["export", "--checkpoint", str(tmp_path / "ckpt"), "--mode", "if", "--samples", "2",
               "--out", str(tmp_path / "r8.nir")])
    assert rc == 0
    text = capsys.readouterr().out
    assert "checkpoint" in text and "mode='if'" in text and "approximate" in text


def test_errors_are_one_line(tmp_path, capsys):
    assert main(["export", "--out", str(tmp_path / "x.nir")]) == 2
    assert "give a network" in capsys.readouterr().err
    assert main(["export", "--model", "resnet8_cifar", "--neuron", "lmht", "--timesteps", "2", "--samples", "1",
                 "--out", str(tmp_path / "x.nir")]) == 2
    err = capsys.readouterr().err
    assert "unsupported construct" in err and "T-GIM" in err
