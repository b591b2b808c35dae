"""Run profiles of the evidence suite (scale, epochs, time budgets) and the suite's constants.

A :class:`Profile` fixes one run's scale: backbone, CIFAR-10 subset, batch sizes, planned epochs per phase kind and
the wall-clock budget of each table. :func:`get_profile` returns a copy, optionally shrunk to a dry run.
"""
from __future__ import annotations

import copy
import dataclasses
import sys
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the scripts run as files; make ``multispike`` importable from the checkout
    sys.path.insert(0, str(REPO))

SCHEMA_VERSION = 1
TABLES = ("lmht", "qac", "mlif")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NMNIST_RAW_FRAMES = 24       # raw binary frames per N-MNIST recording in the bundle (Q_F * 2^(S_max - 1), Q_F = 3)
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_FORMAT = "multispike-evidence-bundle/1"
SPEC_SECTION = "/work/shared/docs/algorithms.md §8 (the project's specification; paper numbers copied there)"

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not tested")


@dataclass
class Profile:
    """Scale of one run. ``epochs`` are planned maxima; the time budget may cut them (recorded)."""

    name: str
    backbone: str
    cifar_train: int
    cifar_test: int
    batch_size: int
    eval_batch: int
    epochs: dict[str, float]
    table_seconds: dict[str, float]
    total_seconds: float
    table_shares: dict[str, float]
    nmnist_train: int | None = None          # None: all 1,000 N-MNIST-small training recordings
    nmnist_test: int | None = None           # None: all 100 test recordings
    nmnist_seeds: tuple[int, ...] = (0,)
    nmnist_batch: int = 64
    nmnist_steps: int = 3                    # Q_F: SNN timesteps of the N-MNIST rows (fixed frame budget)
    qcfs_levels: int = 8                     # Tq of the shared QCFS ANN (LMHT-C's default qcfs_level)
    calib_batches: int = 8                   # training batches used as unlabeled calibration data
    energy_batches: int = 2                  # test batches whose operations are counted
    amp: bool = False                        # bf16 autocast for ANN (ReLU/QCFS) training only
    channels_last: bool = False              # channels_last model and batches for ANN training only
    tf32: bool = True                        # TF32 convs/matmuls in training on CUDA (never in evaluation)
    max_batches: int | None = None           # cap on batches per epoch and per evaluation (dry runs)
    seed: int = 0
    subset_seed: int = 0
    threads: int | None = None               # torch CPU threads (None: leave torch's default)
    prefer_cuda: bool = True
    notes: str = ""

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["nmnist_seeds"] = list(self.nmnist_seeds)
        return d


_EPOCHS_GPU = {"ann": 50, "qcfs": 50, "hybrid_ft": 8, "direct": 25, "qat": 15, "calib": 30, "mlif_ft": 15,
               "lq_ft": 10, "nmnist": 40}
_EPOCHS_CPU = {"ann": 12, "qcfs": 12, "hybrid_ft": 1, "direct": 3, "qat": 2, "calib": 10, "mlif_ft": 2, "lq_ft": 2,
               "nmnist": 10}
_EPOCHS_QUICK = {k: 1 for k in _EPOCHS_GPU}

