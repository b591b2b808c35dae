"""Checkpoints are data: a crafted checkpoint that names code (``os:system``, ``builtins:eval``, a module of its
own) is refused at every entry point without importing anything, and an edited JSON record is detected.

The "planted module" ``ms_planted_hook`` sits on ``sys.path`` and writes a marker file when imported, so each
test can assert that nothing was imported - not only that an error was raised.
"""
import json
import sys
from pathlib import Path

import pytest
import torch

from multispike.cli.main import main
from multispike.models import create_model
from multispike.neurons.base import reset_net
from multispike.train import (TRUSTED_HOOKS_ENV, CheckpointError, UntrustedHookError, load_checkpoint,
                              register_convert_hook, save_checkpoint)
from multispike.train.config import TrainConfig
from multispike.train.hooks import _REGISTERED, list_convert_hooks, resolve_convert_hook
from multispike.train.hybrid import lmht_hybrid
from multispike.convert.recipe import restore_structure, structure_snapshot
from multispike.train.rebuild import build_structure, rebuild_model

PLANTED = "ms_planted_hook"
EVIL_HOOKS = ["os:system", "builtins:eval", "subprocess:call", f"{PLANTED}:run"]
BASE_CFG = {"dataset": "digits", "num_classes": 10, "in_channels": 1, "model_kwargs": {"input_size": 8},
            "normalize": True}


@pytest.fixture
def planted(tmp_path, monkeypatch):
    """A module on sys.path whose import leaves a marker file; yields the marker path."""
    marker = tmp_path / "IMPORTED"
    pkg = tmp_path / "planted"
    pkg.mkdir()
    (pkg / f"{PLANTED}.py").write_text(f"open({str(marker)!r}, 'w').write('x')\n"
                                      "def run(*a, **k):\n    raise SystemExit('planted hook ran')\n")
    monkeypatch.syspath_prepend(str(pkg))
    sys.modules.pop(PLANTED, None)
    yield marker
    sys.modules.pop(PLANTED, None)


def _ann_checkpoint(root: Path, neuron: str = "relu", **cfg) -> Path:
    torch.manual_seed(0)
    kw = {"levels": cfg["levels"]} if "levels" in cfg else {}
    ann = create_model("vgg_small", num_classes=10, neuron=neuron, T=1, in_channels=1, neuron_kwargs=kw,
                       input_size=8)
    config = dict(BASE_CFG, model="vgg_small", neuron=neuron, timesteps=1, mode="ann", **cfg)
    save_checkpoint(root / "checkpoints", ann, None, {"model": "vgg_small", "config": config}, epoch=1, step=1)
    return root


def _hybrid_checkpoint(root: Path, ann: Path, hook: str, model=None) -> Path:
    """A hybrid-run checkpoint whose config names ``hook`` (weights from ``model`` or a plain IF net)."""
    if model is None:
        model = create_model("vgg_small", num_classes=10, neuron="if", T=2, in_channels=1, input_size=8)
    config = dict(BASE_CFG, model="vgg_small", neuron="lmht", levels=2, timesteps=2, mode="hybrid",
                  ann_checkpoint=str(ann), convert_hook=hook)
    save_checkpoint(root / "checkpoints", model, None, {"model": "vgg_small", "config": config}, epoch=1, step=1)
    return root


@pytest.fixture
def ann(tmp_path):
    return _ann_checkpoint(tmp_path / "ann")


def _assert_refused(exc_info_or_text, hook: str, marker: Path) -> None:
    text = exc_info_or_text if isinstance(exc_info_or_text, str) else str(exc_info_or_text.value)
    assert hook in text and "not a registered hook" in text and TRUSTED_HOOKS_ENV in text
    assert not marker.exists() and PLANTED not in sys.modules


@pytest.mark.parametrize("hook", EVIL_HOOKS)
def test_rebuild_model_refuses_a_hook_that_is_not_registered(tmp_path, ann, planted, hook):
    ck = _hybrid_checkpoint(tmp_path / "hy", ann, hook)
    with pytest.raises(UntrustedHookError) as exc:
        rebuild_model(ck)
    _assert_refused(exc, hook, planted)
    # a hand-made descriptor is refused by build_structure as well, before the ANN is built
    desc = {"kind": "hybrid", "model": "vgg_small", "config": {"convert_hook": hook},
            "ann": {"kind": "zoo", "model": "no_such_model", "config": {}}}
    with pytest.raises(UntrustedHookError):
        build_structure(desc)
    assert not planted.exists()


