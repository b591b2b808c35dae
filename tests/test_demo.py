"""The end-to-end demo runs (reduced setting): the SNN approaches the ANN as T grows, and the LM-HT, QAC and
M-LIF rows satisfy their methods' invariants (hybrid identity, reparameterisation agreement, average T, the
exact aver+aver mixed-timestep SNN, one-hot payloads, energy ratio)."""
import json
import math
import subprocess
import sys

import pytest

from multispike.demo import EXTRA_ROWS, DemoConfig, format_table, run_demo


def test_demo_end_to_end_reduced(tmp_path):
    cfg = DemoConfig(epochs=6, timesteps=(1, 2, 4, 16), rows=("if",), out=str(tmp_path), progress=False)
    result = run_demo(cfg, log=lambda s: None)
    rows = result["rows"]
    ann = rows[0]["accuracy"]
    snn = {r["T"]: r["accuracy"] for r in rows if r["method"].startswith("IF")}
    assert ann > 85.0
    assert snn[16] >= snn[1] and snn[4] >= snn[1]
    assert snn[16] > ann - 5.0  # converted SNN approaches the ANN at larger T
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["rows"] == rows and set(saved["spike_rates"]) == {"1", "2", "4", "16"}
    for layer_rates in saved["spike_rates"].values():
        assert all(0.0 < r < 1.0 for r in layer_rates.values())


def test_cli_help_for_every_command():
    from multispike.cli.main import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.__class__.__name__ == "_SubParsersAction")
    assert "demo" in sub.choices
    for name in sub.choices:
        proc = subprocess.run([sys.executable, "-m", "multispike", name, "--help"], capture_output=True, text=True)
        assert proc.returncode == 0, (name, proc.stderr)
        assert "usage:" in proc.stdout


def test_cli_bad_input_is_one_clear_line():
    proc = subprocess.run([sys.executable, "-m", "multispike", "demo", "--timesteps", "0"], capture_output=True,
                          text=True)
    assert proc.returncode == 2 and "--timesteps must all be >= 1" in proc.stderr and "Traceback" not in proc.stderr


# ------------------------------------------------------------------------------------------------------------
# LM-HT, QAC and M-LIF rows (one reduced run of every row, shared by the tests below)
# ------------------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("demo_quick")
    lines = []
    result = run_demo(DemoConfig.quick_config(out=str(out), progress=False), log=lines.append)
    return result, "\n".join(lines), out


def _group(result, prefix):
    rows = [r for r in result["rows"] if r.get("group", "").startswith(prefix)]
    assert rows, f"no rows in group {prefix!r}"
    return {r["method"]: r for r in rows}


def test_quick_run_rows_are_complete_and_saved(quick_run):
    result, text, out = quick_run
    assert set(EXTRA_ROWS) >= {"lmht", "qac", "mlif"}
    for r in result["rows"]:
        assert {"group", "method", "T", "accuracy", "notes"} <= set(r)
        assert 0.0 <= r["accuracy"] <= 100.0 and isinstance(r["notes"], str)
    saved = json.loads((out / "results.json").read_text())
    assert saved["rows"] == json.loads(json.dumps(result["rows"]))
    # The printed table has one block per group, in order, and every method line.
    table = format_table(result["rows"])
    assert table in text
    groups = list(dict.fromkeys(r["group"] for r in result["rows"]))
    assert [l[1:-1] for l in table.splitlines() if l.startswith("[")] == groups
    assert len(groups) == 4


def test_lmht_rows_hybrid_identity_and_reparameterisation(quick_run):
    result, _, _ = quick_run
    rows = _group(result, "LM-HT")
    qcfs = rows["QCFS ANN (Q=4)"]
    assert qcfs["qcfs_levels"] == 4 and qcfs["accuracy"] > 85.0
    if_T = {r["T"]: r["accuracy"] for r in result["rows"] if r["method"] == "IF from QCFS"}
    assert set(if_T) == {2, 4} and if_T[4] >= if_T[2]
    exact = rows["LM-HT init (×L bias)"]
    # Q = L·T = 4: with biases ×L the converted LM-HT net is the QCFS net (Theorem 4.4, deterministic form).
    assert exact["T"] == 2 and exact["hybrid_bias_scale"] == 2.0
    assert exact["agreement_with_qcfs"] >= 0.99 and abs(exact["accuracy"] - qcfs["accuracy"]) <= 1.0
    assert rows["LM-HT init (×1 bias)"]["hybrid_bias_scale"] == 1.0
    tuned, rif = rows["LM-HT fine-tuned (STBP)"], rows["IF reparameterised from LM-HT"]
    assert rif["T"] == 4 and rif["argmax_agreement"] >= 0.99 and abs(rif["accuracy"] - tuned["accuracy"]) <= 1.0
    assert 0.9 <= rif["count_agreement"] <= 1.0


