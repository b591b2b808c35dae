"""``multispike reparam``'s workflow: an LM-HT checkpoint reparameterised into an L·T-step IF network (§2.7)."""
from __future__ import annotations

import os
from typing import Any, Mapping

from .common import (_check_out, _clean_config, _curve, _data_config, _load_source, _pct, _write_json, data_spec,
                     format_table, prefix_accuracy, save_network, static_loader)

__all__ = ["reparameterize_checkpoint"]


def reparameterize_checkpoint(checkpoint: str | os.PathLike, *, out: str | os.PathLike, dataset: str | None = None,
                              data_dir: str | None = None, data_opts: Mapping[str, Any] | None = None,
                              limit: int | None = None, batch_size: int = 128,
                              overwrite: bool = False, log=print) -> dict:
    """Reparameterise an LM-HT checkpoint (converted or fine-tuned) into an IF network with L·T steps.

    Prints the reparameterisation summary and the per-layer window spike-count agreement measured on the
    test images (:func:`multispike.convert.lmht.reparameterization_report`), the accuracy of both networks at
    every prefix, and saves the IF network.
    """
    from ...convert.lmht import reparameterization_report
    from ...neurons.lmht import LMHTNeuron, MHTNeuron
    from ...convert.recipe import model_timesteps, run_step

    ckpt, lmht, name, desc = _load_source(checkpoint)
    if not any(isinstance(m, (LMHTNeuron, MHTNeuron)) for m in lmht.modules()):
        raise ValueError(f"{ckpt.path} ({name}) has no LM-HT/M-HT neuron to reparameterise; convert a QCFS ANN with "
                         f"`multispike convert --to lmht` (or train with --neuron lmht) first")
    out = _check_out(out, overwrite)
    cfg = ckpt.meta.get("config") or {}
    spec = data_spec(cfg, dataset, data_dir, data_opts, origin=str(ckpt.path))
    test, info = static_loader(spec, "test", limit=limit, batch_size=batch_size,
                               num_classes=getattr(lmht, "num_classes", None), log=log)
    batches = list(test)
    step = {"op": "reparameterize_lmht", "args": {}}
    if_net, rep = run_step(lmht, step)
    agreement = reparameterization_report(lmht, if_net, batches)
    acc_lmht = prefix_accuracy(lmht, batches)
    acc_if = prefix_accuracy(if_net, batches)
    T_if = model_timesteps(if_net)
    config = _clean_config(cfg, neuron="if", timesteps=T_if, levels=None, **_data_config(spec, info), out=str(out))
    path = save_network(out, if_net, name=name, config=config, source_desc=desc, source_checkpoint=str(ckpt.path),
                        steps=[step], extra={"results": {"acc": acc_if["acc"], "acc_per_t": acc_if["acc_per_t"],
                                                         "agreement": agreement.to_dict()}})
    result = {"command": "reparam", "source_checkpoint": str(ckpt.path), "model": name, "dataset": spec.dataset,
              "reparameterization": rep.to_dict(), "agreement": agreement.to_dict(), "lmht": acc_lmht, "if": acc_if,
              "checkpoint": str(path)}
    table = [("network", "steps", "accuracy %", "accuracy at t = 1, 2, ... (%)"),
             (f"LM-HT (L={rep.levels}, T={rep.T})", rep.T, _pct(acc_lmht["acc"]), _curve(acc_lmht["acc_per_t"])),
             ("reparameterised IF", T_if, _pct(acc_if["acc"]), _curve(acc_if["acc_per_t"]))]
    text = "\n".join([str(rep), "", str(agreement), "", format_table(table), "", f"saved {path}"])
    _write_json(out / "reparam.json", result)
    (out / "report.txt").write_text(text + "\n")
    log(text)
    return result


