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
