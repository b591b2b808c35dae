"""benchmarks/speedrun/combine.py: per-flavour runs merge into one summary without losing any run's provenance."""
import importlib.util
from pathlib import Path

spec = importlib.util.spec_from_file_location(
    "speedrun_combine", Path(__file__).resolve().parents[1] / "benchmarks" / "speedrun" / "combine.py")
combine_mod = importlib.util.module_from_spec(spec)
spec.loader.exec_module(combine_mod)


def _part(flavour: str, commit: str, complete: bool, **keys) -> dict:
    return {"flavours": [flavour], "commit": commit, "complete": complete, "date": "2026-12-05T00:00:00Z",
            "commands": [f"multispike train --config configs/speedrun/airbench_{flavour}.yaml --out r/{flavour}"],
            "step_seconds": {f"{flavour}_train_s": 10.0}, "cpu": "test cpu", **keys}


def test_parts_merge_with_their_own_provenance():
    res = combine_mod.combine([_part("ann", "aaa", True, ann_top1=0.9),
                               _part("qcfs", "bbb", True, quantized_top1=0.88, snn_top1=0.879, snn_T=2,
                                     wall_seconds=100.0),
                               _part("qac", "bbb", False, qac_snn_top1=0.87, qac_avg_T=2.0)])
    assert res["ann_top1"] == 0.9 and res["snn_top1"] == 0.879 and res["qac_avg_T"] == 2.0
    assert res["wall_seconds"] == 100.0 and res["cpu"] == "test cpu"
    assert res["runs"]["ann"]["commit"] == "aaa" and res["runs"]["qac"]["complete"] is False
    assert res["commit"] == ["aaa", "bbb"]
    assert res["complete"] is False                      # one shortened part makes the whole summary incomplete
    assert len(res["commands"]) == 3


def test_missing_part_is_a_clear_error(tmp_path, capsys):
    assert combine_mod.main([str(tmp_path / "nope.json")]) == 2
    assert "no such result file" in capsys.readouterr().err


def _eval_result(acc: float, tta: bool) -> dict:
    return {"accuracy": acc, "meta": {"tta_flip": tta, "elapsed_s": 12.5}}


def test_tta_block_is_added_to_an_existing_summary(tmp_path):
    import json
    summary = tmp_path / "speedrun.json"
    summary.write_text(json.dumps({"ann_top1": 0.87, "snn_top1": 0.86}))
    for key, acc in (("ann", 0.88), ("snn", 0.87)):
        (tmp_path / key).mkdir()
        (tmp_path / key / "result.json").write_text(json.dumps(_eval_result(acc, True)))
    assert combine_mod.main(["--update", str(summary), "--tta", f"ann={tmp_path / 'ann'}",
                             f"snn={tmp_path / 'snn'}"]) == 0
    res = json.loads(summary.read_text())
    assert res["ann_top1"] == 0.87 and res["tta_flip"]["ann_top1"] == 0.88 and res["tta_flip"]["snn_top1"] == 0.87
    assert res["tta_flip"]["eval_seconds"] == {"ann": 12.5, "snn": 12.5} and len(res["tta_flip"]["commands"]) == 2


def test_tta_refuses_results_without_tta_and_unknown_keys(tmp_path, capsys):
    import json
    import pytest
    (tmp_path / "r.json").write_text(json.dumps(_eval_result(0.9, False)))
    with pytest.raises(ValueError, match="not evaluated with --tta-flip"):
        combine_mod.tta_summary({"ann": _eval_result(0.9, False)}, "c", [])
    with pytest.raises(ValueError, match="unknown TTA key"):
        combine_mod.tta_summary({"anm": _eval_result(0.9, True)}, "c", [])
    (tmp_path / "s.json").write_text("{}")
    assert combine_mod.main(["--update", str(tmp_path / "s.json"), "--tta", f"ann={tmp_path / 'r.json'}"]) == 2
    assert "not evaluated with --tta-flip" in capsys.readouterr().err


