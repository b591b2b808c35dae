"""Evidence suite (benchmarks/evidence): the quick profile end to end, plus its building blocks.

The quick run checks structure and finiteness only - never an accuracy claim (its numbers come from one epoch on
128 images and mean nothing). Data: ``<repo>/../shared/datasets`` (or ``MULTISPIKE_DATA``); skipped without it.
"""
from __future__ import annotations

import json
import math
import os
import subprocess
import time
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from benchmarks.evidence import common as C  # noqa: E402
from benchmarks.evidence import mlif_table, profiles  # noqa: E402

SHARED = Path(os.environ.get("MULTISPIKE_DATA", REPO.parent / "shared" / "datasets"))
HAVE_DATA = (SHARED / "cifar10" / "cifar-10-batches-py").is_dir() and (SHARED / "events" / "nmnist-small").is_dir()
needs_data = pytest.mark.skipif(not HAVE_DATA, reason=f"shared datasets not found at {SHARED} (CIFAR-10 pickles and "
                                                      f"events/nmnist-small); set MULTISPIKE_DATA")

ROW_KEYS = {"group", "method", "setting", "accuracy", "n_test", "paper_reports"}
CLAIM_KEYS = {"id", "claim", "rule", "verdict", "reason", "paper_reports", "measured"}
TOP_KEYS = {"schema_version", "table", "title", "status", "command", "profile", "environment", "scale", "budget",
            "rows", "claims", "phases", "notes", "errors", "extra", "paper_source", "wall_time_s"}
EXPECTED_ROWS = {
    "lmht": {"ann_float", "ann_qcfs", "if_T2", "if_T4", "if_T8", "hybrid_L2T2", "hybrid_L2T4", "hybrid_L4T2",
             "direct_lmht_L2T2", "direct_if_T2", "direct_if_T4"},
    "qac": {"ann_qcfs", *(f"qcfs_T{T}_{a}" for T in (1, 2, 4, 8) for a in ("plain", "aver")), "qat_ann", "qac_snn",
            "qac_snn_cal", "diag_plain_T2_cal"},
    "mlif": {"ann_float", "mlif_S1", "mlif_S2", "mlif_S3", "lq_b2", "lq_b3", "dvs_S1", "dvs_S2", "dvs_S3", "dvs_S4"},
}


def _finite_numbers(obj, path="$"):
    """Every float anywhere in ``obj`` is finite (JSON has no NaN/inf; our writer maps them to null)."""
    if isinstance(obj, dict):
        for k, v in obj.items():
            _finite_numbers(v, f"{path}.{k}")
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            _finite_numbers(v, f"{path}[{i}]")
    elif isinstance(obj, float):
        assert math.isfinite(obj), f"non-finite number at {path}"


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    if not HAVE_DATA:
        pytest.skip(f"shared datasets not found at {SHARED}")
    out = tmp_path_factory.mktemp("evidence_quick")
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "evidence" / "run_all.py"), "--profile", "quick", "--data",
           str(SHARED), "--out", str(out), "--commit", "test-commit", "--quiet"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"run_all failed:\nstdout:\n{proc.stdout[-3000:]}\nstderr:\n{proc.stderr[-3000:]}"
    return out


