"""Shared machinery of the evidence suite: profiles, data, a time-budgeted training loop, evaluation,
verdict rules and JSON/Markdown output.

Scripts import this module after putting the repository root on ``sys.path`` (``from benchmarks.evidence
import common``); nothing here is part of the installed ``multispike`` package.

Time budgets. A table gets a wall-clock budget (from the profile or ``--max-seconds``). Its training phases
share it by weight: when a phase starts it is allotted ``(time left - reserve) * w / (sum of the weights of
the phases not yet run)``, so time a phase does not use flows to the later ones. Inside a phase,
:func:`fit` plans ``epochs * batches`` optimizer steps, times the first few steps (the *probe*) and every
epoch, and shrinks the step count - and with it the cosine schedule, which is computed from the current
total - whenever the measured speed says the allotment would be exceeded. Every such cut is recorded in the
phase record (``steps_planned``, ``steps_run``, ``cuts``). A hard deadline for the whole run stops a phase
at once.
"""
from __future__ import annotations

import argparse
import contextlib
import copy
import dataclasses
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import time
import traceback
import zlib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # the scripts run as files; make ``multispike`` importable from the checkout
    sys.path.insert(0, str(REPO))

from multispike.data import Augment, TensorLoader  # noqa: E402
from multispike.metrics.prefix import prefix_correct  # noqa: E402
from multispike.neurons.base import reset_net  # noqa: E402

SCHEMA_VERSION = 1
TABLES = ("lmht", "qac", "mlif")
CIFAR_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR_STD = (0.2470, 0.2435, 0.2616)
NMNIST_RAW_FRAMES = 24       # raw binary frames per N-MNIST recording in the bundle (Q_F * 2^(S_max - 1), Q_F = 3)
BUNDLE_MANIFEST = "manifest.json"
BUNDLE_FORMAT = "multispike-evidence-bundle/1"
SPEC_SECTION = "/work/shared/docs/algorithms.md §8 (the project's specification; paper numbers copied there)"

VERDICTS = ("reproduced", "partly reproduced", "not reproduced", "not tested")


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


# ----------------------------------------------------------------------------------------------------
# Profiles
# ----------------------------------------------------------------------------------------------------
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
        notes="the issue's full CPU mode: each table within about 60 minutes on 2 cores"),
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