def test_qac_rows_average_T_and_exact_mixed_timestep_snn(quick_run):
    result, text, _ = quick_run
    rows = _group(result, "QAC")
    qann = rows["QAC quantized ANN + latency term"]
    T_l = qann["T_l"]
    assert len(T_l) == 3 and all(isinstance(t, int) and t >= 1 for t in T_l)
    # multispike's latency term (w_l ∝ MACs) makes the learned T_l differ and lowers their mean below t = 4;
    # cross-entropy alone does not lower it
    ce = rows["QAC quantized ANN, cross-entropy only"]
    assert len(set(T_l)) > 1 and qann["average_T"] < 4.0 <= ce["T"]
    assert qann["latency"]["per_layer"] == "macs" and qann["latency"]["weight"] > 0
    assert [l["T"] for l in qann["layers"]] == T_l
    assert qann["average_T"] == pytest.approx(sum(T_l) / len(T_l), abs=0, rel=0) and qann["T"] == qann["average_T"]
    assert min(T_l) <= qann["average_T_op_weighted"] <= max(T_l)
    for layer in qann["layers"]:
        assert layer["T"] == math.floor(layer["t"] + 0.5) or layer["t"] in (1.0, 64.0)
    mixed = rows["QAC mixed-T SNN (aver+aver)"]
    # §4.4: with aver+aver, integer T_l and v0 = θ/2 the SNN is the quantized ANN (calibration off).
    assert mixed["accuracy"] == qann["accuracy"]
    assert mixed["agreement_with_quantized_ann"] == 1.0 and mixed["mse_to_quantized_ann"] < 1e-3
    cal = rows["QAC mixed-T SNN + calibration"]["calibration"]
    assert cal["loss_after"] <= cal["loss_before"] and cal["target"] == "float"
    T_u = math.floor(qann["average_T"] + 0.5)
    assert rows["QCFS uniform T"]["T"] == T_u and rows["QCFS uniform T + aver"]["T"] == T_u
    assert rows["QCFS uniform T"]["align"] is None and rows["QCFS uniform T + aver"]["align"] == "aver+aver"
    assert "QAC per-layer timesteps" in text


def test_mlif_rows_one_hot_payloads_and_energy(quick_run):
    result, text, _ = quick_run
    rows = _group(result, "One-hot M-LIF")
    lq = rows["LQ-ANN b=2 (calibrated)"]
    # the exact pairing S = 2^b − 1: right after the init the SNN *is* the LQ-ANN (same accuracy, same argmax)
    exact = rows["M-LIF S=3 hybrid init"]
    assert exact["exact"] and exact["accuracy"] == lq["accuracy"] and exact["agreement_with_lq"] == 1.0
    assert not rows["M-LIF S=2 hybrid init"]["exact"]                       # the paper's pairing: 3 codes vs 4
    assert "P90" in rows["M-LIF S=3 P90 init (paper text)"]["method"]
    for name, lanes in (("M-LIF S=3", 3), ("M-LIF S=2", 2), ("LIF (M-LIF S=1)", 1)):
        init, tuned = rows[f"{name} hybrid init"], rows[f"{name} fine-tuned"]
        assert init["T"] == tuned["T"] == 1 and tuned["lanes"] == lanes
        assert tuned["accuracy"] >= init["accuracy"] - 100 / 359 - 1e-9, name   # at most one test image lost
        allowed = {0.0} | {float(2 ** s) for s in range(lanes)}
        for layer, values in tuned["payload_values"].items():
            assert set(values) <= allowed, (name, layer, values)  # one-hot: 0 or a single power of two
            events, active = tuned["spike_events"][layer], tuned["active_lanes"][layer]
            assert 0.0 < active <= 1.0 and active <= events <= (2 ** (lanes - 1)) * active
            if lanes == 1:
                assert events == active
        energy = tuned["energy"]
        assert energy["delta"] > 1.0 and 0.0 < energy["e_snn_uj"] < energy["e_ann_uj"]
        assert energy["delta"] == pytest.approx(energy["e_ann_uj"] / energy["e_snn_uj"])
    assert "exact LQ mapping" in text


def test_unknown_row_and_bad_threads_are_clear_errors():
    with pytest.raises(ValueError, match="unknown demo row.*'nope'.*if, lmht, qac, mlif"):
        run_demo(DemoConfig(rows=("if", "nope"), progress=False), log=lambda s: None)
    with pytest.raises(ValueError, match="threads must be an integer >= 1, got 0"):
        run_demo(DemoConfig(threads=0, progress=False), log=lambda s: None)


def test_cli_demo_flags_reach_the_config(monkeypatch):
    import multispike.demo as demo
    from multispike.cli.main import build_parser

    seen = {}
    monkeypatch.setattr(demo, "run_demo", lambda cfg: seen.update(cfg=cfg))
    args = build_parser().parse_args(["demo", "--quick", "--rows", "mlif", "lmht", "--threads", "2", "--out", "x"])
    assert args.func(args) == 0
    cfg = seen["cfg"]
    assert cfg.quick and cfg.rows == ("mlif", "lmht") and cfg.threads == 2 and cfg.epochs == 6
    args = build_parser().parse_args(["demo", "--epochs", "3", "--rows", "if", "if"])
    args.func(args)
    cfg = seen["cfg"]
    assert not cfg.quick and cfg.epochs == 3 and cfg.finetune_epochs == DemoConfig().finetune_epochs
    assert cfg.rows == ("if",) and cfg.timesteps == DemoConfig().timesteps and cfg.threads == 1