@needs_data
@pytest.mark.parametrize("table", ["lmht", "qac", "mlif"])
def test_quick_table_structure(quick_run, table):
    res = json.loads((quick_run / f"evidence_{table}.json").read_text())
    assert TOP_KEYS <= set(res), f"missing keys {TOP_KEYS - set(res)}"
    assert res["table"] == table and res["schema_version"] == C.SCHEMA_VERSION
    assert res["status"] == "ok", res["errors"]
    assert res["errors"] == []
    assert res["command"].startswith("PYTHONPATH=. python3 benchmarks/evidence/run_all.py --profile quick")
    env = res["environment"]
    assert env["commit"] == "test-commit" and env["commit_source"] == "--commit"
    assert len(env["code_sha256"]) == 64 and env["torch"] == torch.__version__
    assert res["profile"]["name"] == "quick" and res["profile"]["backbone"] == "resnet8_cifar"
    _finite_numbers(res)
    keys = {r["key"] for r in res["rows"]}
    assert EXPECTED_ROWS[table] <= keys, f"missing rows {EXPECTED_ROWS[table] - keys}"
    for r in res["rows"]:
        assert ROW_KEYS <= set(r)
        assert isinstance(r["accuracy"], float) and 0.0 <= r["accuracy"] <= 100.0
        assert r["n_test"] > 0
        # The paper column is text copied from algorithms.md §8, never a measured number.
        assert r["paper_reports"] is None or isinstance(r["paper_reports"], str)
    assert res["claims"], "every table states claims"
    for c in res["claims"]:
        assert CLAIM_KEYS <= set(c)
        assert c["verdict"] in C.VERDICTS and c["rule"] and c["reason"]
    for p in res["phases"]:
        assert p.get("epochs_run") is not None and p.get("seconds") is not None
        if "steps_run" in p:
            assert 1 <= p["steps_run"] <= p["steps_planned"]
    md = (quick_run / f"evidence_{table}.md").read_text()
    assert "paper reports (separate; §8)" in md and "| claim | rule | verdict | reason |" in md
    assert res["command"] in md


@needs_data
@pytest.mark.parametrize("table", ["lmht", "qac", "mlif"])
def test_quick_table_trains_through_the_library_trainer(quick_run, table):
    """Issue 15: every network of a table is trained by multispike.train.Trainer (real CIFAR-10 / N-MNIST at tiny
    size): the result names the trainer, and each trained phase's record matches the Trainer's own log.jsonl and
    summary.json (same steps, same per-epoch losses)."""
    res = json.loads((quick_run / f"evidence_{table}.json").read_text())
    assert res["trainer"] == "multispike.train" and res["environment"]["trainer"] == "multispike.train"
    assert "multispike.train" in (quick_run / f"evidence_{table}.md").read_text()
    trained = [p for p in res["phases"] if "steps_run" in p and "reused" not in p]
    assert trained, "the table trains at least one network itself"
    for p in trained:
        assert p["trainer"] == "multispike.train.Trainer", p["name"]
        log = quick_run / p["trainer_log"]
        recs = [json.loads(line) for line in log.read_text().splitlines()]
        epochs = [r for r in recs if r["event"] == "epoch"]
        summary = json.loads((log.parent / "summary.json").read_text())
        assert recs[-1]["event"] == "summary" and summary["steps"] == p["steps_run"] >= 1
        assert [round(r["train_loss"], 5) for r in epochs] == p["epoch_loss"]
        assert summary["mode"] == p["trainer_mode"] and summary["loss"] == p["trainer_loss"]
        assert not (log.parent / "checkpoints").exists()         # the suite keeps its models in memory
    summary = json.loads((quick_run / "evidence_summary.json").read_text())
    assert summary["trainer"] == "multispike.train"


def snn_T_l(qac: dict) -> list:
    return qac["extra"]["qac_snn"]["T_l"]