# ----------------------------------------------------------------------------------------------------
# Environment and provenance
# ----------------------------------------------------------------------------------------------------
def _git(*args: str) -> str | None:
    try:
        out = subprocess.run(["git", *args], cwd=REPO, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def code_digest() -> str:
    """sha256 over the library and this suite's sources (path + bytes, sorted): identifies the code that ran
    even where the copy has no ``.git`` (recompute at a commit to check it)."""
    h = hashlib.sha256()
    files = sorted([*(REPO / "multispike").rglob("*.py"), *(REPO / "benchmarks" / "evidence").glob("*.py")])
    for f in files:
        h.update(str(f.relative_to(REPO)).encode())
        h.update(b"\0")
        h.update(f.read_bytes())
    return h.hexdigest()


def _cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def environment(device: torch.device, commit: str | None = None) -> dict:
    """Commit, versions and hardware, for the result files."""
    sha = commit or os.environ.get("MULTISPIKE_COMMIT") or _git("rev-parse", "HEAD")
    dirty = None
    if commit is None and _git("rev-parse", "HEAD"):
        status = _git("status", "--porcelain", "--", "multispike", "benchmarks/evidence")
        dirty = bool(status)
    env = {
        "commit": sha or "unknown (no git in this copy; pass --commit)",
        "commit_source": "--commit" if commit else ("MULTISPIKE_COMMIT" if os.environ.get("MULTISPIKE_COMMIT")
                                                    else ("git" if sha else "none")),
        "worktree_dirty": dirty,
        "code_sha256": code_digest(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
        "cpu": _cpu_name(),
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "device": str(device),
        "cuda": torch.version.cuda,
        "cudnn": torch.backends.cudnn.version() if torch.backends.cudnn.is_available() else None,
        "gpu": None,
    }
    try:
        import multispike
        env["multispike"] = multispike.__version__
    except Exception:  # noqa: BLE001 - provenance must never fail the run
        env["multispike"] = None
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        env["gpu"] = {"name": props.name, "memory_gib": round(props.total_memory / 2**30, 1),
                      "capability": f"{props.major}.{props.minor}", "count": torch.cuda.device_count()}
    return env


def command_line(argv: list[str] | None = None) -> str:
    """The command as run from the repository root (``PYTHONPATH=. python3 <script> <args>``)."""
    argv = list(sys.argv if argv is None else argv)
    out_env = os.environ.get("OUT")
    if out_env:  # the device runner's output folder: record "$OUT", not its machine-specific path
        argv = [("$OUT" if a == out_env else a) for a in argv]
    script = Path(argv[0]).resolve()
    try:
        script_s = str(script.relative_to(REPO))
    except ValueError:
        script_s = argv[0]
    args = " ".join(_quote(a) for a in argv[1:])
    return f"PYTHONPATH=. python3 {script_s} {args}".strip()


def _quote(a: str) -> str:
    return a if a and (a == "$OUT" or all(c.isalnum() or c in "-_./=:,+" for c in a)) else json.dumps(a)


def phase_seed(base: int, name: str) -> int:
    """A seed per phase name, so a phase draws the same numbers whether its table runs alone or in run_all."""
    return int(base) * 1_000_003 + zlib.crc32(name.encode()) % 1_000_003


# ----------------------------------------------------------------------------------------------------
# Data
# ----------------------------------------------------------------------------------------------------
def default_data_dir() -> Path:
    """``$MULTISPIKE_DATA``, else ``<repo>/.evidence_data`` when it holds a bundle, else
    ``<repo>/../shared/datasets``."""
    env = os.environ.get("MULTISPIKE_DATA")
    if env:
        return Path(env)
    bundle = REPO / ".evidence_data"
    if (bundle / BUNDLE_MANIFEST).is_file():
        return bundle
    return REPO.parent / "shared" / "datasets"


def is_bundle(path: Path) -> bool:
    return (Path(path) / BUNDLE_MANIFEST).is_file()


def read_manifest(path: Path) -> dict:
    m = json.loads((Path(path) / BUNDLE_MANIFEST).read_text())
    if m.get("format") != BUNDLE_FORMAT:
        raise ValueError(f"{path}: not an evidence bundle of format {BUNDLE_FORMAT!r} (found {m.get('format')!r}); "
                         f"rebuild it with benchmarks/evidence/make_bundle.py")
    return m


def stratified_subset(labels: torch.Tensor, n: int, seed: int) -> torch.Tensor:
    """Sorted indices of a class-stratified, seeded subset of size ``n`` (``multispike.train.subset_indices``:
    classes round-robin over a seeded permutation). Nested: the subset of size n is contained in every larger
    one with the same seed, which is what lets a bundle of the largest subset serve every smaller one."""
    from multispike.train import subset_indices
    return subset_indices(labels, int(n), int(seed))


@dataclass
class CifarData:
    train_x: torch.Tensor   # uint8 [N, 3, 32, 32]
    train_y: torch.Tensor   # int64 [N]
    test_x: torch.Tensor
    test_y: torch.Tensor
    provenance: dict


def load_cifar_subset(data_dir: Path, n_train: int, n_test: int, seed: int) -> CifarData:
    """The stratified CIFAR-10 subset from a bundle (``make_bundle.py``) or from the pickles under ``data_dir``.

    Both sources give the same images for the same ``(n, seed)`` (the bundle stores the largest subset and the
    full label arrays; smaller subsets are re-selected with the same rule, which is nested)."""
    data_dir = Path(data_dir)
    out: dict[str, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}
    if is_bundle(data_dir):
        man = read_manifest(data_dir)
        c = man["cifar10"]
        if int(c["seed"]) != int(seed):
            raise ValueError(f"{data_dir}: the bundle holds the subset with seed {c['seed']}, the run asks for seed "
                             f"{seed}; rebuild the bundle with --seed {seed}")
        for split, n in (("train", n_train), ("test", n_test)):
            have = int(c[f"{split}_count"])
            if n > have:
                raise ValueError(f"{data_dir}: the bundle holds {have} CIFAR-10 {split} images, the profile needs {n}; "
                                 f"rebuild it with make_bundle.py --{split} {n}")
            x = torch.from_numpy(np.load(data_dir / c[f"{split}_images"]))
            idx = torch.from_numpy(np.load(data_dir / c[f"{split}_indices"]).astype(np.int64))
            all_labels = torch.from_numpy(np.load(data_dir / c[f"{split}_all_labels"]).astype(np.int64))
            want = stratified_subset(all_labels, n, seed)
            pos = torch.searchsorted(idx, want)
            if not torch.equal(idx[pos.clamp(max=len(idx) - 1)], want):
                raise ValueError(f"{data_dir}: the bundle's {split} subset does not contain the requested one "
                                 f"(bundle built with another rule?); rebuild it")
            out[split] = (x[pos], all_labels[want], want)
        source = {"kind": "bundle", "path": str(data_dir), "manifest_sha256": man.get("sha256", {}),
                  "built_from": man.get("source")}
    else:
        from multispike.data import load_cifar10
        for split, n in (("train", n_train), ("test", n_test)):
            s = load_cifar10(data_dir, split=split)
            want = stratified_subset(s.labels, n, seed)
            out[split] = (s.images[want], s.labels[want].to(torch.int64), want)
        source = {"kind": "pickles", "path": str(data_dir)}
    prov = {"dataset": "CIFAR-10 (pixels decoded from JPEG copies; see shared/datasets/README.md)",
            "source": source, "subset_rule": "multispike.train.subset_indices (class round-robin over "
            "torch.randperm with the seed), nested in n", "seed": int(seed)}
    for split in ("train", "test"):
        x, y, idx = out[split]
        prov[split] = {"count": int(len(y)), "per_class": torch.bincount(y, minlength=10).tolist(),
                       "indices_sha256": hashlib.sha256(idx.numpy().astype(np.int64).tobytes()).hexdigest()}
    return CifarData(out["train"][0], out["train"][1], out["test"][0], out["test"][1], prov)


@dataclass
class NMNISTData:
    train_frames: torch.Tensor  # uint8 {0,1} [N, NMNIST_RAW_FRAMES, 2, 34, 34]
    train_y: torch.Tensor
    test_frames: torch.Tensor
    test_y: torch.Tensor
    provenance: dict


def nmnist_raw_frames(root: Path, split: str, raw_frames: int = NMNIST_RAW_FRAMES) -> tuple[np.ndarray, np.ndarray]:
    """All recordings of one N-MNIST split integrated SpikingJelly-style (``frames_number=raw_frames``,
    ``split_by='number'``) and binarised (any event -> 1): uint8 ``[N, raw_frames, 2, 34, 34]`` and labels."""
    from multispike.data.events import NMNIST
    ds = NMNIST(root=root, split=split, data_type="frame", frames_number=raw_frames, split_by="number")
    frames = np.empty((len(ds), raw_frames, 2, 34, 34), dtype=np.uint8)
    for i in range(len(ds)):
        frames[i] = (ds.frames(i) > 0)
    return frames, np.asarray(ds.targets, dtype=np.int64)


def _nmnist_root(data_dir: Path) -> Path:
    for cand in (data_dir / "events" / "nmnist-small", data_dir / "nmnist-small", data_dir):
        if (cand / "Train").is_dir() and (cand / "Test").is_dir():
            return cand
    raise FileNotFoundError(f"N-MNIST-small not found under {data_dir} (looked for events/nmnist-small/Train and "
                            f"Test); pass --data pointing at shared/datasets or at a bundle from make_bundle.py")


def load_nmnist(data_dir: Path, n_train: int | None, n_test: int | None, seed: int) -> NMNISTData:
    """N-MNIST-small as binary raw frames, from a bundle or from the ``.bin`` files (stratified subsets)."""
    data_dir = Path(data_dir)
    if is_bundle(data_dir):
        man = read_manifest(data_dir)
        nm = man["nmnist"]
        if int(nm["raw_frames"]) != NMNIST_RAW_FRAMES:
            raise ValueError(f"{data_dir}: bundle has {nm['raw_frames']} raw N-MNIST frames, the suite needs "
                             f"{NMNIST_RAW_FRAMES}; rebuild it")
        z = np.load(data_dir / nm["file"])
        shape = tuple(int(s) for s in z["shape"])
        bits = np.unpackbits(z["packed"], axis=-1, count=shape[-1])
        frames = bits.reshape(shape).astype(np.uint8)
        split = z["split"]
        labels = z["labels"].astype(np.int64)
        parts = {s: (frames[split == i], labels[split == i]) for i, s in enumerate(("train", "test"))}
        source = {"kind": "bundle", "path": str(data_dir), "file": nm["file"]}
    else:
        root = _nmnist_root(data_dir)
        parts = {s: nmnist_raw_frames(root, s) for s in ("train", "test")}
        source = {"kind": "bin files", "path": str(root)}
    out = {}
    prov = {"dataset": "N-MNIST-small (1,000 train + 100 test real recordings; shared/datasets/README.md)",
            "source": source, "raw_frames": NMNIST_RAW_FRAMES,
            "integration": "SpikingJelly integrate_frames(frames_number=24, split_by='number'), binarised"}
    for s, n in (("train", n_train), ("test", n_test)):
        x, y = parts[s]
        yt = torch.from_numpy(y)
        idx = torch.arange(len(yt)) if n is None or n >= len(yt) else stratified_subset(yt, n, seed)
        out[s] = (torch.from_numpy(x)[idx], yt[idx])
        prov[s] = {"count": int(len(idx)), "per_class": torch.bincount(yt[idx], minlength=10).tolist(),
                   "subset": "all" if n is None or n >= len(yt) else f"stratified n={n}, seed={seed}"}
    return NMNISTData(out["train"][0], out["train"][1], out["test"][0], out["test"][1], prov)


# ----------------------------------------------------------------------------------------------------
# Budget
# ----------------------------------------------------------------------------------------------------
class Planner:
    """Shares a table's time among its phases by weight (see the module docstring)."""

    def __init__(self, deadline: float, weights: dict[str, float], reserve_fraction: float = 0.08) -> None:
        if any(w < 0 for w in weights.values()):
            raise ValueError(f"phase weights must be >= 0, got {weights}")
        self.deadline = deadline
        self.weights = dict(weights)
        self.start = time.perf_counter()
        self.reserve = max(0.0, reserve_fraction) * max(0.0, deadline - self.start)
        self.done: set[str] = set()
        self.log: list[dict] = []

    def pending_weight(self) -> float:
        return sum(w for n, w in self.weights.items() if n not in self.done)

    def allot(self, name: str) -> float:
        """Seconds for phase ``name`` (marks it as started). Unknown names get an equal share of the rest."""
        w = self.weights.get(name)
        if w is None:
            w = self.pending_weight() / max(1, len([n for n in self.weights if n not in self.done])) or 1.0
            self.weights[name] = w
        pending = self.pending_weight()
        now = time.perf_counter()
        left = max(0.0, self.deadline - now)
        avail = max(0.0, left - self.reserve * (left / max(1e-9, self.deadline - self.start)))
        self.done.add(name)
        seconds = avail * w / pending if pending > 0 else avail
        self.log.append({"phase": name, "weight": w, "allotted_s": round(seconds, 2), "left_s": round(left, 2)})
        return seconds

    def skip(self, name: str) -> None:
        """Release the weight of a phase that does not need to run (e.g. a reused model)."""
        self.done.add(name)

    def remaining(self) -> float:
        return self.deadline - time.perf_counter()


# ----------------------------------------------------------------------------------------------------
# Training
# ----------------------------------------------------------------------------------------------------
@dataclass
class TrainSpec:
    """One training phase. ``loss``: ``ce`` on ``model(x)`` (the time mean), ``tet`` on the per-step outputs."""

    epochs: float
    lr: float
    opt: str = "sgd"                 # sgd (momentum 0.9, nesterov) | adam
    weight_decay: float = 5e-4       # on conv/linear weights only (not BN, biases, thresholds, t, alpha, leak)
    loss: str = "ce"
    amp: bool = False
    channels_last: bool = False
    warmup_epochs: float = 0.0
    log_quantizers: bool = False     # record QAC T_l per epoch
    min_steps: int = 10
    freeze_bn: bool = False          # keep BatchNorm in eval mode (the converted ANN's running statistics)
    quant_opt: str | None = None     # QAT: optimizer of the QAC quantizers' (t, α) (None: same as the rest)
    quant_lr: float | None = None    # QAT: its learning rate (None: lr); cosine-scheduled like the rest
    latency_weight: float = 0.0      # QAT: λ of multispike's latency term λ·Σ_l w_l·t_l (0: cross-entropy only)
    latency_per_layer: str = "uniform"   # QAT: w_l = 1 (uniform) or the synaptic MACs, mean 1 (macs)


def _param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    decay, no_decay = [], []
    for mod in model.modules():
        for pname, p in mod.named_parameters(recurse=False):
            if not p.requires_grad:
                continue
            is_weight = pname == "weight" and isinstance(mod, (nn.Conv1d, nn.Conv2d, nn.Linear))
            (decay if is_weight else no_decay).append(p)
    groups = [{"params": decay, "weight_decay": weight_decay}]
    if no_decay:
        groups.append({"params": no_decay, "weight_decay": 0.0})
    return groups


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


@contextlib.contextmanager
def exact_fp32(device: torch.device) -> Iterator[None]:
    """No TF32 inside (evaluation and calibration must see full fp32 arithmetic)."""
    if device.type != "cuda":
        yield
        return
    old = _get_tf32()
    _set_tf32(False)
    try:
        yield
    finally:
        if old is not None:
            _set_tf32(old)


def _get_tf32() -> bool | None:
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32 and torch.backends.cudnn.allow_tf32)
    except Exception:  # noqa: BLE001 - a torch without the legacy flags: leave the defaults alone
        return None


def _set_tf32(enabled: bool) -> None:
    """Set TF32 for matmuls and cuDNN convolutions (legacy flags; torch >= 2.9 also offers ``fp32_precision``)."""
    try:
        torch.backends.cuda.matmul.allow_tf32 = enabled
        torch.backends.cudnn.allow_tf32 = enabled
    except Exception as exc:  # noqa: BLE001 - precision flags must never stop a run
        print(f"warning: could not set TF32 to {enabled}: {exc}", file=sys.stderr)


def _autocast(device: torch.device, enabled: bool):
    if not enabled:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def _outputs(model: nn.Module, x: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "tet" or hasattr(model, "forward_sequence"):
        return model.forward_sequence(x)          # [T, B, K]
    return model(x).unsqueeze(0)


def _loss(out: torch.Tensor, y: torch.Tensor, loss: str) -> torch.Tensor:
    if loss == "tet":
        from multispike.train import tet_loss
        return tet_loss(out.float(), y)
    return F.cross_entropy(out.float().mean(0), y)


def _make_opt(name: str, params: list, lr: float) -> torch.optim.Optimizer:
    if name == "sgd":
        return torch.optim.SGD(params, lr=lr, momentum=0.9, nesterov=True)
    if name == "adam":
        return torch.optim.Adam(params, lr=lr)
    raise ValueError(f"unknown optimizer {name!r}; use 'sgd' or 'adam'")


def _optimizer(model: nn.Module, spec: TrainSpec):
    """The phase's optimizer. Every group carries ``base_lr`` (the cosine schedule scales it). With ``quant_opt`` or
    ``quant_lr`` the QAC quantizers' (t, α) get a group of their own (weight decay 0) - and, when ``quant_opt``
    differs from ``opt``, an optimizer of their own (``multispike.train.optim.CompositeOptimizer``)."""
    from multispike.quant.qac import quantizer_parameters

    quant = quantizer_parameters(model) if (spec.quant_opt or spec.quant_lr is not None) else []
    qids = {id(p) for p in quant}
    params = [{**g, "params": [p for p in g["params"] if id(p) not in qids], "base_lr": spec.lr}
              for g in _param_groups(model, spec.weight_decay)]
    params = [g for g in params if g["params"]]
    if not quant:
        return _make_opt(spec.opt, params, spec.lr)
    q_lr = spec.lr if spec.quant_lr is None else spec.quant_lr
    q_group = {"params": quant, "weight_decay": 0.0, "lr": q_lr, "base_lr": q_lr}
    q_opt = spec.quant_opt or spec.opt
    if q_opt == spec.opt:
        return _make_opt(spec.opt, [*params, q_group], spec.lr)
    from multispike.train.optim import CompositeOptimizer
    return CompositeOptimizer([_make_opt(spec.opt, params, spec.lr), _make_opt(q_opt, [q_group], q_lr)])


def _regulariser(model: nn.Module, spec: TrainSpec):
    """The latency term of a QAT phase (``multispike.quant.qac.LatencyRegulariser``), or None."""
    if not spec.latency_weight:
        return None
    from multispike.quant.qac import LatencyRegulariser
    return LatencyRegulariser(model, spec.latency_weight, spec.latency_per_layer)


def _step(model: nn.Module, opt: torch.optim.Optimizer, x: torch.Tensor, y: torch.Tensor, spec: TrainSpec,
          device: torch.device, reg=None) -> tuple[torch.Tensor, torch.Tensor]:
    """One optimizer step; returns the task loss (without any latency term ``reg()``) and the outputs
    ``[T, B, K]``."""
    if spec.channels_last and x.dim() == 4:
        x = x.contiguous(memory_format=torch.channels_last)
    with _autocast(device, spec.amp):
        out = _outputs(model, x, spec.loss)
    loss = _loss(out, y, spec.loss)
    opt.zero_grad(set_to_none=True)
    (loss if reg is None else loss + reg()).backward()
    opt.step()
    reset_net(model)
    return loss, out


def time_steps(model: nn.Module, loader: Iterable, spec: TrainSpec, ctx: "Context", steps: int = 3) -> float:
    """Seconds per training step of ``model`` under ``spec``, measured on a deep copy (one untimed warm-up step,
    then ``steps`` timed ones); ``model`` itself and the loader's epoch counter are left as they were."""
    probe = copy.deepcopy(model)
    if spec.channels_last:
        probe.to(memory_format=torch.channels_last)
    probe.train()
    opt = _optimizer(probe, spec)
    reg = _regulariser(probe, spec)
    epoch = getattr(loader, "epoch", None)
    t, done, b = None, 0, 0
    while done < steps:  # several passes if the loader has fewer than steps + 1 batches
        before = b
        for x, y in loader:
            _step(probe, opt, x, y, spec, ctx.device, reg)
            if b == 0:
                _sync(ctx.device)
                t = time.perf_counter()
            else:
                done += 1
            b += 1
            if done >= steps:
                break
        if b == before:
            raise ValueError("time_steps: the loader yielded no batch")
    _sync(ctx.device)
    if epoch is not None and hasattr(loader, "set_epoch"):
        loader.set_epoch(epoch)
    del probe, opt
    return (time.perf_counter() - t) / done


def plan_equal_epochs(table: "TableRun", group: str, members: list[tuple[str, nn.Module, Any, TrainSpec]],
                      epochs: float, *, slack: float = 1.5, repeats: int = 1) -> tuple[float, dict[str, float]]:
    """Give every member of a compared group the same number of epochs within the group's allotment.

    ``members``: ``(name, model, loader, spec)``. Each member's speed is measured with :func:`time_steps`; the
    common epoch count is ``min(epochs, allotment / Σ seconds per epoch)`` (fractional epochs allowed, at least
    ``min_steps`` steps each). Returns it and a per-member allotment (its expected time × ``slack``), so the
    in-phase guard of :func:`fit` only cuts a member when its speed was badly mis-measured (recorded).
    ``repeats``: every member is trained that many times (e.g. once per seed) within the allotment.
    """
    ctx = table.ctx
    allot = table.planner.allot(group)
    t0 = time.perf_counter()
    if t0 > ctx.hard_deadline:  # out of time: no probing; fit() will stop each member after its first step
        plan = {"allotted_s": round(allot, 2), "planned_epochs": epochs, "common_epochs": None, "cut": True,
                "reason": "hard deadline of the run reached before this group started"}
        table.extra.setdefault("equal_epoch_plans", {})[group] = plan
        return min(float(epochs), 1.0), {name: 0.0 for name, *_ in members}
    rows, per_epoch = [], 0.0
    for name, model, loader, spec in members:
        sec = time_steps(model, loader, spec, ctx)
        spe = len(loader) if ctx.profile.max_batches is None else min(len(loader), ctx.profile.max_batches)
        rows.append((name, sec, spe, spec.min_steps))
        per_epoch += sec * spe
    budget = max(0.0, allot - (time.perf_counter() - t0))
    common = min(float(epochs), budget / max(per_epoch * max(1, repeats), 1e-9))
    floor = max(min(ms, spe) / spe for _, _, spe, ms in rows)
    common = max(common, min(float(epochs), floor))
    allots = {name: common * spe * sec * slack + 2.0 for name, sec, spe, _ in rows}
    plan = {"allotted_s": round(allot, 2), "planned_epochs": epochs, "common_epochs": round(common, 4),
            "repeats": repeats,
            "cut": common < epochs, "probe_s": round(time.perf_counter() - t0, 2),
            "members": {name: {"sec_per_step": round(sec, 5), "steps_per_epoch": spe} for name, sec, spe, _ in rows}}
    table.extra.setdefault("equal_epoch_plans", {})[group] = plan
    ctx.log(f"  plan {group}: {common:.3g} epochs each (planned {epochs:g}, group allotment {allot:.1f} s)")
    return common, allots


def fit(model: nn.Module, loader: TensorLoader | Iterable, spec: TrainSpec, *, name: str, ctx: "Context",
        allot_s: float, steps_per_epoch: int | None = None) -> dict:
    """Train ``model`` in place under a time allotment; returns the phase record (JSON-ready).

    The cosine learning rate (with optional linear warm-up) is a function of ``step / total_steps``, where
    ``total_steps`` starts at ``epochs * batches`` and only ever shrinks when the measured speed says the
    allotment would be overrun (so the schedule still ends at zero).
    """
    device = ctx.device
    spe = steps_per_epoch if steps_per_epoch is not None else len(loader)
    if ctx.profile.max_batches:
        spe = min(spe, ctx.profile.max_batches)
    planned = max(1, int(round(spec.epochs * spe)))
    total = planned
    min_steps = min(planned, spec.min_steps)
    opt = _optimizer(model, spec)
    reg = _regulariser(model, spec)
    warm = int(spec.warmup_epochs * spe)
    if spec.channels_last:
        model.to(memory_format=torch.channels_last)
    record: dict[str, Any] = {"name": name, "opt": spec.opt, "lr": spec.lr, "weight_decay": spec.weight_decay,
                              "loss": spec.loss, "batch_size": getattr(loader, "batch_size", None),
                              "steps_per_epoch": spe, "epochs_planned": spec.epochs, "steps_planned": planned,
                              "precision": ("bf16 autocast" if spec.amp else
                                            ("tf32" if device.type == "cuda" and ctx.profile.tf32 else "fp32")),
                              "channels_last": spec.channels_last, "allotted_s": round(allot_s, 2), "cuts": [],
                              "epoch_loss": [], "epoch_train_acc": [], "status": "ok"}
    if spec.log_quantizers:
        record["quantizers_per_epoch"] = []
    if spec.quant_opt or spec.quant_lr is not None:
        record.update(quant_opt=spec.quant_opt or spec.opt, quant_lr=spec.quant_lr)
    if reg is not None:
        record.update(latency_weight=spec.latency_weight, latency_per_layer=spec.latency_per_layer,
                      latency_term_per_epoch=[])
    t0 = time.perf_counter()
    step, epoch = 0, 0
    probe_at, probe_start = min(spe, 6), None
    model.train()
    if spec.freeze_bn:
        # A converted network keeps its ANN's BN statistics: re-estimating them from spike trains, whose per-step
        # statistics differ from the ANN's activations, collapses fine-tuning (measured on digits: 87.5% -> 59.3%).
        for mod in model.modules():
            if isinstance(mod, nn.modules.batchnorm._BatchNorm):
                mod.eval()
    record["freeze_bn"] = bool(spec.freeze_bn)
    stop = False
    while step < total and not stop:
        if hasattr(loader, "set_epoch"):
            loader.set_epoch(epoch)
        loss_sum = torch.zeros((), device=device)
        correct = torch.zeros((), device=device, dtype=torch.int64)
        seen = 0
        for b, (x, y) in enumerate(loader):
            if b >= spe or step >= total:
                break
            if step == 1 and epoch == 0:
                _sync(device)
                probe_start = time.perf_counter()
            frac = step / max(1, total)
            lr_scale = (step + 1) / warm if step < warm else 0.5 * (1 + math.cos(math.pi * min(1.0, frac)))
            for g in opt.param_groups:
                g["lr"] = g.get("base_lr", spec.lr) * lr_scale
            loss, out = _step(model, opt, x, y, spec, device, reg)
            loss_sum += loss.detach() * y.shape[0]
            correct += (out.detach().float().mean(0).argmax(-1) == y).sum()
            seen += y.shape[0]
            step += 1
            if epoch == 0 and step == probe_at and probe_start is not None and step > 1:
                _sync(device)
                per_step = (time.perf_counter() - probe_start) / (step - 1)
                feasible = int(max(0.0, allot_s - (time.perf_counter() - t0)) / max(per_step, 1e-9)) + step
                if feasible < total:
                    new_total = max(min_steps, feasible)
                    if new_total < total:
                        record["cuts"].append({"at_step": step, "reason": "probe: measured speed exceeds the "
                                               "allotment", "sec_per_step": round(per_step, 5),
                                               "steps_before": total, "steps_after": new_total})
                        total = new_total
            if step % 20 == 0:
                _sync(device)
            if time.perf_counter() > ctx.hard_deadline:
                record["cuts"].append({"at_step": step, "reason": "hard deadline of the run reached",
                                       "steps_before": total, "steps_after": step})
                stop = True
                break
        _sync(device)
        epoch += 1
        mean_loss = float(loss_sum) / max(1, seen)
        record["epoch_loss"].append(round(mean_loss, 5))
        record["epoch_train_acc"].append(round(100.0 * float(correct) / max(1, seen), 3))
        if spec.log_quantizers:
            from multispike.quant import quantizer_summary
            record["quantizers_per_epoch"].append([{"layer": r["layer"], "T": r["T"], "t": round(r.get("t", 0), 4),
                                                    "alpha": round(r["alpha"], 4)}
                                                   for r in quantizer_summary(model)])
        if reg is not None:
            with torch.no_grad():
                record["latency_term_per_epoch"].append(round(float(reg()), 6))
        if not math.isfinite(mean_loss):
            record["status"] = "diverged"
            record["cuts"].append({"at_step": step, "reason": "non-finite training loss", "steps_before": total,
                                   "steps_after": step})
            break
        elapsed = time.perf_counter() - t0
        if step < total and not stop:
            # Mean step time since step 1 (step 0 carries one-off costs such as cuDNN autotuning).
            per_step = ((time.perf_counter() - probe_start) / (step - 1) if probe_start is not None and step > 1
                        else elapsed / step)
            feasible = step + int(max(0.0, allot_s - elapsed) / max(per_step, 1e-9))
            if feasible < total:
                new_total = max(step, min(total, max(min_steps, feasible)))
                if new_total < total:
                    record["cuts"].append({"at_step": step, "reason": f"after epoch {epoch}: measured speed exceeds "
                                           f"the allotment", "sec_per_step": round(per_step, 5),
                                           "steps_before": total, "steps_after": new_total})
                    total = new_total
    model.eval()
    if reg is not None:
        record["latency_layer_weights"] = reg.weights if reg.ready else None
        reg.close()
    if spec.channels_last:
        model.to(memory_format=torch.contiguous_format)
    record["steps_run"] = step
    record["epochs_run"] = round(step / spe, 3)
    record["seconds"] = round(time.perf_counter() - t0, 2)
    ctx.log(f"  [{name}] {record['epochs_run']:g}/{spec.epochs:g} epochs in {record['seconds']:.1f} s "
            f"(allotted {allot_s:.1f} s), last loss {record['epoch_loss'][-1] if record['epoch_loss'] else 'n/a'}"
            + (f", {len(record['cuts'])} cut(s)" if record["cuts"] else ""))
    return record


# ----------------------------------------------------------------------------------------------------
# Evaluation
# ----------------------------------------------------------------------------------------------------
@torch.no_grad()
def evaluate(model: nn.Module, loader: Iterable, ctx: "Context", *, prefix: bool = False) -> dict:
    """Top-1 accuracy (%) of the time-mean output in full fp32; ``prefix=True`` also returns the accuracy of
    the cumulative mean after every step (only meaningful for causal networks)."""
    model.eval()
    correct, n, pre = 0, 0, None
    with exact_fp32(ctx.device):
        for b, (x, y) in enumerate(loader):
            if ctx.profile.max_batches and b >= ctx.profile.max_batches:
                break
            reset_net(model)
            out = model.forward_sequence(x) if hasattr(model, "forward_sequence") else model(x).unsqueeze(0)
            out = out.float()
            correct += int((out.mean(0).argmax(-1) == y).sum())
            n += int(y.numel())
            if prefix:
                hits = prefix_correct(out, y).double().cpu()     # the package's one prefix readout
                pre = hits if pre is None else pre + hits
    reset_net(model)
    if n == 0:
        raise ValueError("evaluate: the evaluation loader is empty")
    res = {"accuracy": 100.0 * correct / n, "n": n}
    if prefix:
        res["prefix"] = (100.0 * pre / n).tolist()
    return res


def loaders(ctx: "Context", train_x: torch.Tensor, train_y: torch.Tensor, test_x: torch.Tensor, test_y: torch.Tensor,
            *, batch: int | None = None, seed: int = 0, augment: bool = True) -> tuple[TensorLoader, TensorLoader]:
    """CIFAR train loader (crop 4 + flip, drop_last) and test loader, with the data on the run's device."""
    p = ctx.profile
    train = TensorLoader(train_x, train_y, batch or p.batch_size, shuffle=True, drop_last=True, seed=seed,
                         augment=Augment(crop_padding=4, hflip=True) if augment else None, mean=CIFAR_MEAN,
                         std=CIFAR_STD, device=ctx.device)
    test = TensorLoader(test_x, test_y, p.eval_batch, shuffle=False, mean=CIFAR_MEAN, std=CIFAR_STD,
                        device=ctx.device)
    return train, test


# ----------------------------------------------------------------------------------------------------
# Verdict rules
# ----------------------------------------------------------------------------------------------------
def stderr_pp(acc: float, n: int) -> float:
    """Binomial standard error of an accuracy (%), in percentage points."""
    p = min(max(acc / 100.0, 0.0), 1.0)
    return 100.0 * math.sqrt(max(p * (1 - p), 1e-12) / max(1, n))


def noise_margin(a: float, b: float, n: int, z: float = 2.0) -> float:
    """``z`` standard errors of the difference of two accuracies measured on ``n`` test images each (treated
    as independent, which is conservative for paired measurements on the same images)."""
    return z * math.sqrt(stderr_pp(a, n) ** 2 + stderr_pp(b, n) ** 2)


def judge_greater(a: float, b: float, n: int, what: str, *, min_gap: float = 0.0) -> tuple[str, str]:
    """Claim "a > b (by at least ``min_gap``)": reproduced when ``a - b`` exceeds ``max(min_gap, noise)``,
    partly when ``a >= b`` but within that margin, not reproduced when ``a < b``."""
    gap, margin = a - b, max(min_gap, noise_margin(a, b, n))
    if gap > margin:
        return "reproduced", f"{what}: difference {gap:+.2f} pp exceeds the margin {margin:.2f} pp"
    if gap >= 0:
        return "partly reproduced", (f"{what}: difference {gap:+.2f} pp is positive but within the margin "
                                     f"{margin:.2f} pp")
    return "not reproduced", f"{what}: difference {gap:+.2f} pp (the claimed order is reversed)"


def judge_close(a: float, b: float, n: int, tol: float, what: str) -> tuple[str, str]:
    """Claim "a is within ``tol`` of b (not worse)": reproduced if ``a >= b - tol``, partly if ``a >= b - 2·tol``
    or within the noise margin of ``b - tol``."""
    gap, margin = a - b, noise_margin(a, b, n)
    if gap >= -tol:
        return "reproduced", f"{what}: {gap:+.2f} pp, not below the tolerance of −{tol:g} pp"
    if gap >= -2 * tol or gap + margin >= -tol:
        return "partly reproduced", (f"{what}: {gap:+.2f} pp, outside -{tol:g} pp but within -{2 * tol:g} pp or "
                                     f"the noise")
    return "not reproduced", f"{what}: {gap:+.2f} pp, worse than -{2 * tol:g} pp"


def equal_epochs_check(table: "TableRun", keys: tuple[str, ...], verdict: str, why: str) -> tuple[str, str]:
    """A comparison that assumes equal training epochs is downgraded to 'partly reproduced' when the time guard
    left the compared rows with different epoch counts (more than 2% apart); the reason says so."""
    eps = [table.find(k).get("epochs_run") for k in keys if table.find(k) is not None]
    eps = [e for e in eps if e is not None]
    if len(eps) == len(keys) and eps and max(eps) > 1.02 * min(eps):
        why += f"; epochs unequal {dict(zip(keys, eps))} (time guard)"
        if verdict == "reproduced":
            verdict = "partly reproduced"
    return verdict, why



# ----------------------------------------------------------------------------------------------------
# Run context and table bookkeeping
# ----------------------------------------------------------------------------------------------------
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
            _set_tf32(profile.tf32)
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
        self._cifar: CifarData | None = None
        self._nmnist: NMNISTData | None = None

    def log(self, msg: str) -> None:
        if not self.quiet:
            print(f"[{time.perf_counter() - self.t_start:7.1f}s] {msg}", flush=True)

    @property
    def cifar(self) -> CifarData:
        if self._cifar is None:
            p = self.profile
            t = time.perf_counter()
            self._cifar = load_cifar_subset(self.data_dir, p.cifar_train, p.cifar_test, p.subset_seed)
            self.log(f"CIFAR-10 subset: {len(self._cifar.train_y)} train / {len(self._cifar.test_y)} test from "
                     f"{self._cifar.provenance['source']['kind']} ({time.perf_counter() - t:.1f} s)")
        return self._cifar

    @property
    def nmnist(self) -> NMNISTData:
        if self._nmnist is None:
            p = self.profile
            t = time.perf_counter()
            self._nmnist = load_nmnist(self.data_dir, p.nmnist_train, p.nmnist_test, p.subset_seed)
            self.log(f"N-MNIST-small: {len(self._nmnist.train_y)} train / {len(self._nmnist.test_y)} test "
                     f"({time.perf_counter() - t:.1f} s)")
        return self._nmnist

    def seed(self, name: str) -> int:
        s = phase_seed(self.profile.seed, name)
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


class TableRun:
    """Rows, claims, phase records and errors of one table, and its writer."""

    def __init__(self, name: str, title: str, ctx: Context, seconds: float, weights: dict[str, float]) -> None:
        self.name = name
        self.title = title
        self.ctx = ctx
        self.seconds = seconds
        self.t0 = time.perf_counter()
        self.planner = Planner(self.t0 + seconds, weights)
        self.rows: list[dict] = []
        self.claims: list[dict] = []
        self.phases: list[dict] = []
        self.errors: list[dict] = []
        self.notes: list[str] = []
        self.extra: dict[str, Any] = {}
        self.scale: dict[str, Any] = {}
        self.interrupted = False

    @contextlib.contextmanager
    def guard(self, what: str) -> Iterator[None]:
        """Record an exception in ``errors`` and carry on with the next part of the table."""
        try:
            yield
        except Exception as exc:  # noqa: BLE001 - a failing row must not stop the table
            tb = traceback.format_exc()
            self.errors.append({"part": what, "error": f"{type(exc).__name__}: {exc}", "traceback": tb[-4000:]})
            self.ctx.log(f"  ERROR in {what}: {type(exc).__name__}: {exc}")

    def add_row(self, group: str, method: str, setting: str, measured: float | None, *, paper: str | None = None,
                n: int | None = None, **extra: Any) -> dict:
        row = {"group": group, "method": method, "setting": setting,
               "accuracy": None if measured is None else round(float(measured), 4), "n_test": n,
               "paper_reports": paper, **extra}
        self.rows.append(row)
        acc = "n/a" if measured is None else f"{measured:.2f}%"
        self.ctx.log(f"  {group} | {method} | {setting}: {acc}")
        self.write(final=False)  # a killed run still leaves every finished row on disk
        return row

    def add_claim(self, cid: str, claim: str, rule: str, verdict: str, reason: str, *, paper: str | None = None,
                  measured: dict | None = None) -> None:
        if verdict not in VERDICTS:
            raise ValueError(f"verdict must be one of {VERDICTS}, got {verdict!r}")
        self.claims.append({"id": cid, "claim": claim, "rule": rule, "paper_reports": paper,
                            "measured": measured or {}, "verdict": verdict, "reason": reason})

    def find(self, key: str) -> dict | None:
        return next((r for r in self.rows if r.get("key") == key), None)

    def acc(self, key: str) -> float | None:
        r = self.find(key)
        return None if r is None else r.get("accuracy")

    # -- output -----------------------------------------------------------------------------------------
    def result(self, final: bool = True) -> dict:
        ctx = self.ctx
        status = "ok" if not self.errors else ("partial" if self.rows else "failed")
        if self.interrupted:
            status = "interrupted"
        elif not final:
            status = "running"
        return {
            "schema_version": SCHEMA_VERSION, "table": self.name, "title": self.title, "status": status,
            "command": ctx.command, "profile": ctx.profile.to_dict(), "environment": ctx.env,
            "scale": self.scale, "budget": {"table_seconds": round(self.seconds, 1),
                                            "allotments": self.planner.log},
            "rows": self.rows, "claims": self.claims, "phases": self.phases, "notes": self.notes,
            "errors": self.errors, "extra": self.extra, "paper_source": SPEC_SECTION,
            "wall_time_s": round(time.perf_counter() - self.t0, 2),
        }

    def write(self, final: bool = True) -> dict:
        """Write ``evidence_<name>.json`` and ``.md`` (atomically); ``final=False`` marks the table as running."""
        res = self.result(final)
        out = self.ctx.out_dir
        for path, text in ((out / f"evidence_{self.name}.json", json.dumps(_jsonable(res), indent=1) + "\n"),
                           (out / f"evidence_{self.name}.md", render_markdown(res))):
            tmp = path.with_name(path.name + ".tmp")
            tmp.write_text(text)
            os.replace(tmp, path)
        if final:
            self.ctx.log(f"wrote {out / f'evidence_{self.name}.json'} and .md ({res['status']}, "
                         f"{res['wall_time_s']:.1f} s)")
        return res


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    if isinstance(obj, torch.Tensor):
        return _jsonable(obj.tolist())
    if isinstance(obj, Path):
        return str(obj)
    return obj


def _fmt(v: Any, digits: int = 2) -> str:
    if v is None:
        return "—"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def render_markdown(res: dict) -> str:
    """The table as Markdown: provenance, measured rows with the paper column apart, claims with verdicts."""
    env, prof = res["environment"], res["profile"]
    hw = env["gpu"]["name"] if env.get("gpu") else f"CPU ({env['cpu']}, {env['torch_threads']} threads)"
    lines = [f"# {res['title']}", "",
             f"- Command: `{res['command']}`",
             f"- Commit: `{env['commit']}` (code sha256 `{env['code_sha256'][:16]}…`), profile `{prof['name']}`, "
             f"status **{res['status']}**",
             f"- Hardware: {hw}; torch {env['torch']}, CUDA {env['cuda']}, Python {env['python']}",
             f"- Wall time: {res['wall_time_s']:.1f} s (budget {res['budget']['table_seconds']:.0f} s)"]
    for k, v in res.get("scale", {}).items():
        lines.append(f"- {k}: {v}")
    lines += ["", "## Measured (top-1 %, test subset) and, apart, what the paper reports", "",
              "| group | method | setting | measured | notes | paper reports (separate; §8) |",
              "|---|---|---|---|---|---|"]
    for r in res["rows"]:
        lines.append(f"| {r['group']} | {r['method']} | {r['setting']} | {_fmt(r['accuracy'])} | "
                     f"{r.get('notes', '') or ''} | {r.get('paper_reports') or '—'} |")
    lines += ["", "## Claims", "", "| claim | rule | verdict | reason |", "|---|---|---|---|"]
    for c in res["claims"]:
        lines.append(f"| {c['claim']} | {c['rule']} | **{c['verdict']}** | {c['reason']} |")
    lines += ["", "## Training phases (planned vs run; cuts by the time budget)", "",
              "| phase | epochs planned | epochs run | seconds | precision | cuts / reuse |",
              "|---|---|---|---|---|---|"]
    for p in res["phases"]:
        cuts = "; ".join(c["reason"] for c in p.get("cuts", [])) or ""
        if p.get("reused"):
            cuts = (cuts + "; " if cuts else "") + p["reused"]
        lines.append(f"| {p.get('name')} | {_fmt(p.get('epochs_planned'), 0)} | {_fmt(p.get('epochs_run'), 2)} | "
                     f"{_fmt(p.get('seconds'), 1)} | {p.get('precision', '')} | {cuts} |")
    if res["notes"]:
        lines += ["", "## Notes", ""] + [f"- {n}" for n in res["notes"]]
    if res["errors"]:
        lines += ["", "## Errors", ""] + [f"- {e['part']}: `{e['error']}`" for e in res["errors"]]
    lines += ["", f"Paper numbers come only from {res['paper_source']}; they are for the papers' datasets, networks "
              f"and schedules and are shown for orientation, not as targets at this scale.", ""]
    return "\n".join(lines)


# ----------------------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------------------
def add_common_args(ap: argparse.ArgumentParser) -> None:
    ap.add_argument("--profile", choices=list(PROFILES), default="quick",
                    help="scale of the run: quick (CI smoke test, < 1 min on CPU), cpu_small (ResNet-8 on 5k "
                         "CIFAR-10, about 10 min per table on one CPU thread), cpu (the issue's full mode, about "
                         "an hour per table on 2 cores), gpu (all tables in about 7 minutes on one GPU)")
    ap.add_argument("--data", type=Path, default=None,
                    help="a bundle from make_bundle.py, or the shared datasets folder (default: $MULTISPIKE_DATA, "
                         "<repo>/.evidence_data if it holds a bundle, else <repo>/../shared/datasets)")
    ap.add_argument("--out", type=Path, required=True, help="folder for evidence_<table>.json and .md")
    ap.add_argument("--dry-run", action="store_true",
                    help="shrink the profile (tiny data, 1 epoch of 2 batches) to run every code path quickly")
    ap.add_argument("--max-seconds", type=float, default=None,
                    help="override the profile's time budget (seconds for the whole command)")
    ap.add_argument("--device", default=None, help="torch device (default: cuda when the profile prefers it and "
                    "one is available, else cpu)")
    ap.add_argument("--commit", default=None, help="commit to record when the copy has no .git")
    ap.add_argument("--cache-dir", type=Path, default=None,
                    help="keep the shared ANNs here (outside the repository) so separate table commands reuse them")
    ap.add_argument("--hard-seconds", type=float, default=None,
                    help="hard limit from the start (default: 1.05 x the budget + 10 s); past it every phase stops "
                         "after one step; set it below any external time limit")
    ap.add_argument("--quiet", action="store_true", help="no progress lines")


def make_context(args: argparse.Namespace, argv: list[str] | None = None) -> Context:
    prof = get_profile(args.profile, dry_run=args.dry_run, max_seconds=args.max_seconds)
    data = args.data if args.data is not None else default_data_dir()
    return Context(prof, data, args.out, device=args.device, commit=args.commit, cache_dir=args.cache_dir,
                   quiet=args.quiet, hard_seconds=args.hard_seconds, argv=argv)


def table_main(module: Any, argv: list[str] | None = None) -> int:
    """Entry point of a single-table script (``module`` has ``NAME``, ``TITLE``, ``weights``, ``run``, ``judge``)."""
    ap = argparse.ArgumentParser(description=module.TITLE)
    add_common_args(ap)
    args = ap.parse_args(argv)
    install_signal_handlers()
    ctx = make_context(args, None if argv is None else [sys.argv[0], *argv])
    seconds = ctx.profile.table_seconds[module.NAME] if args.max_seconds is None else args.max_seconds
    res = run_table(ctx, module, seconds)
    return {"failed": 1, "interrupted": 2}.get(res["status"], 0)


def run_table(ctx: Context, module: Any, seconds: float) -> dict:
    """Run one table with its budget, then its verdict rules; an exception is recorded and the (partial) result
    is still written. :class:`Interrupted` is recorded too and then re-raised (after writing) in ``result``'s
    status ``interrupted``; the caller decides whether to go on."""
    name = module.NAME
    ctx.log(f"== table {name}: budget {seconds:.0f} s, device {ctx.device}, profile {ctx.profile.name}")
    table = TableRun(name, module.TITLE, ctx, seconds, module.weights(ctx.profile))
    try:
        with table.guard(f"table {name}"):
            module.run(table)
    except Interrupted as exc:
        table.interrupted = True
        table.errors.append({"part": f"table {name}", "error": f"interrupted: {exc}", "traceback": ""})
        ctx.log(f"  INTERRUPTED in table {name}: {exc}")
    try:
        with table.guard(f"verdicts of table {name}"):
            module.judge(table)
    except Interrupted as exc:
        table.interrupted = True
        table.errors.append({"part": f"verdicts of table {name}", "error": f"interrupted: {exc}", "traceback": ""})
    return table.write()


# ----------------------------------------------------------------------------------------------------
# Shared ANNs (trained once per process and reused by the tables) and operation counts
# ----------------------------------------------------------------------------------------------------
def sgd_lr(profile: Profile, base: float = 0.1, base_batch: int = 256) -> float:
    """Linear batch-size scaling of an SGD learning rate (0.1 at batch 256 = 0.025 at LM-HT's batch 64)."""
    return base * profile.batch_size / base_batch


def _train_ann(table: TableRun, phase: str, neuron: str, neuron_kwargs: dict,
               epochs_key: str) -> tuple[nn.Module, dict]:
    ctx, p = table.ctx, table.ctx.profile
    data = ctx.cifar
    seed = ctx.seed(phase)
    model = create_backbone(p.backbone, neuron, 1, neuron_kwargs).to(ctx.device)
    train, test = loaders(ctx, data.train_x, data.train_y, data.test_x, data.test_y, seed=seed)
    spec = TrainSpec(epochs=p.epochs[epochs_key], lr=sgd_lr(p), opt="sgd", weight_decay=5e-4, amp=p.amp,
                     channels_last=p.channels_last)
    rec = fit(model, train, spec, name=phase, ctx=ctx, allot_s=table.planner.allot(phase))
    ev = evaluate(model, test, ctx)
    rec.update(test_accuracy=ev["accuracy"], n_test=ev["n"], seed=seed, factory="backbone",
               factory_kwargs={"backbone": p.backbone, "neuron": neuron, "T": 1, "neuron_kwargs": neuron_kwargs})
    return model, rec


def float_ann(table: TableRun) -> tuple[nn.Module, dict]:
    """The float ReLU ANN of the backbone (shared by the LM-HT and M-LIF tables); phase ``ann_float``."""
    return table.ctx.get_shared("ann_float", lambda: _train_ann(table, "ann_float", "relu", {}, "ann"), table,
                                "ann_float")


def qcfs_ann(table: TableRun) -> tuple[nn.Module, dict]:
    """The QCFS ANN with ``profile.qcfs_levels`` levels (shared by the LM-HT and QAC tables); phase ``ann_qcfs``."""
    kw = {"levels": table.ctx.profile.qcfs_levels}
    return table.ctx.get_shared("ann_qcfs", lambda: _train_ann(table, "ann_qcfs", "qcfs", kw, "qcfs"), table,
                                "ann_qcfs")


def count_operations(model: nn.Module, loader: Iterable, ctx: Context, *, input_events: str | None = None):
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