PROFILES: dict[str, Profile] = {
    "quick": Profile(
        name="quick", backbone="resnet8_cifar", cifar_train=128, cifar_test=64, batch_size=32, eval_batch=64,
        epochs=dict(_EPOCHS_QUICK), table_seconds={"lmht": 40, "qac": 20, "mlif": 30}, total_seconds=90,
        table_shares={"lmht": 0.4, "qac": 0.25, "mlif": 0.35}, nmnist_train=40, nmnist_test=20, nmnist_batch=20,
        calib_batches=2, energy_batches=1, threads=1, prefer_cuda=False,
        notes="CI smoke test: every code path on a tiny subset with ResNet-8; numbers are meaningless"),
    "cpu": Profile(
        name="cpu", backbone="resnet20_cifar", cifar_train=5000, cifar_test=1000, batch_size=64, eval_batch=250,
        epochs=dict(_EPOCHS_CPU), table_seconds={"lmht": 3300, "qac": 3300, "mlif": 3300}, total_seconds=9900,
        table_shares={"lmht": 1.0, "qac": 1.0, "mlif": 1.0}, nmnist_seeds=(0,), calib_batches=8, energy_batches=2,
        threads=None, prefer_cuda=False,
        notes="the issue's full CPU mode: ResNet-20, each table within a 55-minute budget on 2 cores (measured: LM-HT "
              "8 min, QAC 1.4 min on a 2-core Intel Xeon, 2026-12)"),
    "cpu_small": Profile(
        name="cpu_small", backbone="resnet8_cifar", cifar_train=5000, cifar_test=1000, batch_size=64, eval_batch=250,
        epochs={"ann": 12, "qcfs": 15, "hybrid_ft": 2, "direct": 3, "qat": 3, "calib": 10, "mlif_ft": 2, "lq_ft": 2,
                "nmnist": 10},
        table_seconds={"lmht": 720, "qac": 600, "mlif": 600}, total_seconds=1920,
        table_shares={"lmht": 0.375, "qac": 0.3125, "mlif": 0.3125}, calib_batches=8, energy_batches=1, threads=1,
        prefer_cuda=False,
        notes="a check of the tables' key rows in about 10 minutes each on a shared 2-core CPU: ResNet-8 on the 5k/1k "
              "CIFAR-10 subset, one thread (measured several times faster than two on a loaded CPU); far below the "
              "committed GPU scale"),
    "gpu": Profile(
        name="gpu", backbone="resnet20_cifar", cifar_train=12000, cifar_test=3000, batch_size=256, eval_batch=1000,
        epochs=dict(_EPOCHS_GPU), table_seconds={"lmht": 200, "qac": 150, "mlif": 170}, total_seconds=390,
        table_shares={"lmht": 0.46, "qac": 0.20, "mlif": 0.34}, nmnist_seeds=(0, 1, 2), calib_batches=8,
        energy_batches=2, amp=True, channels_last=True, tf32=True,
        notes="one GPU, all three tables within about 7 minutes (data on the GPU, large batches, bf16 ANN "
              "training)"),
}

#: Relative cost of one epoch of each phase kind, estimated from the number of tensor ops per training step of
#: ResNet-20 (a GPU at these sizes is bound by op dispatch) and CPU timings. Wrong ratios only change how a
#: table's time is shared among its phases, never whether the budget holds.
EPOCH_COST = {"ann": 1.0, "qcfs": 1.7, "lmht_T2": 3.0, "lmht_T4": 5.0, "if_T2": 2.2, "if_T4": 3.8, "qat": 2.0,
              "calib": 0.8, "mlif_T1": 3.5, "lq": 1.5, "nmnist": 0.2}


def get_profile(name: str, *, dry_run: bool = False, max_seconds: float | None = None) -> Profile:
    """A copy of profile ``name``; ``dry_run`` shrinks it so that every code path runs in minutes on a CPU."""
    if name not in PROFILES:
        raise ValueError(f"unknown profile {name!r}; choose one of {', '.join(PROFILES)}")
    p = copy.deepcopy(PROFILES[name])
    if dry_run:
        p.name = f"{name}+dry-run"
        p.cifar_train, p.cifar_test = min(p.cifar_train, 4 * p.batch_size), min(p.cifar_test, 2 * p.eval_batch)
        p.cifar_test = min(p.cifar_test, 512)
        p.eval_batch = min(p.eval_batch, 256)
        p.epochs = {k: 1 for k in p.epochs}
        p.max_batches = 2
        p.nmnist_train, p.nmnist_test, p.nmnist_seeds = 128, 64, p.nmnist_seeds[:2]
        p.calib_batches, p.energy_batches = 2, 1
        p.threads = 1
        p.notes = f"DRY RUN of profile {name!r} (tiny data, 1 epoch, 2 batches per epoch): code paths only"
    if max_seconds is not None:
        if not max_seconds > 0:
            raise ValueError(f"--max-seconds must be > 0, got {max_seconds}")
        scale = max_seconds / p.total_seconds
        p.total_seconds = float(max_seconds)
        p.table_seconds = {k: max(1.0, v * scale) for k, v in p.table_seconds.items()}
    return p