@needs_data
def test_quick_specific_contents(quick_run):
    lmht = json.loads((quick_run / "evidence_lmht.json").read_text())
    rows = {r["key"]: r for r in lmht["rows"]}
    for key in ("hybrid_L2T2", "hybrid_L2T4", "hybrid_L4T2"):
        # fine-tuning starts from the exact (×L) init, reported as its own row; LMHT-C's ×1 init beside it
        assert rows[key]["init_accuracy"] == rows[f"{key}_init"]["accuracy"]
        assert rows[key]["init_bias_scale"] == "exact (×L)" and 0 <= rows[key]["init_accuracy_code_bias"] <= 100
    assert "lmht-hybrid-vs-init" in {c["id"] for c in lmht["claims"]}
    for key in ("direct_lmht_L2T2", "direct_if_T2", "direct_if_T4"):
        assert rows[key]["sops_per_image"] > 0 and rows[key]["sop_energy_uj"] > 0
    assert len(lmht["extra"]["if_prefix_accuracy_T1_to_T8"]) == 8
    # Compared rows are trained for the same number of epochs (one plan per group).
    plans = lmht["extra"]["equal_epoch_plans"]
    assert set(plans) == {"hybrid", "direct"}
    assert len({rows[k]["epochs_run"] for k in ("direct_lmht_L2T2", "direct_if_T2", "direct_if_T4")}) == 1
    assert all(m["sec_per_step"] > 0 for m in plans["direct"]["members"].values())
    # The shared ANNs were trained in the LM-HT table and reused by the others.
    qac = json.loads((quick_run / "evidence_qac.json").read_text())
    assert any(p.get("name") == "ann_qcfs" and "reused" in p for p in qac["phases"])
    mlif = json.loads((quick_run / "evidence_mlif.json").read_text())
    assert any(p.get("name") == "ann_float" and "reused" in p for p in mlif["phases"])
    qrows = {r["key"]: r for r in qac["rows"]}
    assert qrows["qat_ann_ce"]["T_l"] and qrows["qat_ann"]["T_l"] == snn_T_l(qac)
    qphases = {p["name"]: p for p in qac["phases"]}
    assert qphases["qat"]["latency_weight"] > 0 and qphases["qat"]["quant_opt"] == "adam"
    assert "latency_weight" not in qphases["qat_ce"] and len(qphases["qat"]["latency_term_per_epoch"]) >= 1
    snn = qac["extra"]["qac_snn"]
    assert all(T >= 1 for T in snn["T_l"]) and snn["average_T"] == pytest.approx(sum(snn["T_l"]) / len(snn["T_l"]))
    mrows = {r["key"]: r for r in mlif["rows"]}
    for S in (1, 2, 3):
        r = mrows[f"mlif_S{S}"]
        assert 0 <= r["init_accuracy"] <= 100 and 0 <= r["init_accuracy_p90"] <= 100
        assert r["e_snn_uj"] > 0 and r["e_ann_uj"] > 0
        # δ is E_ANN / E_SNN of the same row (algorithms.md §6), not an independent number
        assert r["delta"] == pytest.approx(r["e_ann_uj"] / r["e_snn_uj"], rel=1e-9)
    assert mrows["lq_b2"]["delta"] == 1.0
    # the S = 3 rows start from the calibrated 2-bit LQ-ANN with the exact mapping (§5.4)
    assert mrows["mlif_S3"]["init_exact"] and not mrows["mlif_S2"]["init_exact"]
    assert any(c["id"] == "mlif-exact-init" and c["verdict"] != "not tested" for c in mlif["claims"])
    section = (quick_run / "evidence_readme_section.md").read_text()
    assert section.startswith("## Results") and "### Where our measurements do not (fully) confirm" in section
    summary = json.loads((quick_run / "evidence_summary.json").read_text())
    assert [t["table"] for t in summary["tables"]] == ["lmht", "qac", "mlif"]
    assert all(t["status"] == "ok" for t in summary["tables"])


# ----------------------------------------------------------------------------------------------------- units
def test_verdict_rules():
    # 3000 images at ~80%: 2 SE of a difference is about 2.07 pp.
    assert C.judge_greater(85.0, 80.0, 3000, "x")[0] == "reproduced"
    assert C.judge_greater(81.0, 80.0, 3000, "x")[0] == "partly reproduced"
    assert C.judge_greater(79.0, 80.0, 3000, "x")[0] == "not reproduced"
    assert C.judge_greater(81.0, 80.0, 10**7, "x", min_gap=2.0)[0] == "partly reproduced"
    assert C.judge_close(79.5, 80.0, 3000, 1.0, "x")[0] == "reproduced"
    assert C.judge_close(78.5, 80.0, 3000, 1.0, "x")[0] == "partly reproduced"
    assert C.judge_close(70.0, 80.0, 3000, 1.0, "x")[0] == "not reproduced"
    assert C.noise_margin(80.0, 80.0, 3000) == pytest.approx(2 * math.sqrt(2 * 0.16 / 3000) * 100)