def test_a_hook_nested_in_a_conversion_recipe_is_refused_too(tmp_path, ann, planted):
    """A converted checkpoint embeds its source's descriptor: a planted hook two levels down is found before any
    module is built."""
    ck = load_checkpoint(_ann_checkpoint(tmp_path / "src"))
    net = create_model("vgg_small", num_classes=10, neuron="if", T=2, in_channels=1, input_size=8)
    evil_source = {"kind": "hybrid", "model": "vgg_small", "config": {"convert_hook": f"{PLANTED}:run"},
                   "ann": {"kind": "zoo", "model": "vgg_small", "config": ck.meta["config"]}}
    meta = {"model": "vgg_small", "config": dict(BASE_CFG, model="vgg_small", neuron="if", timesteps=2),
            "conversion": {"version": 1, "source": evil_source, "steps": []}, "structure": structure_snapshot(net)}
    save_checkpoint(tmp_path / "conv" / "checkpoints", net, None, meta, epoch=0, step=0)
    with pytest.raises(UntrustedHookError) as exc:
        rebuild_model(tmp_path / "conv")
    _assert_refused(exc, f"{PLANTED}:run", planted)


@pytest.mark.parametrize("entry", ["eval", "convert", "export", "init_from", "ann_checkpoint"])
def test_every_cli_entry_refuses_the_crafted_checkpoint(tmp_path, ann, planted, capsys, entry):
    hook = f"{PLANTED}:run"
    ck = _hybrid_checkpoint(tmp_path / "hy", ann, hook)
    out = tmp_path / "out"
    quick = ["--dataset", "digits", "--batch-size", "16", "--no-progress", "--num-threads", "1", "--epochs", "1",
             "--subset", "32", "--eval-subset", "16", "--out", str(out)]
    argv = {
        "eval": ["eval", "--checkpoint", str(ck), "--limit", "8", "--no-plots", "--no-progress", "--out", str(out)],
        "convert": ["convert", "--checkpoint", str(ck), "--to", "if", "--timesteps", "2", "--limit", "8", "--out",
                    str(out)],
        "export": ["export", "--checkpoint", str(ck), "--samples", "2", "--out", str(tmp_path / "x.nir")],
        "init_from": ["train", "--init-from", str(ck), "--mode", "snn", *quick],
        # the ANN of a hybrid run is itself rebuilt from its checkpoint: a crafted "ANN" must not smuggle a hook
        "ann_checkpoint": ["train", "--mode", "hybrid", "--ann-checkpoint", str(ck), "--convert-hook",
                           "multispike.train.hybrid:lmht_hybrid", "--levels", "2", "--timesteps", "2", *quick],
    }[entry]
    assert main(argv) == 2
    err = capsys.readouterr().err
    _assert_refused(err, hook, planted)
    assert len(err.strip().splitlines()) == 1   # one clear line, no traceback


def _legit_hybrid(tmp_path: Path, hook: str = "multispike.train.hybrid:lmht_hybrid"):
    ann = _ann_checkpoint(tmp_path / "qcfs", neuron="qcfs", levels=4)
    ann_model, _ = rebuild_model(ann)
    cfg = TrainConfig(model="vgg_small", neuron="lmht", levels=2, timesteps=2, mode="hybrid")
    snn = lmht_hybrid(ann_model, cfg)
    with torch.no_grad():
        for p in snn.parameters():
            p.add_(0.01 * torch.randn_like(p))   # trained values differ from the conversion's
    return _hybrid_checkpoint(tmp_path / "hy", ann, hook, model=snn), snn


def _outputs(model, x):
    reset_net(model)
    model.eval()
    with torch.no_grad():
        return model(x)


def test_registered_hooks_rebuild_and_old_version1_checkpoints_still_load(tmp_path):
    ck, snn = _legit_hybrid(tmp_path)
    x = torch.randn(3, 1, 8, 8)
    expected = _outputs(snn, x)
    assert torch.equal(_outputs(rebuild_model(ck)[0], x), expected)
    # A checkpoint written before the JSON digest (format version 1) naming an allow-listed hook loads unchanged.
    json_path = load_checkpoint(ck).path
    meta = json.loads(json_path.read_text())
    meta.pop("meta_sha256")
    meta["version"] = 1
    json_path.write_text(json.dumps(meta, indent=1, sort_keys=True))
    assert torch.equal(_outputs(rebuild_model(ck)[0], x), expected)
    # ... but a version-1 checkpoint naming a planted hook is refused like any other
    meta["config"]["convert_hook"] = "os:system"
    json_path.write_text(json.dumps(meta))
    with pytest.raises(UntrustedHookError):
        rebuild_model(ck)


