"""Checkpoints: safetensors + JSON round trip, atomicity, corrupt/truncated/mismatched files rejected clearly."""
import json
import random

import numpy as np
import pytest
import torch
from torch import nn

from multispike.train import (CheckpointError, capture_rng_state, load_checkpoint, load_model_state,
                              restore_rng_state, save_checkpoint)
from multispike.train.checkpoint import atomic_write_text, flatten_optimizer_state, unflatten_optimizer_state


def _net():
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(2, 3, 3), nn.BatchNorm2d(3), nn.Flatten(), nn.Linear(3 * 4 * 4, 5))


def _trained(opt_name="adam"):
    net = _net()
    opt = torch.optim.Adam(net.parameters(), lr=1e-2, betas=(0.8, 0.95)) if opt_name == "adam" else \
        torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    for _ in range(2):
        opt.zero_grad()
        net(torch.randn(4, 2, 6, 6)).square().mean().backward()
        opt.step()
    return net, opt


@pytest.mark.parametrize("opt_name", ["adam", "sgd"])
def test_round_trip_is_exact(tmp_path, opt_name):
    net, opt = _trained(opt_name)
    path = save_checkpoint(tmp_path, net, opt, {"model": "seq", "extra": [1, 2]}, epoch=1, step=2)
    ck = load_checkpoint(tmp_path)          # via last.json
    assert ck.path == path and ck.meta["extra"] == [1, 2] and ck.meta["step"] == 2
    for k, v in net.state_dict().items():
        torch.testing.assert_close(ck.model_state[k], v, atol=0, rtol=0)
        assert ck.model_state[k].dtype == v.dtype       # num_batches_tracked stays int64
    net2 = _net()
    opt2 = type(opt)(net2.parameters(), lr=1.0)
    load_model_state(net2, ck.model_state)
    opt2.load_state_dict(ck.optimizer_state)
    ref, got = opt.state_dict(), opt2.state_dict()
    assert got["param_groups"] == ref["param_groups"]
    for idx, st in ref["state"].items():
        for key, val in st.items():
            torch.testing.assert_close(got["state"][idx][key], val, atol=0, rtol=0)
    # one more identical step on both gives identical weights
    x = torch.randn(4, 2, 6, 6)
    for n, o in ((net, opt), (net2, opt2)):
        o.zero_grad()
        n(x).square().mean().backward()
        o.step()
    for a, b in zip(net.parameters(), net2.parameters()):
        torch.testing.assert_close(a, b, atol=0, rtol=0)


def test_flatten_optimizer_state_round_trip():
    _, opt = _trained("adam")
    tensors, meta = flatten_optimizer_state(opt.state_dict())
    assert all(k.startswith("optim.") for k in tensors)
    json.dumps(meta)   # plain JSON
    back = unflatten_optimizer_state(tensors, meta)
    assert back["param_groups"][0]["betas"] == (0.8, 0.95)


def test_no_pickle_in_files(tmp_path):
    net, opt = _trained()
    save_checkpoint(tmp_path, net, opt, {"model": "seq"}, epoch=0, step=2)
    for p in tmp_path.iterdir():
        data = p.read_bytes()
        assert not data.startswith(b"\x80") and b"PK\x03\x04" not in data[:4]   # neither pickle nor torch zip


def test_truncated_tensor_file_is_rejected(tmp_path):
    net, opt = _trained()
    path = save_checkpoint(tmp_path, net, opt, {"model": "seq"}, epoch=0, step=2)
    st = path.with_suffix(".safetensors")
    st.write_bytes(st.read_bytes()[:100])
    with pytest.raises(CheckpointError, match=r"have 100 bytes but .* records .*truncated"):
        load_checkpoint(tmp_path)


def test_corrupt_tensor_file_is_rejected(tmp_path):
    net, opt = _trained()
    path = save_checkpoint(tmp_path, net, opt, {"model": "seq"}, epoch=0, step=2)
    st = path.with_suffix(".safetensors")
    data = bytearray(st.read_bytes())
    data[-5] ^= 0xFF
    st.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match=r"are corrupt: sha256 .* does not match"):
        load_checkpoint(path)


