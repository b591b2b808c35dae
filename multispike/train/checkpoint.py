"""Crash-safe checkpoints: safetensors for tensors, JSON for everything else, no pickle anywhere.

Layout of a checkpoint directory (``<out>/checkpoints``)::

    s000000120-e0003.safetensors   model tensors ("model.<key>") + optimizer tensors ("optim.<index>.<key>")
    s000000120-e0003.json          epoch, step, rng states, config, optimizer groups, scheduler, scaler,
                                   and the sha256 + size of the .safetensors file it belongs to
    last.json                      pointer {"checkpoint": "s000000120-e0003.json"}
    best.json                      pointer to the checkpoint with the best evaluation accuracy (optional)

Write protocol (each file: temporary file in the same directory, ``fsync``, ``os.replace``, directory
``fsync``): tensors first, then their JSON, then the pointer. A run killed at any moment therefore leaves
``last.json`` pointing at a complete, verified pair; an interrupted write only leaves an orphaned temporary
file, and a failed run never overwrites a good checkpoint (file names are unique per step). Old pairs are
pruned only after the pointer has moved.

Loading verifies the JSON, the format marker, the file size and the sha256 before reading tensors, so a
truncated or corrupt file, or a pair that does not belong together, raises :class:`CheckpointError` with the
path and the fix. The JSON itself is covered too: ``meta_sha256`` is the sha256 of the record's canonical JSON
(every other key, sorted, compact), and the record holds the tensors' sha256, so an edited field or swapped tensors
file is detected (format version 2; version-1 checkpoints, written before the JSON digest, still load).

The digest detects corruption and edits, it does not authenticate: whoever can write a checkpoint can recompute
it. What makes a checkpoint from an untrusted source safe to load is that it is data only - tensors through
safetensors, JSON through ``json`` - and that nothing named in it is imported: conversion hooks resolve through
the allow-list of :mod:`multispike.train.hooks`, models and neurons through their registries.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

import numpy as np
import torch
from torch import nn

# CheckpointError is defined below every subpackage so the conversion recipes (multispike.convert.recipe) raise
# the same class; re-exported here, its historical home.
from .._errors import CheckpointError
from .._fileio import _atomic_replace, _fsync_dir, atomic_write_bytes, atomic_write_text, sha256_file  # noqa: F401

__all__ = ["CheckpointError", "Checkpoint", "FORMAT", "atomic_write_bytes", "atomic_write_text", "save_checkpoint",
           "load_checkpoint", "resolve_checkpoint_path", "load_model_state", "flatten_optimizer_state",
           "unflatten_optimizer_state", "capture_rng_state", "restore_rng_state", "sha256_file", "meta_digest",
           "verify_meta"]

FORMAT = "multispike-checkpoint"
POINTER_FORMAT = "multispike-checkpoint-pointer"
VERSION = 2
META_DIGEST_KEY = "meta_sha256"


# ----------------------------------------------------------------------------------------------------
# Atomic file writes
# ----------------------------------------------------------------------------------------------------


def meta_digest(record: Mapping[str, Any]) -> str:
    """sha256 of a checkpoint record's canonical JSON (all keys but ``meta_sha256``, sorted, compact, ASCII)."""
    body = {k: v for k, v in record.items() if k != META_DIGEST_KEY}
    text = json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=True)
    return hashlib.sha256(text.encode("ascii")).hexdigest()


def verify_meta(meta: Any, json_path: str | os.PathLike) -> dict:
    """Check a parsed checkpoint record: format marker, version and (version >= 2) the JSON digest.

    Raises:
        CheckpointError: not a multispike checkpoint, a newer format, or metadata that was changed after it was
            written.
    """
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{json_path} is not a multispike checkpoint (format marker {FORMAT!r} missing)")
    try:
        version = int(meta.get("version", 0))
    except (TypeError, ValueError):
        raise CheckpointError(f"{json_path}: checkpoint format version {meta.get('version')!r} is not a number; "
                              f"the file is corrupt") from None
    if version > VERSION:
        raise CheckpointError(f"{json_path} has checkpoint format version {meta.get('version')}, newer than this "
                              f"multispike ({VERSION}); upgrade multispike")
    if version >= 2:
        recorded = meta.get(META_DIGEST_KEY)
        if not isinstance(recorded, str):
            raise CheckpointError(f"checkpoint metadata {json_path} lacks its {META_DIGEST_KEY} (format version "
                                  f"{version} always records it): the file was edited or is corrupt")
        actual = meta_digest(meta)
        if actual != recorded:
            raise CheckpointError(f"checkpoint metadata {json_path} was changed after it was written: sha256 of its "
                                  f"JSON {actual[:16]}... does not match the recorded {recorded[:16]}.... Restore "
                                  f"the original file or use an older checkpoint in {Path(json_path).parent}.")
    return meta


