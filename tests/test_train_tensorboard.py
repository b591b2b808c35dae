"""``multispike train --tensorboard DIR``: TensorBoard event files that match log.jsonl, and a clear error when
the tensorboard package is absent (issue 17)."""
import json
import sys
from pathlib import Path

import pytest

from multispike.cli.main import main

REPO = Path(__file__).resolve().parents[1]
CPU = REPO / "configs" / "cpu"
ARGS = ["--dataset", "digits", "--subset", "96", "--eval-subset", "32", "--batch-size", "32", "--crop-padding", "0",
        "--model-kwargs", "input_size=8", "--no-progress", "--num-threads", "1"]


def test_tensorboard_scalars_match_the_jsonl_log(tmp_path):
    pytest.importorskip("tensorboard", reason="tensorboard is in the 'interop' test extra (make test installs it)")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    out, tb = tmp_path / "run", tmp_path / "tb"
    assert main(["train", "--config", str(CPU / "digits_vgg_small_if.yaml"), "--epochs", "2", "--out", str(out),
                 "--tensorboard", str(tb), *ARGS]) == 0
    log = [json.loads(x) for x in (out / "log.jsonl").read_text().splitlines()]
    epochs = [r for r in log if r["event"] == "epoch"]
    acc = EventAccumulator(str(tb))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "train/acc", "lr", "eval/acc", "train/images_per_s"} <= tags
    T = len(epochs[-1]["eval_acc_per_t"])
    assert {f"eval/acc_t{t}" for t in range(1, T + 1)} <= tags
    for tag, key in (("train/loss", "train_loss"), ("train/acc", "train_acc"), ("eval/acc", "eval_acc"),
                     ("lr", "lr")):
        got = [(e.step, e.value) for e in acc.Scalars(tag)]
        assert [s for s, _ in got] == [1, 2]
        assert [v for _, v in got] == pytest.approx([r[key] for r in epochs], rel=1e-6), tag
    (text,) = acc.Tensors("summary/text_summary")  # the final summary record, as text
    summary = json.loads(text.tensor_proto.string_val[0].decode().strip("`\n"))
    assert summary == json.loads(json.dumps(log[-1]))


def test_missing_tensorboard_is_one_clear_line(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # as if the package were not installed
    out = tmp_path / "run"
    rc = main(["train", "--config", str(CPU / "digits_vgg_small_if.yaml"), "--epochs", "1", "--out", str(out),
               "--tensorboard", str(tmp_path / "tb"), *ARGS])
    err = capsys.readouterr().err
    assert rc == 2
    assert "--tensorboard needs the 'tensorboard' package" in err and "multispike[tensorboard]" in err
    assert not (out / "checkpoints").exists()  # refused before training started