def test_edited_json_is_detected(tmp_path, ann):
    ck = _hybrid_checkpoint(tmp_path / "hy", ann, "multispike.train.hybrid:lmht_hybrid")
    json_path = load_checkpoint(ck).path
    original = json_path.read_text()
    for edit in (lambda m: m["config"].update(convert_hook="os:system"), lambda m: m.update(epoch=7),
                 lambda m: m.update(meta_sha256="0" * 64), lambda m: m.pop("meta_sha256"),
                 lambda m: m["config"]["model_kwargs"].update(input_size=9)):
        meta = json.loads(original)
        edit(meta)
        json_path.write_text(json.dumps(meta, indent=1, sort_keys=True))
        with pytest.raises(CheckpointError, match="changed after it was written|lacks its meta_sha256"):
            load_checkpoint(ck)
    # re-indenting (same content) is not an edit: the digest is over canonical JSON
    json_path.write_text(json.dumps(json.loads(original), indent=4))
    assert load_checkpoint(ck).meta["epoch"] == 1
    # a referenced ANN checkpoint whose JSON was edited is detected when the hybrid run is rebuilt
    ann_json = load_checkpoint(ann).path
    meta = json.loads(ann_json.read_text())
    meta["config"]["neuron"] = "if"
    ann_json.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="changed after it was written"):
        rebuild_model(ck)


def test_a_user_hook_loads_once_registered_or_explicitly_trusted(tmp_path, planted, monkeypatch):
    def my_hook(ann, cfg):
        return lmht_hybrid(ann, cfg)

    ck, snn = _legit_hybrid(tmp_path, hook="tests.my_hook")
    with pytest.raises(UntrustedHookError, match="tests.my_hook"):
        rebuild_model(ck)
    try:
        register_convert_hook(my_hook, name="tests.my_hook")
        assert "tests.my_hook" in list_convert_hooks()
        x = torch.randn(2, 1, 8, 8)
        assert torch.equal(_outputs(rebuild_model(ck)[0], x), _outputs(snn, x))
        with pytest.raises(ValueError, match="already registered"):
            register_convert_hook(lambda a, c: a, name="tests.my_hook")
    finally:
        _REGISTERED.pop("tests.my_hook", None)
    with pytest.raises(ValueError, match="built-in"):
        register_convert_hook(my_hook, name="lmht_hybrid")
    # the explicit opt-in imports exactly the listed name, nothing else
    monkeypatch.setenv(TRUSTED_HOOKS_ENV, f"other:fn, {PLANTED}:run")
    with pytest.raises(UntrustedHookError):
        resolve_convert_hook(f"{PLANTED}:other")
    assert not planted.exists()
    hook = resolve_convert_hook(f"{PLANTED}:run")
    assert planted.exists() and callable(hook)


def test_user_typed_hooks_are_imported_but_checkpoint_names_are_not(planted):
    from multispike.train.runner import load_convert_hook

    with pytest.raises(UntrustedHookError):
        resolve_convert_hook(f"{PLANTED}:run")
    assert not planted.exists()
    assert callable(load_convert_hook(f"{PLANTED}:run"))   # --convert-hook on the command line: the user's choice
    assert planted.exists()


@pytest.mark.parametrize("key,value,why", [
    ("forward", "x", "method or property"), ("_forward_hooks", 1, "public attribute"), ("training", True,
                                                                                         "public attribute"),
    ("weight", 1.0, "parameter, buffer"), ("v_threshold", [1, 2], "type list"), ("T", {"a": 1}, "type dict"),
])
def test_structure_snapshots_only_set_plain_data_attributes(key, value, why):
    net = create_model("vgg_small", num_classes=10, neuron="if", T=2, in_channels=1, input_size=8)
    snap = structure_snapshot(net)
    conv = next(n for n, m in net.named_modules() if isinstance(m, torch.nn.Conv2d))
    target = "" if key in ("forward", "T") else conv
    snap["attributes"] = {target: {key: value}}
    with pytest.raises(CheckpointError, match=why):
        restore_structure(net, snap)


def test_pointers_and_tensor_files_stay_in_the_checkpoint_directory(tmp_path, ann):
    ck = load_checkpoint(ann)
    other = tmp_path / "elsewhere"
    _ann_checkpoint(other)
    (ann / "checkpoints" / "last.json").write_text(json.dumps(
        {"format": "multispike-checkpoint-pointer", "checkpoint": "../../elsewhere/checkpoints/" + ck.path.name}))
    with pytest.raises(CheckpointError, match="not a checkpoint file name"):
        load_checkpoint(ann)
    meta = json.loads(ck.path.read_text())
    meta["tensors_file"] = "../../elsewhere/checkpoints/" + meta["tensors_file"]
    meta["version"] = 1   # (a version-2 record would fail its digest first)
    meta.pop("meta_sha256")
    ck.path.write_text(json.dumps(meta))
    with pytest.raises(CheckpointError, match="is not a file name beside it"):
        load_checkpoint(ck.path)
