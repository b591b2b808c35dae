"""``multispike calibrate``'s workflow (QAC §4.5: v(0) and θ of a converted SNN learned against its ANN) and the
search for that ANN through the checkpoints' records."""
from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any, Mapping

from ..._errors import ParameterError
from ..._validate import check_positive_int
from .common import (_check_out, _clean_config, _curve, _data_config, _pct, _timestep_rows, _write_json, data_spec,
                     format_table, prefix_accuracy, save_network, static_loader)

__all__ = ["teacher_checkpoint", "calibrate_checkpoint"]


def teacher_checkpoint(meta: Mapping[str, Any], path: str | os.PathLike) -> Path:
    """The checkpoint of the ANN a converted network came from.

    Follows conversion sources, and the ``init_from`` of spiking fine-tunes, back to the first network that is
    an ANN: a checkpoint trained in mode ``ann`` or ``qat`` is the teacher *even when it started from another
    checkpoint* (after ``qat --init-from QCFS_ANN`` the SNN was converted from the QAT network, not from the
    QCFS ANN; distilling toward the latter would be another network's target)."""
    from ...train.rebuild import _resolve_reference, read_checkpoint_meta

    here = Path(path)
    seen = set()
    while True:
        key = str(here.resolve())
        if key in seen:
            raise ValueError(f"checkpoint references form a loop at {here}")
        seen.add(key)
        cfg = meta.get("config") or {}
        if meta.get("conversion"):
            ref = meta["conversion"].get("source_checkpoint")
        elif cfg.get("mode") in ("ann", "qat"):
            return here
        elif cfg.get("init_from"):
            ref = cfg["init_from"]
        else:
            return here
        if not ref:
            raise ParameterError(f"{here} does not record the checkpoint it came from; pass {{ann_checkpoint}}",
                                 "ann_checkpoint")
        here, meta = read_checkpoint_meta(_resolve_reference(ref, here, "the source checkpoint"))