def test_corrupt_json_and_foreign_files_are_rejected(tmp_path):
    net, opt = _trained()
    path = save_checkpoint(tmp_path, net, opt, {"model": "seq"}, epoch=0, step=2)
    path.write_text(path.read_text()[:50])
    with pytest.raises(CheckpointError, match="not valid JSON .*truncated or corrupt"):
        load_checkpoint(tmp_path)
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"hello": 1}))
    with pytest.raises(CheckpointError, match="is not a multispike checkpoint"):
        load_checkpoint(other)
    (tmp_path / "empty_run").mkdir()
    with pytest.raises(CheckpointError, match="no checkpoint in"):
        load_checkpoint(tmp_path / "empty_run")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.json")


def test_checkpoint_of_another_model_is_rejected_with_details(tmp_path):
    net, opt = _trained()
    save_checkpoint(tmp_path, net, opt, {"model": "seq"}, epoch=0, step=2)
    ck = load_checkpoint(tmp_path)
    other = nn.Sequential(nn.Conv2d(2, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.Linear(4 * 4 * 4, 5), nn.ReLU())
    with pytest.raises(CheckpointError, match=r"shape mismatch.*0.weight: checkpoint \(3, 2, 3, 3\) vs model "
                                              r"\(4, 2, 3, 3\).*different model"):
        load_model_state(other, ck.model_state)
    with pytest.raises(CheckpointError, match=r"1 unexpected key\(s\): 3.extra"):
        load_model_state(net, {**ck.model_state, "3.extra": torch.zeros(1)})
    with pytest.raises(CheckpointError, match=r"1 missing key\(s\): 3.bias"):
        load_model_state(net, {k: v for k, v in ck.model_state.items() if k != "3.bias"})


def test_a_failed_write_never_replaces_a_good_checkpoint(tmp_path, monkeypatch):
    net, opt = _trained()
    good = save_checkpoint(tmp_path, net, opt, {"model": "seq"}, epoch=1, step=2)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}

    import safetensors.torch

    def exploding_save(tensors, filename, metadata=None):
        with open(filename, "wb") as f:
            f.write(b"partial")
        raise OSError("disk full")
    monkeypatch.setattr(safetensors.torch, "save_file", exploding_save)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint(tmp_path, net, opt, {"model": "seq"}, epoch=2, step=4)
    after = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    assert after == before                       # no temp files left, nothing replaced
    assert load_checkpoint(tmp_path).path == good


def test_pruning_keeps_newest_and_best(tmp_path):
    net, opt = _trained()
    for step in range(1, 6):
        save_checkpoint(tmp_path, net, opt, {"model": "seq"}, epoch=step, step=step, keep=2, best=(step == 2))
    names = sorted(p.name for p in tmp_path.glob("s*.json"))
    assert names == ["s000000002-e0002.json", "s000000004-e0004.json", "s000000005-e0005.json"]
    assert load_checkpoint(tmp_path / "best.json").meta["step"] == 2
    assert load_checkpoint(tmp_path / "last.json").meta["step"] == 5


def test_atomic_write_text_replaces_whole_file(tmp_path):
    p = tmp_path / "a.txt"
    atomic_write_text(p, "x" * 1000)
    atomic_write_text(p, "short")
    assert p.read_text() == "short" and [q.name for q in tmp_path.iterdir()] == ["a.txt"]


def test_rng_state_round_trips_through_json():
    random.seed(1), np.random.seed(2), torch.manual_seed(3)
    state = json.loads(json.dumps(capture_rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(3))
    random.seed(9), np.random.seed(9), torch.manual_seed(9)
    restore_rng_state(state)
    b = (random.random(), np.random.rand(), torch.rand(3))
    assert a[0] == b[0] and a[1] == b[1]
    torch.testing.assert_close(a[2], b[2], atol=0, rtol=0)
    with pytest.raises(CheckpointError, match="rng state is malformed"):
        restore_rng_state({"python": [3]})