def test_planner_shares_and_releases_time():
    now = time.perf_counter()
    pl = C.Planner(now + 100.0, {"a": 1.0, "b": 1.0, "c": 2.0}, reserve_fraction=0.0)
    a = pl.allot("a")
    assert a == pytest.approx(25.0, abs=0.5)
    pl.skip("b")                       # a reused model: its share goes to the others
    assert pl.allot("c") == pytest.approx(pl.remaining(), abs=0.5)
    with pytest.raises(ValueError, match="weights must be >= 0"):
        C.Planner(now + 1.0, {"x": -1.0})


class _TinyCtx:
    def __init__(self, out_dir):
        self.device = torch.device("cpu")
        self.profile = C.get_profile("quick")
        self.hard_deadline = time.perf_counter() + 3600
        self.out_dir = Path(out_dir)
        self.logs = []

    def log(self, msg):
        self.logs.append(msg)


def test_train_phase_cuts_to_the_allotment_and_finishes_the_schedule(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(10)]
    spec = C.TrainSpec(epochs=10, lr=0.1, opt="sgd", min_steps=7)
    rec = C.train_phase(model, batches, spec, name="tiny", ctx=_TinyCtx(tmp_path), allot_s=0.0)
    assert rec["steps_planned"] == 100 and rec["steps_run"] == 7
    assert rec["cuts"] and rec["cuts"][0]["steps_after"] == 7 and rec["stop_reason"] == "time_budget"
    assert rec["epochs_run"] == pytest.approx(0.7)
    assert rec["trainer"] == "multispike.train.Trainer"
    # Without a tight allotment every planned step runs, also a fractional last epoch (max_steps).
    ctx = _TinyCtx(tmp_path)
    rec = C.train_phase(model, batches, C.TrainSpec(epochs=2, lr=0.1), name="tiny", ctx=ctx, allot_s=1e9)
    assert rec["steps_run"] == 20 and rec["cuts"] == [] and len(rec["epoch_loss"]) == 2
    rec = C.train_phase(model, batches, C.TrainSpec(epochs=1.5, lr=0.1), name="tiny", ctx=ctx, allot_s=1e9)
    assert rec["steps_run"] == 15 and rec["stop_reason"] == "max_steps" and rec["epochs_run"] == 1.5
    # Each phase has the Trainer's own log; a repeated name gets its own folder.
    logs = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("log.jsonl"))
    assert logs == ["train_logs/phase/tiny-2/log.jsonl", "train_logs/phase/tiny/log.jsonl"]


def test_train_phase_stops_at_the_hard_deadline(tmp_path):
    ctx = _TinyCtx(tmp_path)
    ctx.hard_deadline = time.perf_counter() - 1.0
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(5)]
    rec = C.train_phase(model, batches, C.TrainSpec(epochs=3, lr=0.1), name="late", ctx=ctx, allot_s=1e9)
    assert rec["steps_run"] == 1 and "hard deadline" in rec["cuts"][-1]["reason"]


def test_stratified_subset_is_nested_and_balanced():
    labels = torch.arange(1000) % 10
    small, large = C.stratified_subset(labels, 100, 3), C.stratified_subset(labels, 400, 3)
    assert set(small.tolist()) <= set(large.tolist())
    assert torch.bincount(labels[small], minlength=10).tolist() == [10] * 10
    assert torch.equal(small, small.sort().values)


def test_roll_batch_equals_per_sample_roll():
    g = torch.Generator().manual_seed(0)
    x = torch.randint(0, 5, (4, 3, 2, 7, 6), generator=g)
    dy, dx = torch.tensor([0, 1, -3, 5]), torch.tensor([2, -1, 0, 6])
    got = mlif_table.roll_batch(x, dy, dx)
    want = torch.stack([torch.roll(x[b], shifts=(int(dy[b]), int(dx[b])), dims=(-2, -1)) for b in range(4)])
    torch.testing.assert_close(got, want, atol=0, rtol=0)


