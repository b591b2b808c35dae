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
