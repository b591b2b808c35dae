"""``multispike train`` end to end: the shipped CPU recipes run (ANN, QAT, SNN, TET, both hybrids) and resume."""
import json
from pathlib import Path

import pytest

from multispike.cli.main import main
from multispike.data import dataset_status
from multispike.train import load_checkpoint

REPO = Path(__file__).resolve().parents[1]
CPU = REPO / "configs" / "cpu"
QUICK = ["--no-progress", "--num-threads", "1"]


def _log(out: Path) -> list[dict]:
    return [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]


def test_digits_recipe_trains_then_resume_extends_the_run(tmp_path, capsys):
    out = tmp_path / "digits"
    assert main(["train", "--config", str(CPU / "digits_vgg_small_if.yaml"), "--epochs", "1", "--out", str(out),
                 *QUICK]) == 0
    assert "final accuracy" in capsys.readouterr().out
    for name in ("config.json", "args.yaml", "log.jsonl", "summary.json", "checkpoints/last.json"):
        assert (out / name).exists(), name
    first = _log(out)
    assert [r["event"] for r in first] == ["epoch", "summary"] and first[0]["eval_acc"] > 0.3
    steps = first[-1]["steps"]
    # a second invocation without --resume refuses to overwrite the run
    assert main(["train", "--config", str(CPU / "digits_vgg_small_if.yaml"), "--epochs", "1", "--out", str(out),
                 *QUICK]) == 2
    assert "already holds checkpoints" in capsys.readouterr().err
    # --resume continues the same run for one more epoch (epochs may grow; the model may not change)
    assert main(["train", "--config", str(CPU / "digits_vgg_small_if.yaml"), "--epochs", "2", "--out", str(out),
                 "--resume", *QUICK]) == 0
    log = _log(out)
    assert [r.get("epoch") for r in log if r["event"] == "epoch"] == [1, 2]
    assert log[-1]["steps"] == 2 * steps and load_checkpoint(out).meta["next_epoch"] == 2
    assert main(["train", "--config", str(CPU / "digits_vgg_small_if.yaml"), "--epochs", "3", "--out", str(out),
                 "--resume", "--timesteps", "4", *QUICK]) == 2
    assert "timesteps: 2 (checkpoint) vs 4 (now)" in capsys.readouterr().err


# Every CPU recipe, shrunk to the embedded digits data (8x8, 1 channel) so the whole set runs in seconds; hybrid
# stage 2 starts from the stage-1 run just made.
RECIPES = ["vgg_small_if_cifar10", "resnet8_lmht_cifar10", "vgg_small_lif_tet_cifar10", "vgg_small_qac_qat_cifar10",
           "vgg_small_qcfs_ann_cifar10", "vgg_small_lmht_hybrid_cifar10", "vgg_small_relu_ann_cifar10",
           "vgg_small_mlif_hybrid_cifar10"]
ANN_OF = {"vgg_small_lmht_hybrid_cifar10": "vgg_small_qcfs_ann_cifar10",
          "vgg_small_mlif_hybrid_cifar10": "vgg_small_relu_ann_cifar10"}


def test_every_cpu_recipe_runs_on_a_small_dataset(tmp_path):
    assert sorted(RECIPES + ["digits_vgg_small_if"]) == sorted(p.stem for p in CPU.glob("*.yaml"))
    for name in RECIPES:
        argv = ["train", "--config", str(CPU / f"{name}.yaml"), "--dataset", "digits", "--subset", "96",
                "--eval-subset", "32", "--epochs", "1", "--batch-size", "32", "--crop-padding", "0",
                "--model-kwargs", "input_size=8", "--out", str(tmp_path / name), *QUICK]
        if name in ANN_OF:
            argv += ["--ann-checkpoint", str(tmp_path / ANN_OF[name])]
        assert main(argv) == 0, name
        log = _log(tmp_path / name)
        summary = log[-1]
        assert summary["event"] == "summary" and summary["steps"] == 3, name
        cfg = json.loads((tmp_path / name / "config.json").read_text())
        assert len(summary["final_acc_per_t"]) == (cfg["timesteps"] if cfg["mode"] in ("snn", "hybrid") else 1), name
        if cfg["mode"] == "qat":
            assert log[0]["quantizers"] and log[0]["mean_timesteps"] == 4.0
        if cfg["mode"] == "hybrid":
            assert summary["model"] == "vgg_small"


def test_cifar10_recipe_on_real_data(tmp_path):
    row = next(r for r in dataset_status() if r.name == "cifar10")
    if not row.found:
        pytest.skip(f"CIFAR-10 not found ({row.fix})")
    out = tmp_path / "c10"
    assert main(["train", "--config", str(CPU / "vgg_small_if_cifar10.yaml"), "--subset", "64", "--eval-subset", "64",
                 "--epochs", "1", "--out", str(out), *QUICK]) == 0
    log = _log(out)
    assert log[0]["train_samples"] == 64 and log[0]["eval_samples"] == 64
    ck = load_checkpoint(out)
    assert ck.meta["config"]["num_classes"] == 10 and ck.meta["config"]["in_channels"] == 3
    assert len(log[-1]["final_acc_per_t"]) == 2 and 0.0 <= log[-1]["final_acc"] <= 1.0
