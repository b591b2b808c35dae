"""The run context shared by all tables of one process (profile, device, data, shared models, deadlines), and
the interruption signal that stops a run between steps."""
from __future__ import annotations

import hashlib
import json
import time
from pathlib import Path
from typing import TYPE_CHECKING, Callable

import numpy as np
import torch
from torch import nn

from benchmarks.evidence.datasets import CifarData, NMNISTData, load_cifar_subset, load_nmnist
from benchmarks.evidence.profiles import Profile
from benchmarks.evidence.provenance import command_line, environment
from multispike.train.budget import phase_seed
from multispike.train.precision import set_tf32

if TYPE_CHECKING:
    from benchmarks.evidence.table_run import TableRun


class Interrupted(BaseException):
    """SIGTERM/SIGINT arrived (e.g. an external ``timeout``): stop, write what exists, skip the remaining tables.

    A ``BaseException`` so that a table's per-part guards (which catch ``Exception``) do not swallow it."""


def install_signal_handlers() -> None:
    """Turn SIGTERM and SIGINT into :class:`Interrupted` in the main thread."""
    import signal

    def handler(signum, _frame):
        raise Interrupted(f"received signal {signal.Signals(signum).name}")

    for sig in (signal.SIGTERM, signal.SIGINT):
        try:
            signal.signal(sig, handler)
        except (ValueError, OSError):  # not the main thread, or unsupported here
            pass


class Context:
    """Everything one process shares between tables: profile, device, data, shared models, deadlines."""

    def __init__(self, profile: Profile, data_dir: Path, out_dir: Path, *, device: str | None = None,
                 commit: str | None = None, cache_dir: Path | None = None, quiet: bool = False,
                 hard_seconds: float | None = None, argv: list[str] | None = None) -> None:
        self.t_start = time.perf_counter()
        self.profile = profile
        if profile.threads:
            torch.set_num_threads(profile.threads)
        if device is None:
            device = "cuda" if profile.prefer_cuda and torch.cuda.is_available() else "cpu"
        self.device = torch.device(device)
        if self.device.type == "cuda":
            torch.backends.cudnn.benchmark = True
            set_tf32(profile.tf32)
        self.data_dir = Path(data_dir)
        self.out_dir = Path(out_dir)
        self.out_dir.mkdir(parents=True, exist_ok=True)
        self.cache_dir = Path(cache_dir) if cache_dir else None
        self.quiet = quiet
        self.command = command_line(argv)
        self.env = environment(self.device, commit)
        # Past the hard deadline every remaining phase stops after one step (rows are still evaluated), so a run
        # ends shortly after it; keep it below any external time limit (see --hard-seconds).
        budget = hard_seconds if hard_seconds is not None else profile.total_seconds * 1.05 + 10
        self.hard_deadline = self.t_start + budget
        self.shared: dict[str, tuple[nn.Module, dict]] = {}
        self.phase_dirs: set[str] = set()        # train_logs folders used by this process (phases.train_phase)
        self._cifar: CifarData | None = None
        self._nmnist: NMNISTData | None = None

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t_start:7.1f}s] {msg}", flush=True)

    def _loaded(self, attr: str, load, describe):
        """The data set cached in ``attr``, loaded (and its size and load time logged) on first use."""
        if getattr(self, attr) is None:
            t = time.perf_counter()
            data = load()
            setattr(self, attr, data)
            self.log(f"{describe(data)}: {len(data.train_y)} train / {len(data.test_y)} test "
                     f"({time.perf_counter() - t:.1f} s)")
        return getattr(self, attr)

    @property
    def cifar(self) -> CifarData:
        p = self.profile
        return self._loaded("_cifar", lambda: load_cifar_subset(self.data_dir, p.cifar_train, p.cifar_test,
                                                                p.subset_seed),
                            lambda d: f"CIFAR-10 subset from {d.provenance['source']['kind']}")

    @property
    def nmnist(self) -> NMNISTData:
        p = self.profile
        return self._loaded("_nmnist", lambda: load_nmnist(self.data_dir, p.nmnist_train, p.nmnist_test,
                                                           p.subset_seed),
                            lambda d: "N-MNIST-small")

    def seed(self, name: str) -> int:
        s = phase_seed(self.profile.seed, name)   # multispike.train.budget.phase_seed
        torch.manual_seed(s)
        np.random.seed(s % 2**32)
        return s

    # -- shared models (trained once per process, optionally cached on disk) -------------------------------
    def cache_key(self, key: str) -> str:
        p = self.profile
        payload = json.dumps({"key": key, "backbone": p.backbone, "train": p.cifar_train, "seed": p.seed,
                              "subset_seed": p.subset_seed, "epochs": p.epochs, "batch": p.batch_size,
                              "levels": p.qcfs_levels, "max_batches": p.max_batches,
                              "code": self.env["code_sha256"]}, sort_keys=True)
        return f"{key}-{hashlib.sha256(payload.encode()).hexdigest()[:16]}"

    def get_shared(self, key: str, build: Callable[[], tuple[nn.Module, dict]], table: "TableRun",
                   phase: str) -> tuple[nn.Module, dict]:
        """The shared model ``key``: from this process, from ``--cache-dir``, or built now (its phase is then
        charged to ``table``). The returned model must not be modified by the caller (deep-copy it)."""
        if key in self.shared:
            model, rec = self.shared[key]
            table.planner.skip(phase)
            table.phases.append({**rec, "reused": f"trained earlier in this run (table {rec.get('table')})"})
            return model, rec
        if self.cache_dir is not None:
            path = self.cache_dir / f"{self.cache_key(key)}.pt"
            meta = path.with_suffix(".json")
            if path.is_file() and meta.is_file():
                rec = json.loads(meta.read_text())
                from benchmarks.evidence.shared_anns import rec_model_factory
                model = rec_model_factory(rec)
                model.load_state_dict(torch.load(path, map_location=self.device, weights_only=True))
                model.to(self.device).eval()
                self.shared[key] = (model, rec)
                table.planner.skip(phase)
                table.phases.append({**rec, "reused": f"loaded from the cache {path}"})
                return model, rec
        model, rec = build()
        rec = {**rec, "table": table.name}
        self.shared[key] = (model, rec)
        table.phases.append(rec)
        if self.cache_dir is not None:
            self.cache_dir.mkdir(parents=True, exist_ok=True)
            path = self.cache_dir / f"{self.cache_key(key)}.pt"
            torch.save(model.state_dict(), path)
            path.with_suffix(".json").write_text(json.dumps(rec, indent=1))
        return model, rec