@pytest.mark.parametrize("lanes", [1, 2, 3, 4])
def test_encode_nmnist_matches_the_library_encoder(lanes):
    from multispike.data.events import MultiLevelEncoder
    g = torch.Generator().manual_seed(lanes)
    frames = (torch.rand(3, 24, 2, 5, 5, generator=g) < 0.3).to(torch.uint8)
    got = mlif_table.encode_nmnist(frames, lanes, 3)
    assert got.shape == (3, 3, 2, 5, 5) and got.dtype == torch.uint8
    assert set(got.unique().tolist()) <= {0, *(2 ** s for s in range(lanes))}
    enc = MultiLevelEncoder(T_F=3 * 2 ** (lanes - 1), lanes=lanes, merge=True)
    for i in range(3):
        torch.testing.assert_close(got[i].float(), enc(frames[i]), atol=0, rtol=0)


@needs_data
def test_bundle_round_trip_equals_direct_reads(tmp_path):
    from benchmarks.evidence.make_bundle import build_bundle
    man = build_bundle(SHARED, tmp_path / "bundle", n_train=300, n_test=100, seed=0, log=lambda *_: None)
    assert man["format"] == C.BUNDLE_FORMAT and man["bytes"] < 5 * 2**20
    bundle = C.load_cifar_subset(tmp_path / "bundle", 120, 60, 0)      # a smaller subset than stored
    direct = C.load_cifar_subset(SHARED, 120, 60, 0)
    for a in ("train_x", "train_y", "test_x", "test_y"):
        torch.testing.assert_close(getattr(bundle, a), getattr(direct, a), atol=0, rtol=0)
    assert bundle.provenance["train"] == direct.provenance["train"]
    with pytest.raises(ValueError, match="rebuild it with make_bundle.py --train 400"):
        C.load_cifar_subset(tmp_path / "bundle", 400, 60, 0)
    nb = C.load_nmnist(tmp_path / "bundle", None, None, 0)
    nd = C.load_nmnist(SHARED, None, None, 0)
    assert nb.train_frames.shape == (1000, C.NMNIST_RAW_FRAMES, 2, 34, 34) and len(nb.test_y) == 100
    torch.testing.assert_close(nb.train_frames, nd.train_frames, atol=0, rtol=0)
    torch.testing.assert_close(nb.test_y, nd.test_y, atol=0, rtol=0)


def test_profiles_and_dry_run():
    for name in C.PROFILES:
        p = C.get_profile(name)
        assert set(p.epochs) >= {"ann", "qcfs", "hybrid_ft", "direct", "qat", "calib", "mlif_ft", "lq_ft", "nmnist"}
        assert set(p.table_shares) == set(C.TABLES)
    dry = C.get_profile("gpu", dry_run=True, max_seconds=50)
    assert dry.max_batches == 2 and all(v == 1 for v in dry.epochs.values()) and dry.total_seconds == 50
    with pytest.raises(ValueError, match="unknown profile"):
        C.get_profile("tpu")