def test_a_warm_start_run_becomes_the_issue_summary_with_both_wall_clocks(tmp_path, capsys):
    import json
    warm = {"warm_ann_top1": 0.90, "warm_quantized_top1": 0.87, "warm_snn_top1": 0.87, "warm_snn_T": 2, "warm_snn_L": 2,
            "warm_qac_snn_top1": 0.86, "warm_qac_avg_T": 2.4, "warm_wall_seconds": 5000.0, "commit": "abc",
            "commands": ["multispike train ..."], "cpu": "test cpu", "complete": True,
            "step_seconds": {"warm_train_ann_s": 4000.0, "warm_eval_ann_s": 20.0, "warm_train_s": 900.0,
                             "warm_convert_s": 50.0, "warm_eval_s": 30.0, "warm_eval_tta_s": 200.0,
                             "warm_qac_train_s": 800.0, "warm_qac_convert_s": 60.0, "warm_qac_eval_s": 70.0}}
    src = tmp_path / "warm.json"
    src.write_text(json.dumps(warm))
    out = tmp_path / "speedrun_cpu.json"
    assert combine_mod.main(["--warm", str(src), "--out", str(out)]) == 0
    res = json.loads(out.read_text())
    assert (res["ann_top1"], res["quantized_top1"], res["snn_top1"], res["snn_T"]) == (0.90, 0.87, 0.87, 2)
    assert (res["qac_snn_top1"], res["qac_avg_T"]) == (0.86, 2.4)
    assert res["wall_seconds"] == 980.0 and res["pipeline_wall_seconds"] == 5000.0   # issue's definition; with ANN
    assert res["qac_wall_seconds"] == 930.0
    assert res["commit"] == "abc" and res["cpu"] == "test cpu" and res["source"] == str(src)
    del warm["warm_qac_avg_T"]
    src.write_text(json.dumps(warm))
    assert combine_mod.main(["--warm", str(src), "--out", str(out)]) == 2
    assert "warm_qac_avg_T" in capsys.readouterr().err


def _summary_module():
    spec = importlib.util.spec_from_file_location(
        "speedrun_summary", Path(__file__).resolve().parents[1] / "benchmarks" / "speedrun" / "summary_table.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_readme_speedrun_summary_is_generated_from_the_committed_json():
    """The README's speedrun tables are never typed in: its marked block equals the render of speedrun_cpu.json,
    whose keys are issue 15's (and the targets table marks each target against the measured value)."""
    import json
    root = Path(__file__).resolve().parents[1]
    st = _summary_module()
    src = "benchmarks/results/speedrun_cpu.json"
    res = json.loads((root / src).read_text())
    for key in ("ann_top1", "quantized_top1", "snn_top1", "snn_T", "qac_snn_top1", "qac_avg_T", "wall_seconds",
                "commit", "commands", "cpu"):
        assert key in res, key
    md = st.render(res, src)
    readme = (root / "README.md").read_text()
    begin, end = st.MARKERS
    assert readme[readme.index(begin) + len(begin):readme.index(end)].strip("\n") == md
    assert f"| float ANN | ≥ 93.5 % | {100 * res['ann_top1']:.2f} % |" in md


def test_summary_targets_follow_the_numbers(tmp_path):
    """A run meeting every target renders 'yes' everywhere; the QAC layers print in network order."""
    st = _summary_module()
    ev = {"accuracy_vs_T": [[1, 0.93], [2, 0.94]], "spike_rate": 0.1, "energy_delta_diet": 10.0,
          "energy_uj_ann": 500.0, "energy_uj_multispike": 20.0,
          "layer_timesteps": {"features.10": 2, "features.3": 3, "features.0": 4}}
    res = {"cpu": "x", "commit": "c" * 40, "date": "d", "snn_eval": ev, "qac_snn_eval": ev, "snn_L": 2, "snn_T": 2,
           "ann_top1": 0.94, "quantized_top1": 0.93, "snn_top1": 0.93, "qac_quantized_top1": 0.925,
           "qac_snn_top1": 0.925, "qac_avg_T": 2.4, "wall_seconds": 3000.0}
    md = st.render(res, "r.json")
    assert "**no**" not in md and md.count("| yes |") == 7 and "T_l 4,3,2: avg 2.40" in md
    res["qac_avg_T"] = 2.6
    assert "| its average T | ≤ 2.5 | 2.60 | **no** |" in st.render(res, "r.json")
    readme = tmp_path / "R.md"
    readme.write_text(f"a\n{st.MARKERS[0]}\nold\n{st.MARKERS[1]}\nb\n")
    (tmp_path / "r.json").write_text(__import__("json").dumps(res))
    assert st.main([str(tmp_path / "r.json"), "--update", str(readme)]) == 0
    assert "old" not in readme.read_text() and "T_l 4,3,2" in readme.read_text()