# ----------------------------------------------------------------------------------------------------
# RNG states as JSON lists
# ----------------------------------------------------------------------------------------------------
def capture_rng_state() -> dict:
    """Python, NumPy, torch (CPU) and CUDA generator states as JSON-serialisable lists."""
    np_state = np.random.get_state()
    py_state = random.getstate()
    state = {
        "python": [py_state[0], list(py_state[1]), py_state[2]],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "torch": torch.get_rng_state().tolist(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = [s.tolist() for s in torch.cuda.get_rng_state_all()]
    return state


def restore_rng_state(state: Mapping[str, Any]) -> None:
    """Inverse of :func:`capture_rng_state`."""
    try:
        version, internal, gauss = state["python"]
        random.setstate((version, tuple(internal), gauss))
        name, keys, pos, has_gauss, cached = state["numpy"]
        np.random.set_state((name, np.asarray(keys, dtype=np.uint32), pos, has_gauss, cached))
        torch.set_rng_state(torch.tensor(state["torch"], dtype=torch.uint8))
    except (KeyError, TypeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint rng state is malformed ({exc}); the file was not written by multispike "
                              f"or is corrupt") from exc
    if "cuda" in state and torch.cuda.is_available():
        cuda = [torch.tensor(s, dtype=torch.uint8) for s in state["cuda"]]
        if len(cuda) == torch.cuda.device_count():
            torch.cuda.set_rng_state_all(cuda)


# ----------------------------------------------------------------------------------------------------
# Optimizer state <-> flat tensors + JSON
# ----------------------------------------------------------------------------------------------------
def _jsonable(value: Any) -> Any:
    if isinstance(value, (bool, int, float, str)) or value is None:
        return value
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    raise TypeError(f"cannot store {type(value).__name__} in checkpoint JSON")


def flatten_optimizer_state(state_dict: Mapping[str, Any]) -> tuple[dict[str, torch.Tensor], dict]:
    """Split ``optimizer.state_dict()`` into tensors ``{"optim.<param index>.<key>": tensor}`` and JSON."""
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, dict] = {}
    for idx, pstate in state_dict["state"].items():
        for key, value in pstate.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim.{idx}.{key}"] = value.detach().cpu().contiguous().clone()
            else:
                scalars.setdefault(str(idx), {})[key] = _jsonable(value)
    return tensors, {"param_groups": _jsonable(state_dict["param_groups"]), "scalars": scalars}


def unflatten_optimizer_state(tensors: Mapping[str, torch.Tensor], meta: Mapping[str, Any]) -> dict:
    """Inverse of :func:`flatten_optimizer_state`."""
    state: dict[int, dict] = {}
    for name, value in tensors.items():
        if not name.startswith("optim."):
            continue
        _, idx, key = name.split(".", 2)
        state.setdefault(int(idx), {})[key] = value
    for idx, extra in meta.get("scalars", {}).items():
        state.setdefault(int(idx), {}).update(extra)
    groups = []
    for g in meta["param_groups"]:
        g = dict(g)
        if "betas" in g and isinstance(g["betas"], list):
            g["betas"] = tuple(g["betas"])
        groups.append(g)
    return {"state": state, "param_groups": groups}


# ----------------------------------------------------------------------------------------------------
# Save / load
# ----------------------------------------------------------------------------------------------------
@dataclass
class Checkpoint:
    """A loaded checkpoint: the JSON metadata, the model tensors and the optimizer state dict (or None)."""

    path: Path
    meta: dict
    model_state: dict[str, torch.Tensor]
    optimizer_state: dict | None


def _checkpoint_name(epoch: int, step: int) -> str:
    return f"s{step:09d}-e{epoch:04d}"


def save_checkpoint(directory: str | os.PathLike, model: nn.Module | Mapping[str, torch.Tensor],
                    optimizer: torch.optim.Optimizer | None, meta: Mapping[str, Any], *, epoch: int, step: int,
                    keep: int = 2, best: bool = False) -> Path:
    """Write a checkpoint pair atomically and move ``last.json`` (and ``best.json`` if ``best``) to it.

    Args:
        directory: checkpoint directory (created if needed).
        model: the model (unwrap DDP first) or its state dict.
        optimizer: the optimizer, or None for a weights-only checkpoint.
        meta: JSON-serialisable extras (config, rng, scheduler, scaler, metrics...).
        epoch: epochs completed, or the current epoch for a mid-epoch checkpoint (see ``meta``).
        step: global optimizer step.
        keep: number of most recent checkpoints to keep (the ``best`` one is always kept); 0 keeps all.
        best: also point ``best.json`` at this checkpoint.

    Returns:
        Path of the checkpoint's JSON file.
    """
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    name = _checkpoint_name(epoch, step)
    state = model.state_dict() if isinstance(model, nn.Module) else dict(model)
    tensors = {f"model.{k}": v.detach().cpu().contiguous().clone() for k, v in state.items()
               if isinstance(v, torch.Tensor)}
    optim_meta = None
    if optimizer is not None:
        opt_tensors, optim_meta = flatten_optimizer_state(optimizer.state_dict())
        tensors.update(opt_tensors)

    from safetensors.torch import save_file

    tensor_path = directory / f"{name}.safetensors"
    _atomic_replace(lambda tmp: save_file(tensors, tmp, metadata={"format": FORMAT, "name": name}), tensor_path)
    record = dict(meta)
    record.update(format=FORMAT, version=VERSION, epoch=int(epoch), step=int(step), optimizer=optim_meta,
                  tensors_file=tensor_path.name, tensors_bytes=tensor_path.stat().st_size,
                  tensors_sha256=sha256_file(tensor_path))
    json_path = directory / f"{name}.json"
    # The digest is taken over the record as it reads back (tuples become lists, keys strings), so that
    # load_checkpoint recomputes exactly the same canonical text.
    record = json.loads(json.dumps(record, sort_keys=True))
    record[META_DIGEST_KEY] = meta_digest(record)
    atomic_write_text(json_path, json.dumps(record, indent=1, sort_keys=True))
    pointer = json.dumps({"format": POINTER_FORMAT, "checkpoint": json_path.name})
    atomic_write_text(directory / "last.json", pointer)
    if best:
        atomic_write_text(directory / "best.json", pointer)
    if keep > 0:
        _prune(directory, keep)
    return json_path


def _pointer_target(pointer: Path) -> str | None:
    try:
        return json.loads(pointer.read_text())["checkpoint"]
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _prune(directory: Path, keep: int) -> None:
    protected = {t for t in (_pointer_target(directory / "last.json"), _pointer_target(directory / "best.json")) if t}
    pairs = sorted(p for p in directory.glob("s*-e*.json"))
    for json_path in pairs[:-keep]:
        if json_path.name in protected:
            continue
        for p in (json_path.with_suffix(".safetensors"), json_path):
            try:
                p.unlink()
            except FileNotFoundError:
                pass


def resolve_checkpoint_path(path: str | os.PathLike) -> Path:
    """Turn a run directory, a checkpoint directory, a pointer or a pair member into the pair's JSON path."""
    p = Path(path)
    if p.is_dir():
        for candidate in (p / "last.json", p / "checkpoints" / "last.json"):
            if candidate.exists():
                p = candidate
                break
        else:
            raise CheckpointError(f"no checkpoint in {path}: expected {p / 'checkpoints' / 'last.json'} (is this the "
                                  f"{{out}} directory of a run that finished at least one checkpoint?)", "out")
    if p.suffix == ".safetensors":
        p = p.with_suffix(".json")
    if not p.exists():
        raise CheckpointError(f"checkpoint {p} does not exist")
    try:
        record = json.loads(p.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata {p} is not valid JSON ({exc}); the file is truncated or corrupt. "
                              f"Resume from an older checkpoint in {p.parent} or start a fresh run.") from exc
    if isinstance(record, dict) and record.get("format") == POINTER_FORMAT:
        name = str(record.get("checkpoint"))
        if Path(name).name != name or name in ("", ".", ".."):
            # a pointer names a pair in its own directory; anything else is an edited or foreign file
            raise CheckpointError(f"{p} points to {name!r}, which is not a checkpoint file name in {p.parent}")
        target = p.parent / name
        if not target.exists():
            raise CheckpointError(f"{p} points to {target.name}, which does not exist in {p.parent}")
        return target
    return p


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu") -> Checkpoint:
    """Load and verify a checkpoint (see the module docstring). Never unpickles anything.

    Args:
        path: run directory, checkpoint directory, ``last.json``/``best.json``, or either file of a pair.

    Raises:
        CheckpointError: missing, truncated or corrupt files, or a size/sha256 mismatch.
    """
    json_path = resolve_checkpoint_path(path)
    try:
        meta = json.loads(json_path.read_text())
    except (UnicodeDecodeError, ValueError) as exc:
        raise CheckpointError(f"checkpoint metadata {json_path} is not valid JSON ({exc}); the file is truncated or "
                              f"corrupt") from exc
    verify_meta(meta, json_path)
    tensors_name = str(meta.get("tensors_file"))
    if Path(tensors_name).name != tensors_name or tensors_name in ("", ".", ".."):
        raise CheckpointError(f"{json_path}: tensors_file {tensors_name!r} is not a file name beside it; the file "
                              f"is corrupt or was not written by multispike")
    tensor_path = json_path.parent / tensors_name
    if not tensor_path.exists():
        raise CheckpointError(f"checkpoint tensors {tensor_path} are missing (referenced by {json_path})")
    size = tensor_path.stat().st_size
    if size != meta.get("tensors_bytes"):
        raise CheckpointError(f"checkpoint tensors {tensor_path} have {size} bytes but {json_path.name} records "
                              f"{meta.get('tensors_bytes')}: the file is truncated or was replaced. Resume from an "
                              f"older checkpoint or start a fresh run.")
    digest = sha256_file(tensor_path)
    if digest != meta.get("tensors_sha256"):
        raise CheckpointError(f"checkpoint tensors {tensor_path} are corrupt: sha256 {digest[:16]}... does not match "
                              f"{str(meta.get('tensors_sha256'))[:16]}... recorded in {json_path.name}")
    from safetensors import SafetensorError
    from safetensors.torch import load_file
    try:
        tensors = load_file(str(tensor_path), device=str(map_location))
    except (SafetensorError, OSError, RuntimeError, ValueError) as exc:
        raise CheckpointError(f"cannot read checkpoint tensors {tensor_path}: {exc}") from exc
    model_state = {k[len("model."):]: v for k, v in tensors.items() if k.startswith("model.")}
    optim_state = None
    if meta.get("optimizer") is not None:
        optim_state = unflatten_optimizer_state(tensors, meta["optimizer"])
    return Checkpoint(path=json_path, meta=meta, model_state=model_state, optimizer_state=optim_state)


def load_model_state(model: nn.Module, state: Mapping[str, torch.Tensor], source: str = "checkpoint") -> None:
    """``model.load_state_dict(state, strict=True)`` with an error that lists what does not fit.

    Raises:
        CheckpointError: missing or unexpected keys, or shape mismatches (e.g. a checkpoint of another model).
    """
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k}: checkpoint {tuple(state[k].shape)} vs model {tuple(own[k].shape)}" for k in own
              if k in state and tuple(state[k].shape) != tuple(own[k].shape)]
    if missing or unexpected or shapes:
        def few(items: list[str]) -> str:
            return ", ".join(items[:5]) + (f" (+{len(items) - 5} more)" if len(items) > 5 else "")
        parts = []
        if missing:
            parts.append(f"{len(missing)} missing key(s): {few(missing)}")
        if unexpected:
            parts.append(f"{len(unexpected)} unexpected key(s): {few(unexpected)}")
        if shapes:
            parts.append(f"{len(shapes)} shape mismatch(es): {few(shapes)}")
        raise CheckpointError(f"{source} does not fit {type(model).__name__}: " + "; ".join(parts) +
                              ". Was it written for a different model, neuron or number of classes?")
    model.load_state_dict(state, strict=True)
