"""TensorBoard event files for ``multispike train --tensorboard DIR`` (beside ``log.jsonl``).

Every epoch record the trainer writes to ``log.jsonl`` becomes scalars at ``global_step = epoch``:
``train/loss``, ``train/acc``, ``train/images_per_s``, ``lr`` (and ``lr/<group>`` when there are several parameter
groups), ``eval/acc``, ``eval/acc_t<t>`` (accuracy after t steps), ``qat/mean_timesteps``,
``qat/mean_bit_width`` and ``qat/<layer>/timesteps``. The final summary goes in as text (``summary``). Only the
primary rank writes. Needs the ``tensorboard`` package (``pip install "multispike[tensorboard]"``).
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Mapping

from .._errors import ParameterMessage

__all__ = ["TensorBoardLogger", "require_tensorboard", "TensorBoardMissing"]

_INSTALL = 'pip install "multispike[tensorboard]" (or: pip install tensorboard)'


class TensorBoardMissing(ParameterMessage, ImportError, ValueError):
    """The ``tensorboard`` package is absent. Also a ValueError, so the CLI reports it as one line of bad input
    (the ``tensorboard`` setting needs an optional dependency) instead of a traceback; the message names the
    setting as a template (:class:`~multispike._errors.ParameterMessage`), which the CLI writes as its flag."""

    def __init__(self, template: str, *params: str) -> None:
        ImportError.__init__(self, self._set_template(template, params))


def require_tensorboard():
    """``torch.utils.tensorboard.SummaryWriter``, or an ImportError saying how to install TensorBoard."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as exc:
        raise TensorBoardMissing(f"{{tensorboard}} needs the 'tensorboard' package, which is not installed ({exc}); "
                                 f"{_INSTALL}", "tensorboard") from exc
    return SummaryWriter


def _number(v: Any) -> float | None:
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    v = float(v)
    return v if math.isfinite(v) else None


class TensorBoardLogger:
    """Write the trainer's epoch records as TensorBoard scalars under ``log_dir``."""

    _SCALARS = (("train_loss", "train/loss"), ("train_acc", "train/acc"), ("images_per_s", "train/images_per_s"),
                ("lr", "lr"), ("eval_acc", "eval/acc"), ("eval_loss", "eval/loss"),
                ("mean_timesteps", "qat/mean_timesteps"), ("mean_bit_width", "qat/mean_bit_width"))

    def __init__(self, log_dir: str | Path) -> None:
        SummaryWriter = require_tensorboard()
        self.log_dir = Path(log_dir)
        self.log_dir.mkdir(parents=True, exist_ok=True)
        self.writer = SummaryWriter(log_dir=str(self.log_dir))

    def log_record(self, record: Mapping[str, Any]) -> None:
        """Turn one ``log.jsonl`` record into scalars (epoch records) or text (the summary)."""
        event = record.get("event")
        if event == "epoch":
            step = int(record["epoch"])
            for key, tag in self._SCALARS:
                v = _number(record.get(key))
                if v is not None:
                    self.writer.add_scalar(tag, v, step)
            groups = record.get("lr_groups") or {}
            if len(groups) > 1:
                for name, lr in groups.items():
                    if _number(lr) is not None:
                        self.writer.add_scalar(f"lr/{name}", float(lr), step)
            for t, acc in enumerate(record.get("eval_acc_per_t") or [], start=1):
                if _number(acc) is not None:
                    self.writer.add_scalar(f"eval/acc_t{t}", float(acc), step)
            for layer, q in (record.get("quantizers") or {}).items():
                if isinstance(q, Mapping) and _number(q.get("timesteps")) is not None:
                    self.writer.add_scalar(f"qat/{layer}/timesteps", float(q["timesteps"]), step)
            self.writer.flush()
        elif event == "summary":
            self.writer.add_text("summary", "```\n" + json.dumps(dict(record), indent=2, sort_keys=True,
                                                                  default=str) + "\n```")
            self.writer.flush()

    def close(self) -> None:
        self.writer.close()