def test_mlif_profile_names_are_unambiguous(monkeypatch, tmp_path, capsys):
    """The M-LIF table's own small CPU profile is ``mlif-cpu-small`` (old name ``cpu-small``, accepted by
    mlif_table.py only, so the committed result's command reruns); it is not the suite's ``cpu_small``, and the
    look-alike ``cpu_small`` is refused by mlif_table.py instead of silently running the other profile."""
    monkeypatch.setattr(profiles, "PROFILES", dict(profiles.PROFILES))
    assert "cpu-small" not in profiles.PROFILES and "mlif-cpu-small" not in profiles.PROFILES   # suite profiles unchanged
    assert mlif_table.resolve_profile("cpu-small") == "mlif-cpu-small"
    assert mlif_table.resolve_profile("mlif-cpu-small") == "mlif-cpu-small"
    assert mlif_table.resolve_profile("gpu") == "gpu"
    assert C.get_profile("mlif-cpu-small") == mlif_table.CPU_SMALL
    assert C.get_profile("cpu_small") != C.get_profile("mlif-cpu-small")
    assert C.get_profile("cpu_small").epochs != mlif_table.CPU_SMALL.epochs           # really different runs
    assert "cpu-small" not in profiles.PROFILES                                      # alias stays local
    assert mlif_table._resolve_argv(["--profile=cpu-small", "--out", "x"]) == ["--profile=mlif-cpu-small", "--out",
                                                                                 "x"]
    for name in ("cpu_small", "CPU-Small"):
        with pytest.raises(ValueError, match="ambiguous.*mlif-cpu-small"):
            mlif_table.resolve_profile(name)
    assert mlif_table.main(["--profile", "cpu_small", "--out", str(tmp_path)]) == 2   # refused before any work
    err = capsys.readouterr().err
    assert "'cpu_small' is ambiguous" in err and "run_all.py --profile cpu_small --tables mlif" in err
    assert not list(tmp_path.iterdir())
    other = mlif_table.dataclasses.replace(mlif_table.CPU_SMALL, epochs={**mlif_table.CPU_SMALL.epochs, "ann": 1})
    profiles.PROFILES["mlif-cpu-small"] = other                                            # a clash is an error
    with pytest.raises(ValueError, match="'mlif-cpu-small' is ambiguous"):
        mlif_table.register_profiles()


def test_step_seconds_leaves_model_and_loader_alone(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,)))]       # one batch: several passes needed
    sec = C.step_seconds(model, batches, C.TrainSpec(epochs=1, lr=0.5), _TinyCtx(tmp_path), steps=3)
    assert sec > 0
    for k, v in model.state_dict().items():
        torch.testing.assert_close(v, before[k], atol=0, rtol=0)
    with pytest.raises(ValueError, match="no batch"):
        C.step_seconds(model, [], C.TrainSpec(epochs=1, lr=0.5), _TinyCtx(tmp_path))


def test_a_failing_table_is_recorded_and_the_next_one_runs(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from benchmarks.evidence import run_all

    def failing(table):
        table.add_row("g", "m", "s", 50.0, key="first", n=10)
        raise RuntimeError("boom in the middle of the table")

    def fine(table):
        table.add_row("g", "m", "s", 60.0, key="only", n=10)
        table.add_claim("c", "claim", "rule", "not tested", "nothing to compare")

    def judge(table):
        table.add_claim("j", "judged", "rule", "not tested", f"{len(table.rows)} row(s)")

    fake = {"lmht": SimpleNamespace(NAME="lmht", TITLE="failing table", weights=lambda p: {"x": 1.0}, run=failing,
                                    judge=judge),
            "qac": SimpleNamespace(NAME="qac", TITLE="fine table", weights=lambda p: {"x": 1.0}, run=fine,
                                   judge=lambda table: None)}
    monkeypatch.setattr(run_all, "MODULES", fake)
    rc = run_all.main(["--profile", "quick", "--out", str(tmp_path), "--tables", "lmht,qac", "--quiet",
                       "--data", str(tmp_path)])
    assert rc == 0          # one table is partial, none failed outright
    bad = json.loads((tmp_path / "evidence_lmht.json").read_text())
    assert bad["status"] == "partial" and "boom" in bad["errors"][0]["error"] and bad["rows"][0]["key"] == "first"
    assert bad["claims"][0]["reason"] == "1 row(s)"          # verdicts still run after a failure
    good = json.loads((tmp_path / "evidence_qac.json").read_text())
    assert good["status"] == "ok" and good["claims"][0]["verdict"] == "not tested"
    summary = json.loads((tmp_path / "evidence_summary.json").read_text())
    assert [t["status"] for t in summary["tables"]] == ["partial", "ok"]
    with pytest.raises(SystemExit):
        run_all.main(["--profile", "quick", "--out", str(tmp_path), "--tables", "nope"])


def test_plan_equal_epochs_shares_one_epoch_count(tmp_path):
    ctx = _TinyCtx(tmp_path)
    table = C.TableRun("t", "t", ctx, 1e6, {"grp": 1.0})
    batches = [(torch.randn(4, 3, 2, 2), torch.randint(0, 3, (4,))) for _ in range(5)]
    small = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
    big = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 512), torch.nn.Linear(512, 3))
    spec = C.TrainSpec(epochs=3, lr=0.1)
    epochs, allots = C.plan_equal_epochs(table, "grp", [("a", small, batches, spec), ("b", big, batches, spec)], 3)
    assert epochs == 3 and set(allots) == {"a", "b"} and all(v > 0 for v in allots.values())
    plan = table.extra["equal_epoch_plans"]["grp"]
    assert plan["common_epochs"] == 3 and not plan["cut"] and set(plan["members"]) == {"a", "b"}
    # Past the run's hard deadline nothing is probed and every member gets the minimum.
    ctx.hard_deadline = time.perf_counter() - 1
    table2 = C.TableRun("t", "t", ctx, 1e6, {"grp": 1.0})
    epochs, allots = C.plan_equal_epochs(table2, "grp", [("a", small, batches, spec)], 3)
    assert epochs == 1.0 and allots == {"a": 0.0} and table2.extra["equal_epoch_plans"]["grp"]["cut"]


