"""evaluate / write_report / compare_reports and the `multispike eval` command."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

import multispike as ms
from multispike.cli.main import main
from multispike.layers import MeanOverTime, SeqToANNContainer
from multispike.metrics import EvalResult, compare_reports, evaluate, load_result, write_report

PNG = b"\x89PNG\r\n\x1a\n"


def small_snn(T_enc: int | None = None) -> nn.Module:
    torch.manual_seed(0)
    layers = [ms.DirectEncoder(T_enc)] if T_enc else []
    layers += [SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1)), ms.IFNeuron(v_threshold=0.5, step_mode="m"),
               SeqToANNContainer(nn.AvgPool2d(2), nn.Flatten(), nn.Linear(16, 3)), MeanOverTime()]
    return nn.Sequential(*layers)


def static_data(n_batches: int = 2, B: int = 4) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(1)
    return [(torch.rand(B, 1, 4, 4, generator=g), torch.randint(0, 3, (B,), generator=g)) for _ in range(n_batches)]


def test_accuracy_at_every_timestep_prefix():
    # Per-step logits [T=3, B=4, 3]; the prediction after t steps is argmax of their sum.
    L = torch.tensor([[[0, 1, 0], [0, 2, 0], [0, 0, 1], [0, 0, 1]],
                      [[3, 0, 0], [0, 0, 5], [0, 0, 1], [0, 0, 0.5]],
                      [[1, 0, 0], [0, 1, 0], [0, 0, 1], [5, 0, 0]]], dtype=torch.float32)
    y = torch.tensor([0, 1, 2, 0])
    # cumulative predictions: t1 [1,1,2,2] -> 2/4; t2 [0,2,2,2] -> 2/4; t3 [0,2,2,0] -> 3/4
    model = nn.Sequential(SeqToANNContainer(nn.Identity()), MeanOverTime())
    res = evaluate(model, [(L, y)], input_mode="time_major", count_ops=False)
    assert res.accuracy_vs_T == [(1, 0.5), (2, 0.5), (3, 0.75)]
    assert res.accuracy == 0.75 and res.samples == 4 and res.meta["per_step_outputs"]


def test_model_without_per_step_outputs_reports_final_only():
    class MeanModel(nn.Module):
        def forward(self, x):
            return x.mean(0)

    L = torch.eye(3).unsqueeze(0).repeat(2, 1, 1)
    res = evaluate(MeanModel(), [(L, torch.arange(3))], T_max=2, input_mode="time_major", count_ops=False)
    assert res.accuracy_vs_T == [(2, 1.0)] and not res.meta["per_step_outputs"]


def test_evaluate_snn_collects_spikes_ops_energy_and_restores_state():
    net = small_snn()
    net.train()
    res = evaluate(net, static_data(), T_max=3, name="tiny", membrane=True)
    assert net.training  # restored
    assert res.meta["input_mode"] == "repeat" and res.T == 3 and len(res.accuracy_vs_T) == 3
    assert res.layer_timesteps == {"1": 3}
    assert res.spikes["layers"][0]["membrane"] is not None
    assert res.ops["layers"][0]["analog"] == 3 * 16 * 4 * 9  # direct encoding: MACs · T
    assert res.energy["diet"]["delta"] > 0 and "memory" in res.energy
    json.dumps(res.to_dict(), allow_nan=False)


def test_evaluate_sets_and_restores_model_timesteps():
    net = small_snn(T_enc=2)
    res = evaluate(net, static_data(1), T_max=5)
    assert res.meta["input_mode"] == "model" and len(res.accuracy_vs_T) == 5
    assert net[0].T == 2


def test_empty_evaluation_set_is_an_error():
    with pytest.raises(ValueError, match="evaluation set is empty") as err:
        evaluate(small_snn(), [], T_max=2)
    assert err.value.params == ("max_batches",)      # names a parameter evaluate has
    with pytest.raises(ValueError, match="input_mode"):
        evaluate(small_snn(), static_data(), T_max=2, input_mode="sideways")
    with pytest.raises(ValueError, match="T_max"):
        evaluate(small_snn(), static_data(), T_max=0)
    with pytest.raises(ValueError, match="needs T_max"):
        evaluate(small_snn(), static_data(), input_mode="repeat")
    with pytest.raises(ValueError, match="inputs, targets"):
        evaluate(small_snn(), [torch.rand(2, 1, 4, 4)], T_max=2)


def test_write_report_and_plots(tmp_path):
    res = evaluate(small_snn(), static_data(), T_max=2, name="tiny")
    paths = write_report(res, tmp_path / "run")
    for key in ("accuracy_plot", "rates_plot", "timesteps_plot", "energy_plot"):
        data = open(paths[key], "rb").read()
        assert data.startswith(PNG) and len(data) > 2000
    md = (tmp_path / "run" / "report.md").read_text()
    for heading in ("## Accuracy vs timesteps", "## Per-layer spike statistics", "## Operations per sample",
                    "## Energy per sample", "ours, not the paper's", "![energy](energy.png)"):
        assert heading in md
    back = load_result(tmp_path / "run")
    assert back.to_dict() == json.loads(json.dumps(res.to_dict()))
    only_json = write_report(res, tmp_path / "nopng", plots_enabled=False)
    assert set(only_json) == {"json", "markdown"}


def test_compare_reports(tmp_path):
    a = evaluate(small_snn(), static_data(), T_max=2, name="run")
    b = evaluate(small_snn(), static_data(), T_max=4, name="run")
    write_report(a, tmp_path / "a", plots_enabled=False)
    paths = compare_reports([tmp_path / "a" / "result.json", b.to_dict()], tmp_path / "cmp")
    assert open(paths["accuracy_plot"], "rb").read().startswith(PNG)
    assert open(paths["energy_plot"], "rb").read().startswith(PNG)
    rows = json.loads((tmp_path / "cmp" / "comparison.json").read_text())["runs"]
    assert [r["name"] for r in rows] == ["run", "run (2)"] and [r["T"] for r in rows] == [2, 4]
    md = (tmp_path / "cmp" / "comparison.md").read_text()
    assert "| 4 | - | " in md  # run a has no t = 4
    with pytest.raises(ValueError, match="no runs"):
        compare_reports([], tmp_path / "none")
    with pytest.raises(FileNotFoundError, match="no evaluation result"):
        load_result(tmp_path / "missing")
    with pytest.raises(ValueError, match="not a multispike evaluation result"):
        EvalResult.from_dict({"x": 1})


# --------------------------------------------------------------------------------------------- CLI
def test_cli_eval_help(capsys):
    with pytest.raises(SystemExit) as exc:
        main(["eval", "--help"])
    assert exc.value.code == 0
    assert "--compare" in capsys.readouterr().out


def test_cli_eval_bad_input(tmp_path, capsys):
    assert main(["eval", "--out", str(tmp_path)]) == 2
    assert "nothing to do" in capsys.readouterr().err
    assert main(["eval", "--model", "vgg_small", "--checkpoint", "x", "--out", str(tmp_path)]) == 2
    assert main(["eval", "--weights", "w.safetensors", "--out", str(tmp_path)]) == 2
    assert main(["eval", "--model", "resnet8_cifar", "--limit", "0", "--out", str(tmp_path)]) == 2
    assert "--limit must be >= 1" in capsys.readouterr().err


def _zoo():
    from multispike import models

    assert "resnet8_cifar" in models.list_models(), "resnet8_cifar is not registered in the zoo (renamed?)"
    return models


def test_cli_eval_model_weights_and_compare(tmp_path, capsys):
    models = _zoo()
    from safetensors.torch import save_file
    net = models.create_model("resnet8_cifar", num_classes=10, neuron="if", T=2, in_channels=1)
    save_file({k: v.contiguous() for k, v in net.state_dict().items()}, str(tmp_path / "w.safetensors"))
    common = ["--dataset", "digits", "--limit", "24", "--batch-size", "12", "--no-progress"]
    rc = main(["eval", "--model", "resnet8_cifar", "--neuron", "if", "--timesteps", "2",
               "--weights", str(tmp_path / "w.safetensors"), "--out", str(tmp_path / "a"), *common])
    assert rc == 0
    res = load_result(tmp_path / "a")
    assert res.samples == 24 and len(res.accuracy_vs_T) == 2 and res.meta["dataset"] == "digits"
    assert (tmp_path / "a" / "energy.png").read_bytes().startswith(PNG)
    rc = main(["eval", "--model", "resnet8_cifar", "--neuron", "if", "--timesteps", "3", "--no-plots",
               "--out", str(tmp_path / "b"), "--compare", str(tmp_path / "a"), *common])
    assert rc == 0 and (tmp_path / "b" / "comparison.md").exists()
    assert "report written" in capsys.readouterr().out
    bad = tmp_path / "bad.safetensors"
    save_file({"nope": torch.zeros(1)}, str(bad))
    assert main(["eval", "--model", "resnet8_cifar", "--neuron", "if", "--weights", str(bad),
                 "--out", str(tmp_path / "c"), *common]) == 2


def test_cli_eval_checkpoint(tmp_path):
    models = _zoo()
    from multispike.train.checkpoint import save_checkpoint
    net = models.create_model("resnet8_cifar", num_classes=10, neuron="if", T=2, in_channels=1)
    cfg = {"model": "resnet8_cifar", "neuron": "if", "timesteps": 2, "num_classes": 10, "in_channels": 1,
           "dataset": "digits", "normalize": True, "neuron_kwargs": {}, "model_kwargs": {}}
    save_checkpoint(tmp_path / "run" / "checkpoints", net, None, {"model": "resnet8_cifar", "config": cfg},
                    epoch=1, step=3)
    rc = main(["eval", "--checkpoint", str(tmp_path / "run"), "--limit", "16", "--no-progress", "--no-plots",
               "--out", str(tmp_path / "eval")])
    assert rc == 0
    res = load_result(tmp_path / "eval")
    assert res.T == 2 and res.meta["dataset"] == "digits" and res.meta["checkpoint"].endswith(".json")


def test_rate_and_energy_plots_name_layers_alike(tmp_path, monkeypatch):
    """Issue 16: the rate plot named neurons, the energy plot the synaptic layers after them (features.0 vs
    stem.0 / features.2.0). Both now name a layer by its spiking neuron: every rate bar's label starts an energy
    bar's label (the operations its spikes drive) and every energy bar is driven by a labelled neuron or the input."""
    from multispike.metrics import plots
    from multispike.models import create_model

    figs = {}
    real_save = plots._save
    monkeypatch.setattr(plots, "_save", lambda fig, path: figs.setdefault(str(path), fig) and real_save(fig, path))
    torch.manual_seed(0)
    net = create_model("vgg_small", num_classes=10, neuron="if", T=2, in_channels=1, input_size=[8, 8])
    g = torch.Generator().manual_seed(0)
    res = evaluate(net, [(torch.rand(4, 1, 8, 8, generator=g), torch.randint(0, 10, (4,), generator=g))], T_max=2)
    paths = write_report(res, tmp_path)

    def ticks(path, i=0):
        ax = figs[path].axes[i]
        return [t.get_text() for t in ax.get_xticklabels()], ax.get_xlabel()

    rate, rate_axis = ticks(paths["rates_plot"])
    steps, steps_axis = ticks(paths["timesteps_plot"])
    energy, energy_axis = ticks(paths["energy_plot"])
    neurons = [l["name"] for l in res.spikes["layers"]]
    assert rate == steps == neurons and rate_axis == steps_axis == plots.RATE_AXIS_LABEL
    assert energy_axis == plots.ENERGY_AXIS_LABEL and len(energy) == len(res.energy["multispike"]["layers"])
    sources = [e.split(" → ")[0] for e in energy]
    assert sources[0] == "input" and set(sources[1:]) == set(neurons)      # same names, nothing else
    # the neuron's name sits on exactly the operations its spikes feed (from the op counter's input_source)
    fed = {l["name"]: l["input_source"] for l in res.ops["layers"]}
    for label, row in zip(energy, res.energy["multispike"]["layers"]):
        assert label.split(" → ") == [fed[row["name"]] or "input", row["type"]]
    # a result written before input_source was recorded keeps the module names
    old = [{k: v for k, v in r.items() if k != "input_source"} for r in res.energy["multispike"]["layers"]]
    assert plots.energy_layer_labels(old) == [r["name"] for r in old]