def calibrate_checkpoint(checkpoint: str | os.PathLike, *, out: str | os.PathLike, epochs: int = 10, lr: float = 1e-3,
                         target: str = "quantized", v_init_shape: str = "channel",
                         ann_checkpoint: str | os.PathLike | None = None, dataset: str | None = None,
                         data_dir: str | None = None, data_opts: Mapping[str, Any] | None = None,
                         calib_samples: int = 512, limit: int | None = None,
                         batch_size: int = 64, overwrite: bool = False, log=print) -> dict:
    """Calibrate v(0) and θ of a converted SNN against its ANN (QAC §4.5) and save the result.

    The teacher is the ANN the SNN was converted from (found through the checkpoint's recipe, or
    ``ann_checkpoint``); the data are ``calib_samples`` class-balanced training images used *without labels*;
    the before/after loss and accuracy are measured on the test split (``limit`` images).
    """
    from ...convert.calibrate import TARGETS as CAL_TARGETS
    from ...convert.calibrate import V_INIT_SHAPES, calibrate, spiking_neurons
    from ...train.checkpoint import load_checkpoint
    from ...convert.recipe import model_timesteps
    from ...train.rebuild import describe_checkpoint, rebuild_model

    if target not in CAL_TARGETS:
        raise ParameterError(f"{{target}} must be one of {', '.join(CAL_TARGETS)}, got {target!r}", "target")
    if v_init_shape not in V_INIT_SHAPES:
        raise ParameterError(f"{{v_init_shape}} must be one of {', '.join(V_INIT_SHAPES)}, got {v_init_shape!r}", "v_init_shape")
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ParameterError(f"{{epochs}} must be an integer >= 0, got {epochs!r}", "epochs")
    if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
        raise ParameterError(f"{{lr}} must be a number > 0, got {lr!r}", "lr")
    calib_samples = check_positive_int(calib_samples, "calib_samples")

    ckpt = load_checkpoint(checkpoint)
    snn, name = rebuild_model(ckpt)
    neurons = spiking_neurons(snn)
    if not neurons:
        raise ValueError(f"{ckpt.path} ({name}) has no spiking layers to calibrate (no IF/LIF neuron with a threshold "
                         f"and an initial membrane); convert it first, e.g. `multispike convert --checkpoint "
                         f"{checkpoint} --to mixed --out DIR`, and calibrate that")
    out = _check_out(out, overwrite)
    teacher_path = Path(ann_checkpoint) if ann_checkpoint is not None else teacher_checkpoint(ckpt.meta, ckpt.path)
    ann_ckpt = load_checkpoint(teacher_path)
    ann, ann_name = rebuild_model(ann_ckpt)
    cfg = ckpt.meta.get("config") or {}
    spec = data_spec(cfg, dataset, data_dir, data_opts, origin=str(ckpt.path))
    k = getattr(snn, "num_classes", None)
    calib, _ = static_loader(spec, "train", limit=calib_samples, batch_size=batch_size, stratified=True,
                             num_classes=k, log=log)
    images = [x for x, _ in calib]                     # unlabeled: the labels never reach calibrate()
    test, info = static_loader(spec, "test", limit=limit, batch_size=batch_size, num_classes=k, log=log)
    test_batches = list(test)
    before = prefix_accuracy(snn, test_batches)
    log(f"calibrating {name} from {ckpt.path} against {ann_name} ({ann_ckpt.path}), {target} target, v(0) per "
        f"{v_init_shape}, {epochs} epochs on {sum(int(x.shape[0]) for x in images)} unlabeled training images")
    report = calibrate(snn, ann, images, epochs=epochs, lr=lr, target=target, v_init_shape=v_init_shape,
                       eval_iter=test_batches)
    after = prefix_accuracy(snn, test_batches)
    rows, avg = _timestep_rows(snn)
    T_of = {r["layer"]: r["T"] for r in rows}
    table = [("layer", "T_l", "θ before", "θ after", "mean v(0) before", "mean v(0) after", "v(0) shape")]
    for row in report.layers:
        aligned = row["layer"].rsplit(".neuron", 1)[0] if row["layer"].endswith(".neuron") else row["layer"]
        table.append((row["layer"], T_of.get(aligned, model_timesteps(snn) or "-"), f"{row['theta_before']:.4g}",
                      f"{row['theta_after']:.4g}", f"{row['v_init_before']:.4g}", f"{row['v_init_after']:.4g}",
                      "x".join(map(str, row["v_init_shape"])) or "scalar"))
    buffer_shapes = {n: {"v_init": list(m.v_init.shape), "v_threshold": list(m.v_threshold.shape)} for n, m in neurons}
    step = {"op": "calibrate", "args": {"buffer_shapes": buffer_shapes},
            "settings": {"epochs": epochs, "lr": lr, "target": target, "v_init_shape": v_init_shape}}
    config = _clean_config(cfg, **_data_config(spec, info), out=str(out))
    path = save_network(out, snn, name=name, config=config, source_desc=describe_checkpoint(ckpt.meta, ckpt.path),
                        source_checkpoint=str(ckpt.path), steps=[step],
                        extra={"results": {"calibration": report.to_dict(), "acc": after["acc"]}})
    result = {"command": "calibrate", "source_checkpoint": str(ckpt.path), "teacher_checkpoint": str(ann_ckpt.path),
              "model": name, "dataset": spec.dataset, "report": report.to_dict(), "before": before, "after": after,
              "layers": rows, "average_T": avg, "checkpoint": str(path)}
    lines = [f"calibrated {len(report.layers)} spiking layers of {name}: {epochs} epochs, Adam lr {lr:g}, "
             f"surrogate {report.surrogate} ({report.surrogate_form}), {report.samples} evaluation images",
             f"loss (½·mean squared logit error vs the {target} ANN): {report.loss_before:.6g} -> "
             f"{report.loss_after:.6g}",
             f"SNN accuracy: {_pct(before['acc'])}% -> {_pct(after['acc'])}%"
             + (f" (ANN {_pct(report.reference_accuracy)}%)" if report.reference_accuracy is not None else ""),
             f"accuracy at t = 1, 2, ... after: {_curve(after['acc_per_t'])}", "", format_table(table)]
    if avg is not None:
        lines.append(f"average T = {avg['plain']:.4g} over {len(rows)} spiking layers")
    if getattr(report, "reverted", False):
        lines.append("note: calibration ended with a higher loss, so the converted v(0) and θ were kept. A mixed SNN "
                     "with aver+aver, integer T_l and v(0) = θ/2 already equals its quantized ANN (§4.4; up to float "
                     "rounding at quantization steps) - calibration pays off where conversion leaves a gap "
                     "(repl/trunc alignment, --to uniform without averaging, --target float). Otherwise try a "
                     "smaller --lr or more --calib-samples.")
    lines += ["", f"saved {path}"]
    text = "\n".join(lines)
    _write_json(out / "calibration.json", result)
    (out / "report.txt").write_text(text + "\n")
    log(text)
    return result


