"""Networks shared between tables (the float ReLU ANN and the QCFS ANN, trained once per process and optionally
cached on disk), the backbone factory, and operation counts for the energy rows."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

import torch
from torch import nn

from benchmarks.evidence.phases import TrainSpec, loaders, test_accuracy, train_phase
from benchmarks.evidence.profiles import Profile
from multispike.neurons.base import reset_net
from multispike.train.precision import exact_fp32

if TYPE_CHECKING:
    from benchmarks.evidence.run_context import Context
    from benchmarks.evidence.table_run import TableRun


#: Model factories for cached shared models: the record stores ``factory`` (a name here) and its kwargs.
MODEL_FACTORIES: dict[str, Callable[..., nn.Module]] = {}


def rec_model_factory(rec: dict) -> nn.Module:
    f = rec.get("factory")
    if f not in MODEL_FACTORIES:
        raise ValueError(f"cached model record names an unknown factory {f!r}")
    return MODEL_FACTORIES[f](**rec.get("factory_kwargs", {}))


def create_backbone(backbone: str, neuron: Any = "relu", T: int = 1, neuron_kwargs: dict | None = None,
                    **kw: Any) -> nn.Module:
    """``multispike.models.create_model(backbone, num_classes=10, ...)``."""
    from multispike.models import create_model
    return create_model(backbone, num_classes=10, neuron=neuron, T=T, neuron_kwargs=neuron_kwargs or {}, **kw)


MODEL_FACTORIES["backbone"] = create_backbone


def sgd_lr(profile: Profile, base: float = 0.1, base_batch: int = 256) -> float:
    """Linear batch-size scaling of an SGD learning rate (0.1 at batch 256 = 0.025 at LM-HT's batch 64)."""
    return base * profile.batch_size / base_batch


def _train_ann(table: "TableRun", phase: str, neuron: str, neuron_kwargs: dict,
               epochs_key: str) -> tuple[nn.Module, dict]:
    ctx, p = table.ctx, table.ctx.profile
    data = ctx.cifar
    seed = ctx.seed(phase)
    model = create_backbone(p.backbone, neuron, 1, neuron_kwargs).to(ctx.device)
    train, test = loaders(ctx, data.train_x, data.train_y, data.test_x, data.test_y, seed=seed)
    spec = TrainSpec(epochs=p.epochs[epochs_key], lr=sgd_lr(p), opt="sgd", weight_decay=5e-4, amp=p.amp,
                     channels_last=p.channels_last)
    rec = train_phase(model, train, spec, name=phase, ctx=ctx, allot_s=table.planner.allot(phase), table=table.name)
    ev = test_accuracy(model, test, ctx)
    rec.update(test_accuracy=ev["accuracy"], n_test=ev["n"], seed=seed, factory="backbone",
               factory_kwargs={"backbone": p.backbone, "neuron": neuron, "T": 1, "neuron_kwargs": neuron_kwargs})
    return model, rec


def float_ann(table: "TableRun") -> tuple[nn.Module, dict]:
    """The float ReLU ANN of the backbone (shared by the LM-HT and M-LIF tables); phase ``ann_float``."""
    return table.ctx.get_shared("ann_float", lambda: _train_ann(table, "ann_float", "relu", {}, "ann"), table,
                                "ann_float")


def qcfs_ann(table: "TableRun") -> tuple[nn.Module, dict]:
    """The QCFS ANN with ``profile.qcfs_levels`` levels (shared by the LM-HT and QAC tables); phase ``ann_qcfs``."""
    kw = {"levels": table.ctx.profile.qcfs_levels}
    return table.ctx.get_shared("ann_qcfs", lambda: _train_ann(table, "ann_qcfs", "qcfs", kw, "qcfs"), table,
                                "ann_qcfs")


def count_operations(model: nn.Module, loader: Iterable, ctx: "Context", *, input_events: str | None = None):
    """:class:`multispike.metrics.OpCounter` over ``profile.energy_batches`` test batches (fp32, eval mode)."""
    from multispike.metrics import OpCounter
    model.eval()
    with torch.no_grad(), exact_fp32(ctx.device), OpCounter(model, input_events=input_events,
                                                             neurobench=False) as oc:
        for b, (x, _y) in enumerate(loader):
            if b >= ctx.profile.energy_batches:
                break
            reset_net(model)
            model(x)
    reset_net(model)
    return oc.result()
