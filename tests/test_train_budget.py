"""Trainer features for budgeted studies (issue 15: one training loop): ``max_steps`` (fractional epochs),
``budget_min_steps``, ``save_checkpoints: false``, exact-fp32 evaluation, and ``multispike.train.budget``
(per-phase seeds, step timing with the Trainer's own step, equal-epoch plans)."""
import json
import math

import pytest
import torch
from torch import nn

from multispike.train import (LRSchedule, TrainConfig, Trainer, equal_epoch_plan, measure_step_seconds, phase_seed,
                              resolve_config)
from multispike.train.config import ConfigError


def _model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(12, 3))


def _batches(n=10):
    g = torch.Generator().manual_seed(1)
    return [(torch.randn(4, 3, 2, 2, generator=g), torch.randint(0, 3, (4,), generator=g)) for _ in range(n)]


def _cfg(tmp_path, **kw):
    base = dict(model="linear", mode="ann", epochs=2, lr=0.1, out=str(tmp_path / "run"), device="cpu",
                progress=False)
    base.update(kw)
    return TrainConfig(**base).validate()


def test_lr_schedule_max_steps_shortens_the_cosine_to_end_at_zero():
    s = LRSchedule("cosine", lr=1.0, steps_per_epoch=10, epochs=2, max_steps=15)
    assert s.total_steps == 15
    assert s.factor(0) == 1.0 and s.factor(15) == pytest.approx(0.0, abs=1e-12)
    assert s.factor(7) == pytest.approx(0.5 * (1 + math.cos(math.pi * 7 / 15)))
    assert LRSchedule("cosine", lr=1.0, steps_per_epoch=10, epochs=2, max_steps=99).total_steps == 20
    with pytest.raises(ValueError, match="max_steps"):
        LRSchedule("cosine", lr=1.0, steps_per_epoch=10, epochs=2, max_steps=0)


def test_max_steps_trains_a_fractional_epoch_and_logs_it(tmp_path):
    cfg = _cfg(tmp_path, max_steps=15, save_checkpoints=False)
    tr = Trainer(_model(), _batches(), None, cfg)
    lrs = []
    orig = tr.schedule.apply
    tr.schedule.apply = lambda opt, step: lrs.append(orig(opt, step)) or lrs[-1]
    summary = tr.fit()
    assert tr.step == 15 and summary["steps"] == 15 and summary["stop_reason"] == "max_steps"
    assert summary["epochs_completed"] == pytest.approx(1.5)
    assert lrs[0] == pytest.approx(0.1) and lrs[-1] == pytest.approx(0.1 * 0.5 * (1 + math.cos(math.pi * 14 / 15)))
    recs = [json.loads(line) for line in (tmp_path / "run" / "log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in recs] == ["epoch", "epoch", "summary"]
    assert recs[1]["stop_reason"] == "max_steps" and recs[1]["train_samples"] == 5 * 4
    # save_checkpoints: false writes no checkpoint, only the log and the summary
    assert not (tmp_path / "run" / "checkpoints").exists()
    assert (tmp_path / "run" / "summary.json").is_file()


def test_budget_min_steps_overrides_a_spent_budget(tmp_path):
    cfg = _cfg(tmp_path, epochs=3, time_budget_s=1e-6, budget_min_steps=4, save_checkpoints=False)
    tr = Trainer(_model(), _batches(), None, cfg)
    lrs = []
    orig = tr.schedule.apply
    tr.schedule.apply = lambda opt, step: lrs.append(orig(opt, step)) or lrs[-1]
    summary = tr.fit()
    assert tr.step == 4 and summary["stop_reason"] == "time_budget"
    # the guaranteed steps follow a cosine over 4 steps (30 planned), not the spent budget's lr of 0
    assert lrs == pytest.approx([0.1 * 0.5 * (1 + math.cos(math.pi * s / 4)) for s in range(4)])
    cfg = _cfg(tmp_path, epochs=3, time_budget_s=1e-6, save_checkpoints=False, out=str(tmp_path / "b"))
    assert Trainer(_model(), _batches(), None, cfg).fit()["steps"] == 0     # the default: a spent budget trains nothing


def test_new_config_keys_are_validated_and_resolvable(tmp_path):
    with pytest.raises(ConfigError, match="max_steps must be >= 1"):
        _cfg(tmp_path, max_steps=0)
    with pytest.raises(ConfigError, match="budget_min_steps must be >= 0"):
        _cfg(tmp_path, budget_min_steps=-1)
    cfg = resolve_config(overrides={"model": "linear", "max_steps": 7, "save_checkpoints": False, "tf32": False})
    assert cfg.max_steps == 7 and cfg.save_checkpoints is False and cfg.tf32 is False
    assert TrainConfig().save_checkpoints is True and TrainConfig().tf32 is None   # defaults keep old behaviour


def test_measure_step_seconds_uses_a_copy_and_restores_the_loader_epoch(tmp_path):
    from multispike.data import TensorLoader

    model = _model()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loader = TensorLoader(torch.randint(0, 255, (16, 3, 2, 2), dtype=torch.uint8), torch.randint(0, 3, (16,)), 4)
    loader.set_epoch(5)
    sec = measure_step_seconds(model, loader, _cfg(tmp_path), steps=2)
    assert sec > 0 and loader.epoch == 5
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
    with pytest.raises(ValueError, match="no batch"):
        measure_step_seconds(model, [], _cfg(tmp_path))


def test_equal_epoch_plan_shares_one_epoch_count_within_the_time():
    plan = equal_epoch_plan({"a": (0.01, 50), "b": (0.03, 50)}, epochs=10, seconds=4.0)
    # Σ sec·spe = 2 s per epoch for the group: 2 epochs fit in 4 s
    assert plan.epochs == pytest.approx(2.0) and plan.cut
    assert plan.allowance_s["b"] == pytest.approx(2.0 * 50 * 0.03 * 1.5 + 2.0)
    assert equal_epoch_plan({"a": (0.01, 50)}, epochs=3, seconds=1e9).epochs == 3
    assert equal_epoch_plan({"a": (1.0, 50)}, epochs=3, seconds=0.0, min_steps=10).epochs == pytest.approx(0.2)
    assert equal_epoch_plan({"a": (0.01, 50)}, epochs=10, seconds=4.0, repeats=2).epochs == pytest.approx(4.0)
    with pytest.raises(ValueError, match="member 'a'"):
        equal_epoch_plan({"a": (0.0, 50)}, epochs=3, seconds=1.0)


def test_phase_seed_is_a_fixed_function_of_the_name():
    assert phase_seed(0, "ann_float") == phase_seed(0, "ann_float") != phase_seed(0, "ann_qcfs")
    assert phase_seed(1, "x") - phase_seed(0, "x") == 1_000_003
    with pytest.raises(ValueError, match="non-empty"):
        phase_seed(0, "")