def test_command_line_records_out_placeholder(monkeypatch):
    monkeypatch.setenv("OUT", "/some/device/path")
    cmd = C.command_line([str(REPO / "benchmarks/evidence/run_all.py"), "--profile", "gpu", "--out",
                          "/some/device/path", "--commit", "abc"])
    assert cmd == "PYTHONPATH=. python3 benchmarks/evidence/run_all.py --profile gpu --out $OUT --commit abc"


def test_an_interrupted_run_writes_what_it_has_and_skips_the_rest(tmp_path, monkeypatch):
    from types import SimpleNamespace

    from benchmarks.evidence import run_all

    def interrupted(table):
        table.add_row("g", "m", "s", 42.0, key="done", n=10)
        raise C.Interrupted("received signal SIGTERM")

    def never(table):
        raise AssertionError("a table after the interruption must not run")

    fake = {"lmht": SimpleNamespace(NAME="lmht", TITLE="t1", weights=lambda p: {}, run=interrupted,
                                    judge=lambda table: None),
            "qac": SimpleNamespace(NAME="qac", TITLE="t2", weights=lambda p: {}, run=never, judge=lambda t: None)}
    monkeypatch.setattr(run_all, "MODULES", fake)
    rc = run_all.main(["--profile", "quick", "--out", str(tmp_path), "--tables", "lmht,qac", "--quiet",
                       "--data", str(tmp_path)])
    assert rc == 2
    res = json.loads((tmp_path / "evidence_lmht.json").read_text())
    assert res["status"] == "interrupted" and res["rows"][0]["accuracy"] == 42.0
    summary = json.loads((tmp_path / "evidence_summary.json").read_text())
    assert [t["status"] for t in summary["tables"]] == ["interrupted", "skipped"]


@needs_data
def test_sigterm_mid_run_leaves_partial_results(tmp_path):
    import signal
    env = dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    cmd = [sys.executable, str(REPO / "benchmarks" / "evidence" / "run_all.py"), "--profile", "quick", "--data",
           str(SHARED), "--out", str(tmp_path), "--quiet"]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    first = tmp_path / "evidence_lmht.json"
    deadline = time.time() + 120
    while not first.exists() and proc.poll() is None and time.time() < deadline:
        time.sleep(0.2)                              # the first finished row is written while the table runs
    assert proc.poll() is None, "the quick run ended before it could be interrupted"
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=120)
    assert proc.returncode == 2, err[-2000:]
    res = json.loads(first.read_text())
    assert res["status"] == "interrupted" and res["rows"] and "SIGTERM" in res["errors"][-1]["error"]
    summary = json.loads((tmp_path / "evidence_summary.json").read_text())
    assert [t["status"] for t in summary["tables"]] == ["interrupted", "skipped", "skipped"]
