"""Fixing QAC's learned timesteps at the end of QAT (``QACQuantizer.fix_timesteps``, ``fix_timesteps``).

* a fixed quantizer runs the fixed T_l whatever its level parameter says, that parameter gets no gradient while
  the scale parameter keeps its straight-through gradient (every parameterisation), the latency term sees a
  constant, and the state survives ``state_dict`` (older checkpoints without ``fixed_T`` load as not fixed);
* the budget rule by hand: layers on a rounding boundary lose a level first, ties by name, per unit weight,
  ``ceil`` rounding uses its own boundary;
* bad values and settings are refused with the setting named.
"""
from __future__ import annotations

import pytest
import torch
from torch import nn

from multispike.quant.latency import LatencyRegulariser, fix_timesteps
from multispike.quant.qac import PARAMETERISATIONS, QACQuantizer, qac_quantize, quantizer_summary
from multispike.train import ConfigError, resolve_config


@pytest.mark.parametrize("param", PARAMETERISATIONS)
def test_fixed_quantizer_runs_fixed_T_and_only_the_scale_learns(param):
    torch.manual_seed(0)
    q = QACQuantizer(param=param, alpha=2.0, t=3.4)
    assert q.timesteps == 3 and not q.is_fixed
    assert q.fix_timesteps(2) == 2
    assert q.is_fixed and q.timesteps == 2 and q.continuous_timesteps == 2.0
    # the level parameter now represents T exactly (round-trips through unfix)
    q.unfix_timesteps()
    assert q.timesteps == 2
    q.fix_timesteps(2)
    x = torch.randn(257) * 2
    out = q(x.clone().requires_grad_())
    assert torch.equal(out.detach(), qac_quantize(x, q.alpha_tensor(), 2))
    out.sum().backward()
    level, scale = (q.clip, q.d) if param == "d_alpha" else (q.learnable_pair()[0], q.learnable_pair()[1])
    assert level.grad is None
    assert scale.grad is not None and float(scale.grad) != 0.0
    t = q.continuous_t()
    assert float(t) == 2.0 and not t.requires_grad
    assert "fixed" in repr(q) and quantizer_summary(nn.Sequential(q))[0]["fixed"] is True


def test_latency_term_is_constant_on_fixed_layers():
    qs = nn.Sequential(QACQuantizer(t=3.0, alpha=1.0), QACQuantizer(t=2.2, alpha=1.0))
    reg = LatencyRegulariser(qs, weight=0.5)
    qs[0].fix_timesteps()
    r = reg()
    assert float(r.detach()) == pytest.approx(0.5 * (3.0 + 2.2))
    r.backward()
    assert qs[0].t.grad is None and float(qs[1].t.grad) == pytest.approx(0.5)


def test_fixed_state_round_trips_and_old_state_dicts_load_as_not_fixed():
    q = QACQuantizer(t=3.0, alpha=1.0)
    q.fix_timesteps(2)
    state = q.state_dict()
    assert int(state["fixed_T"]) == 2
    fresh = QACQuantizer(t=4.0)
    fresh.load_state_dict(state)
    assert fresh.is_fixed and fresh.timesteps == 2
    old = {k: v for k, v in state.items() if k != "fixed_T"}
    older = QACQuantizer(t=4.0)
    older.load_state_dict(old)            # strict load of a checkpoint written before fixed_T existed
    assert not older.is_fixed and older.timesteps == 2


@pytest.mark.parametrize("bad", [0, 65, 2.0, True, None])
def test_fix_timesteps_refuses_bad_T(bad):
    q = QACQuantizer(t=3.0)
    if bad is None:
        assert q.fix_timesteps(None) == 3       # None: the current T_l
        return
    with pytest.raises(ValueError, match="T must be an integer in"):
        q.fix_timesteps(bad)


def _layers(ts, t_to_T="round"):
    return nn.Sequential(*[QACQuantizer(t=t, alpha=1.0, t_to_T=t_to_T) for t in ts])


# the v4 speedrun's QAC layers after 5 epochs (log.jsonl): four sat on the 2.5 boundary
V4_T = [3.56, 2.509, 2.50, 2.50, 2.50, 1.976, 1.812]