def test_flip_tta_accuracy_is_the_mirror_mean_readout_and_statistics_are_one_pass():
    from multispike.metrics.prefix import prefix_correct
    torch.manual_seed(3)
    net = nn.Sequential(ms.DirectEncoder(3), SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1)),
                        ms.IFNeuron(v_threshold=0.3, step_mode="m"),
                        SeqToANNContainer(nn.Flatten(), nn.Linear(64, 3)), MeanOverTime())
    g = torch.Generator().manual_seed(5)
    data = [(torch.rand(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]
    plain = evaluate(net, data, T_max=3)
    tta = evaluate(net, data, T_max=3, tta_flip=True)
    # the expected readout, computed independently: mean of the per-step logits of x and x mirrored
    hits = torch.zeros(3)
    for x, y in data:
        steps = torch.stack([0.5 * (a + b) for a, b in zip(_capture_steps(net, x), _capture_steps(net, x.flip(-1)))])
        hits += prefix_correct(steps, y)
    assert [a for _, a in tta.accuracy_vs_T] == pytest.approx((hits / 32).tolist())
    assert tta.accuracy_vs_T != plain.accuracy_vs_T   # this random net is not mirror-symmetric
    # spike statistics and op counts describe one (unflipped) inference, exactly as without TTA
    assert tta.spikes == plain.spikes and tta.ops == plain.ops
    assert tta.meta["tta_flip"] is True and plain.meta["tta_flip"] is False


def _capture_steps(net: nn.Module, x: torch.Tensor) -> list[torch.Tensor]:
    """Per-step logits of ``net`` on ``x`` read at its MeanOverTime input (what ``evaluate`` scores)."""
    seen = []
    handle = net[-1].register_forward_hook(lambda mod, a, o: seen.append(a[0].float()))
    try:
        ms.reset_net(net)
        with torch.no_grad():
            net(x)
    finally:
        handle.remove()
    return list(seen[0])


def test_cli_eval_tta_flip(tmp_path, capsys):
    rc = main(["eval", "--model", "resnet8_cifar", "--neuron", "if", "--timesteps", "2", "--dataset", "digits",
               "--limit", "24", "--batch-size", "12", "--no-progress", "--no-plots", "--tta-flip",
               "--out", str(tmp_path / "tta")])
    assert rc == 0 and "with flip TTA" in capsys.readouterr().out
    assert load_result(tmp_path / "tta").meta["tta_flip"] is True


def test_translate_tta_views_are_airbench_level_2():
    from multispike.metrics.prefix import tta_views
    x = torch.arange(2 * 1 * 3 * 4, dtype=torch.float32).view(2, 1, 3, 4)
    # by hand: shift by one pixel with a mirrored border (reflect: the row/column next to the edge)
    up_left = torch.cat([x[..., 1:2, :], x[..., :-1, :]], dim=-2)
    up_left = torch.cat([up_left[..., 1:2], up_left[..., :-1]], dim=-1)
    down_right = torch.cat([x[..., 1:, :], x[..., -2:-1, :]], dim=-2)
    down_right = torch.cat([down_right[..., 1:], down_right[..., -2:-1]], dim=-1)
    views = tta_views(x, flip=True, translate=True)
    assert [w for w, _ in views] == [0.25, 0.25, 0.125, 0.125, 0.125, 0.125]
    want = [x, x.flip(-1), up_left, up_left.flip(-1), down_right, down_right.flip(-1)]
    for (_, got), exp in zip(views, want):
        torch.testing.assert_close(got, exp, atol=0, rtol=0)
    assert [w for w, _ in tta_views(x, translate=True)] == [0.5, 0.25, 0.25]
    assert len(tta_views(x)) == 1 and tta_views(x)[0][1] is x
    # time-major input [T, B, C, H, W] shifts each frame alike
    seq = torch.stack([x, 2 * x])
    torch.testing.assert_close(tta_views(seq, translate=True)[1][1][1], 2 * up_left)
    with pytest.raises(ValueError, match="at least 2x2"):
        tta_views(torch.zeros(1, 1, 1, 5), translate=True)


def test_translate_tta_in_evaluate_and_prefix_accuracy_agree_with_the_weighted_views():
    from multispike.metrics.prefix import prefix_accuracy, prefix_correct, tta_views
    torch.manual_seed(4)
    net = nn.Sequential(ms.DirectEncoder(2), SeqToANNContainer(nn.Conv2d(1, 4, 3, padding=1)),
                        ms.IFNeuron(v_threshold=0.3, step_mode="m"),
                        SeqToANNContainer(nn.Flatten(), nn.Linear(64, 3)), MeanOverTime())
    g = torch.Generator().manual_seed(6)
    data = [(torch.rand(16, 1, 4, 4, generator=g), torch.randint(0, 3, (16,), generator=g)) for _ in range(2)]
    plain = evaluate(net, data, T_max=2)
    res = evaluate(net, data, T_max=2, tta_flip=True, tta_translate=True)
    hits = torch.zeros(2)
    for x, y in data:
        steps = sum(w * torch.stack(_capture_steps(net, v)) for w, v in tta_views(x, flip=True, translate=True))
        hits += prefix_correct(steps, y)
    assert [a for _, a in res.accuracy_vs_T] == pytest.approx((hits / 32).tolist())
    assert res.spikes == plain.spikes and res.ops == plain.ops      # still one inference's statistics
    assert res.meta["tta_translate"] is True
    # the trainer's / prefix_accuracy's readout is the same (time mean of the same weighted views)
    acc = prefix_accuracy(net, data, tta_flip=True, tta_translate=True)
    assert acc["acc"] == pytest.approx(res.accuracy_vs_T[-1][1])


def test_cli_eval_tta_translate(tmp_path, capsys):
    rc = main(["eval", "--model", "resnet8_cifar", "--neuron", "if", "--timesteps", "2", "--dataset", "digits",
               "--limit", "24", "--batch-size", "12", "--no-progress", "--no-plots", "--tta-flip", "--tta-translate",
               "--out", str(tmp_path / "tta")])
    assert rc == 0 and "with flip + translate TTA" in capsys.readouterr().out
    assert load_result(tmp_path / "tta").meta["tta_translate"] is True