def test_budget_lowers_the_layers_on_a_rounding_boundary_first():
    model = _layers(V4_T)
    rec = fix_timesteps(model, budget=2.5)
    assert rec["mean_T_rounded"] == pytest.approx(20 / 7)
    # 2.50 is exactly on the boundary (distance 0), 2.509 is 0.009 above it: the three at 2.50 go, by name
    assert rec["lowered"] == ["2", "3", "4"]
    assert [q.timesteps for q in model] == [4, 3, 2, 2, 2, 2, 2]
    assert rec["mean_T"] == pytest.approx(17 / 7) and rec["mean_T"] <= 2.5
    assert rec["layers"]["1"] == {"t": pytest.approx(2.509), "T_rounded": 3, "T": 3}


def test_tighter_budget_cuts_by_distance_to_the_next_boundary():
    model = _layers(V4_T)
    rec = fix_timesteps(model, budget=2.0)
    # after the three 2.50s and 2.509: stem 3.56 (0.06 above 3.5), then 1.812 (0.312 above 1.5) < 1.976 (0.476)
    assert rec["lowered"] == ["2", "3", "4", "1", "0", "6"]
    assert [q.timesteps for q in model] == [3, 2, 2, 2, 2, 2, 1]
    assert rec["mean_T"] == pytest.approx(2.0)


def test_budget_weights_and_ceil_rounding():
    model = _layers([2.6, 2.6])
    # equal distance: the heavier layer lowers the weighted mean more per level and goes first
    rec = fix_timesteps(model, budget=2.5, layer_weights={"0": 1.0, "1": 3.0})
    assert rec["lowered"] == ["1"] and [q.timesteps for q in model] == [3, 2]
    assert rec["mean_T"] == pytest.approx((3 + 3 * 2) / 4)
    ceil = _layers([2.9, 2.2], t_to_T="ceil")          # T = 3, 3; boundaries at 2: distances 0.9, 0.2
    rec = fix_timesteps(ceil, budget=2.5)
    assert rec["lowered"] == ["1"] and [q.timesteps for q in ceil] == [3, 2]
    # no budget: round and fix only
    plain = _layers(V4_T)
    assert fix_timesteps(plain)["lowered"] == [] and all(q.is_fixed for q in plain)


@pytest.mark.parametrize("kwargs, match", [
    (dict(budget=0.9), "budget must be a mean timestep >= 1"),
    (dict(budget=float("nan")), "budget must be a mean timestep >= 1"),
    (dict(layer_weights={"0": -1.0}), "layer weights must be finite"),
    (dict(layer_weights={"9": 1.0}), "layer weights must be finite"),   # none of the model's layers weighted
])
def test_fix_timesteps_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        fix_timesteps(_layers([2.0]), **kwargs)
    with pytest.raises(ValueError, match="has no QACQuantizer"):
        fix_timesteps(nn.Sequential(nn.ReLU()))


@pytest.mark.parametrize("overrides, match", [
    (dict(mode="qat", timestep_freeze_fraction=1.0), "timestep_freeze_fraction must be in"),
    (dict(mode="qat", timestep_freeze_fraction=-0.1), "timestep_freeze_fraction must be in"),
    (dict(mode="ann", timestep_freeze_fraction=0.2), "use it with mode qat"),
    (dict(mode="qat", timestep_budget=2.5), "timestep_freeze_fraction > 0"),
    (dict(mode="qat", timestep_freeze_fraction=0.2, timestep_budget=0.5), "timestep_budget must be"),
])
def test_config_refuses_bad_freeze_settings(overrides, match):
    with pytest.raises(ConfigError, match=match):
        resolve_config(overrides=dict(model="x", **overrides))


def test_trainer_refuses_freeze_without_qac_quantizers(tmp_path):
    from multispike.train import Trainer

    cfg = resolve_config(overrides=dict(model="x", mode="qat", timestep_freeze_fraction=0.2, out=str(tmp_path),
                                        progress=False))
    loader = [(torch.zeros(2, 4), torch.zeros(2, dtype=torch.long))]
    with pytest.raises(ConfigError, match="has none"):
        Trainer(nn.Linear(4, 2), loader, None, cfg)
