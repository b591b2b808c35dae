"""Run guards: stop on non-finite values, lock a run folder, save and stop on SIGTERM/SIGINT, writable outputs.

These are the pieces of a training run that keep a failure from turning into a silent wrong result or into
lost data:

* :func:`nonfinite_entries` / :func:`check_finite_model` - a diverged run (NaN/Inf in a parameter or in a
  buffer such as BatchNorm's running statistics) stops with :class:`NonFiniteError` naming the tensors,
  *before* anything is checkpointed, so a non-finite checkpoint is never written, let alone marked best.
  :func:`check_finite_state` refuses such a checkpoint when it is loaded (one written by an older version).
* :class:`RunLock` - one run at a time per output folder: ``<out>/.multispike.lock`` holds the owner's pid,
  host, user, start time and command; a second run is refused naming that owner; a lock left by a dead
  process on the same host is taken over with a warning.
* :class:`StopSignals` - while training, SIGTERM/SIGINT only set a flag; the trainer finishes the current
  step, writes a resumable checkpoint and raises :class:`TrainingInterrupted` (the CLI exits with
  ``128 + signal``). A second signal aborts at once.
* :func:`ensure_writable_dir` - an output folder that is a file, read-only or on a full disk is reported
  before any work starts.

Example::

    with RunLock("runs/x"), StopSignals() as stop:
        for batch in loader:
            step(batch)
            if stop.requested:
                save(); raise TrainingInterrupted(stop.requested, "runs/x", "runs/x/checkpoints/last.json")
"""
from __future__ import annotations

import datetime as _dt
import errno
import json
import os
import signal
import socket
import sys
import threading
import warnings
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch
from torch import nn

from .._errors import ParameterMessage

__all__ = ["NonFiniteError", "RunLockedError", "TrainingInterrupted", "nonfinite_entries", "check_finite_model",
           "check_finite_state", "RunLock", "StopSignals", "ensure_writable_dir", "ensure_writable_file", "LOCK_NAME"]

LOCK_NAME = ".multispike.lock"


# ----------------------------------------------------------------------------------------------------
# Errors
# ----------------------------------------------------------------------------------------------------
class NonFiniteError(ParameterMessage, FloatingPointError):
    """Training produced NaN/Inf in the loss, a parameter or a buffer; nothing non-finite was checkpointed.

    The advice names training settings as ``{lr}``-style templates (:class:`~multispike._errors.ParameterMessage`):
    ``str(error)`` shows the :class:`~multispike.train.TrainConfig` field, the command line its flag.
    """

    def __init__(self, template: str = "", *params: str) -> None:
        FloatingPointError.__init__(self, self._set_template(template, params))


class RunLockedError(RuntimeError):
    """Another live process holds the output folder's run lock."""


class TrainingInterrupted(ParameterMessage, Exception):
    """SIGTERM/SIGINT stopped training after a resumable checkpoint was written.

    Attributes:
        signum: the signal number (the CLI exits with ``128 + signum``).
        out: the run folder.
        checkpoint: the checkpoint written (None if there was nothing to save).
    """

    def __init__(self, signum: int, out: str | os.PathLike, checkpoint: str | os.PathLike | None) -> None:
        self.signum = int(signum)
        self.out = str(out)
        self.checkpoint = None if checkpoint is None else str(checkpoint)
        name = _signal_name(signum)
        if checkpoint is not None:
            msg = (f"training interrupted by {name}; resumable checkpoint saved at {checkpoint}. Resume with the same "
                   f"settings plus {{resume}} (`multispike train ... --out {out} --resume`)")
        else:
            msg = f"training interrupted by {name} before the first step; nothing was saved"
        Exception.__init__(self, self._set_template(msg, ("resume",)))


def _signal_name(signum: int) -> str:
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


# ----------------------------------------------------------------------------------------------------
# Non-finite values
# ----------------------------------------------------------------------------------------------------
def _float_items(items: Iterable[tuple[str, Any]]) -> list[tuple[str, torch.Tensor]]:
    return [(n, t) for n, t in items if isinstance(t, torch.Tensor) and (t.is_floating_point() or t.is_complex())
            and t.numel()]


def nonfinite_entries(named_tensors: Iterable[tuple[str, Any]], limit: int = 5) -> list[str]:
    """Names (with what they hold) of the floating tensors that contain NaN or ±Inf: the first ``limit``, then
    ``"and N more tensor(s)"``.

    One device->host transfer for all tensors (the per-tensor flags are stacked first), so it is cheap enough
    for every checkpoint.
    """
    items = _float_items(named_tensors)
    if not items:
        return []
    with torch.no_grad():
        dev = items[0][1].device
        flags = torch.stack([torch.isfinite(t).all().to(dev) for _, t in items]).cpu()
    if bool(flags.all()):
        return []
    bad = []
    flags = flags.tolist()
    total_bad = flags.count(False)
    for (name, t), ok in zip(items, flags):
        if ok:
            continue
        if len(bad) >= limit:
            bad.append(f"and {total_bad - limit} more tensor(s)")
            break
        d = t.detach()
        kinds = []
        if bool(torch.isnan(d).any()):
            kinds.append("NaN")
        if bool(torch.isposinf(d).any()):
            kinds.append("+inf")
        if bool(torch.isneginf(d).any()):
            kinds.append("-inf")
        bad.append(f"{name} ({'/'.join(kinds)} in {int((~torch.isfinite(d)).sum())} of {d.numel()} values)")
    return bad


def check_finite_model(model: nn.Module, where: str, hint: str = "") -> None:
    """Raise :class:`NonFiniteError` if any parameter or buffer of ``model`` holds NaN/Inf.

    Args:
        where: what was happening (``"after epoch 3 (step 120)"``), put into the message.
        hint: the fix to suggest (default: lower the learning rate / enable gradient clipping).
    """
    named = list(model.named_parameters()) + list(model.named_buffers())
    bad = nonfinite_entries(named)
    if bad:
        params = () if hint else ("lr", "clip_grad", "resume")
        raise NonFiniteError(f"training diverged {where}: non-finite values in {', '.join(bad)}. "
                             + (hint or "Nothing was checkpointed from this state; lower {lr}, enable {clip_grad}, "
                                        "or check the data, then resume from the last good checkpoint "
                                        "({resume}) or start again."), *params)


def check_finite_state(state: Mapping[str, Any], source: str) -> None:
    """Refuse a state dict with NaN/Inf entries (e.g. a checkpoint of a diverged run written by an older version).

    Raises:
        NonFiniteError: naming the source and the non-finite tensors.
    """
    bad = nonfinite_entries(state.items())
    if bad:
        raise NonFiniteError(f"{source} holds non-finite values in {', '.join(bad)}:"
                             f" it comes from a diverged run and would give meaningless results. Use an earlier "
                             f"checkpoint of that run (checkpoints/s*.json) or retrain with a lower learning rate.")


# ----------------------------------------------------------------------------------------------------
# Output folders
# ----------------------------------------------------------------------------------------------------
def ensure_writable_dir(path: str | os.PathLike, what: str = "output folder") -> Path:
    """Create ``path`` if needed and prove it is writable by creating and removing a probe file.

    Raises:
        OSError: (the original errno) with a message naming the folder and the cause: a file in the way,
            no permission / read-only file system, or no space left.
    """
    p = Path(path)
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{what} {p} exists and is not a folder; choose another path or "
                                                f"remove the file")
    ancestor = next((a for a in p.absolute().parents if a.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{what} {p} cannot be created: a parent path is a file "
                                                f"({ancestor})")
    try:
        p.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise type(exc)(exc.errno, f"{what} {p} cannot be created: {exc.strerror}") from exc
    probe = p / f".multispike-write-test-{os.getpid()}"
    try:
        with open(probe, "wb") as f:
            f.write(b"x" * 4096)
            f.flush()
            os.fsync(f.fileno())
    except OSError as exc:
        why = {errno.EACCES: "permission denied", errno.EPERM: "permission denied",
               errno.EROFS: "read-only file system", errno.ENOSPC: "no space left on device",
               errno.EDQUOT: "disk quota exceeded"}.get(exc.errno or 0, exc.strerror or str(exc))
        raise type(exc)(exc.errno, f"{what} {p} is not writable ({why})") from exc
    finally:
        try:
            probe.unlink()
        except OSError:
            pass
    return p


# ----------------------------------------------------------------------------------------------------
# Run lock
# ----------------------------------------------------------------------------------------------------
def _proc_start_time(pid: int) -> str | None:
    """The kernel's start time of ``pid`` (Linux), so a pid reused by another process is not taken for the owner."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            data = f.read().decode("ascii", "replace")
        return data.rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _pid_alive(pid: int, start_time: str | None) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True          # exists, owned by someone else
    except OSError:
        return True
    if start_time is not None:
        now = _proc_start_time(pid)
        if now is not None and now != start_time:
            return False     # the pid was reused by another process
    return True


_HELD: dict[str, int] = {}          # lock path -> nesting depth in this process
_HELD_GUARD = threading.Lock()


class RunLock:
    """Exclusive lock on a run folder while a run writes to it (re-entrant within one process).

    The lock is the file ``<folder>/.multispike.lock``, created with ``O_CREAT | O_EXCL`` and holding JSON
    ``{pid, host, user, started, argv}``. If it exists:

    * same host and the pid is dead (or now belongs to another process): the lock is stale; it is taken over
      with a warning;
    * otherwise :class:`RunLockedError` names the owner (pid, host, start time, command) and how to proceed.

    Args:
        folder: the run folder (created if needed).
        what: how error messages name the folder (e.g. ``"--out"``).
    """

    def __init__(self, folder: str | os.PathLike, what: str = "run folder") -> None:
        self.folder = Path(folder)
        self.what = what
        self.path = self.folder / LOCK_NAME
        self._key = str(self.path.resolve()) if self.folder.exists() else str(self.path.absolute())
        self.acquired = False

    def _record(self) -> dict:
        try:
            user = os.getlogin()
        except OSError:
            user = os.environ.get("USER", "?")
        return {"pid": os.getpid(), "host": socket.gethostname(), "user": user,
                "started": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                "proc_start": _proc_start_time(os.getpid()), "argv": sys.argv[:12]}

    def _read(self) -> dict | None:
        try:
            return json.loads(self.path.read_text())
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}

    def acquire(self) -> "RunLock":
        ensure_writable_dir(self.folder, self.what)
        self._key = str(self.path.resolve())
        with _HELD_GUARD:
            if self._key in _HELD:
                _HELD[self._key] += 1
                self.acquired = True
                return self
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._read()
                if owner is None:
                    continue        # released between our open and our read: try again
                if not self._stale(owner):
                    raise RunLockedError(self._owner_message(owner))
                warnings.warn(f"{self.path}: taking over a stale run lock of pid {owner.get('pid')} on "
                              f"{owner.get('host')} (started {owner.get('started')}), which is no longer running; "
                              f"its run ended without cleaning up (killed?)", RuntimeWarning, stacklevel=3)
                # Rename-then-delete, and only if the file still holds the stale owner: of two processes taking
                # over at once, the second finds the first one's fresh lock and is refused on the next attempt.
                grave = self.path.with_name(f"{LOCK_NAME}.stale-{os.getpid()}")
                try:
                    if self._read() == owner:
                        os.replace(self.path, grave)
                        grave.unlink(missing_ok=True)
                except OSError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(self._record(), f)
                f.flush()
                os.fsync(f.fileno())
            with _HELD_GUARD:
                _HELD[self._key] = 1
            self.acquired = True
            return self
        raise RunLockedError(f"{self.path}: could not take the run lock (it keeps changing owner); is another "
                             f"run starting in {self.folder}?")

    def _stale(self, owner: Mapping[str, Any]) -> bool:
        if not owner:   # unreadable / empty lock file: written by a run killed while creating it
            try:
                age = _dt.datetime.now().timestamp() - self.path.stat().st_mtime
            except OSError:
                return True
            return age > 60
        if owner.get("host") != socket.gethostname():
            return False    # cannot check a process on another machine
        try:
            pid = int(owner.get("pid"))
        except (TypeError, ValueError):
            return True
        return not _pid_alive(pid, owner.get("proc_start"))

    def _owner_message(self, owner: Mapping[str, Any]) -> str:
        if not owner:
            return (f"{self.folder} is locked by {self.path} (being written just now); another run is starting "
                    f"there. Choose another --out or wait")
        cmd = " ".join(str(a) for a in owner.get("argv") or [])
        return (f"{self.folder} is in use by another run: pid {owner.get('pid')} on host {owner.get('host')} "
                f"(user {owner.get('user')}, started {owner.get('started')}{', command: ' + cmd if cmd else ''}). "
                f"Wait for it to finish, stop it, or choose another --out. If that process is gone (e.g. another "
                f"machine crashed), delete {self.path}")

    def release(self) -> None:
        if not self.acquired:
            return
        self.acquired = False
        with _HELD_GUARD:
            depth = _HELD.get(self._key, 0) - 1
            if depth > 0:
                _HELD[self._key] = depth
                return
            _HELD.pop(self._key, None)
        owner = self._read()
        if owner and owner.get("pid") == os.getpid():
            try:
                self.path.unlink()
            except OSError:
                pass

    def __enter__(self) -> "RunLock":
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()


# ----------------------------------------------------------------------------------------------------
# Signals
# ----------------------------------------------------------------------------------------------------
class StopSignals:
    """Turn SIGTERM/SIGINT into a flag while active (main thread only; elsewhere it is a no-op).

    The first signal sets :attr:`requested` (the signal number) and prints that a checkpoint will be written;
    a second one restores the previous handlers and re-delivers the signal, aborting at once.
    """

    SIGNALS = tuple(s for s in (getattr(signal, "SIGTERM", None), getattr(signal, "SIGINT", None)) if s is not None)

    def __init__(self, announce: bool = True) -> None:
        self.requested: int | None = None
        self.announce = announce
        self._old: dict[int, Any] = {}

    def _handler(self, signum: int, frame: Any) -> None:
        if self.requested is not None:
            self.restore()
            signal.raise_signal(signum)
            return
        self.requested = signum
        if self.announce:
            print(f"\nmultispike: received {_signal_name(signum)}: finishing this step and writing a checkpoint; "
                  f"send it again to abort without saving", file=sys.stderr, flush=True)

    def __enter__(self) -> "StopSignals":
        if threading.current_thread() is threading.main_thread():
            for s in self.SIGNALS:
                try:
                    self._old[s] = signal.signal(s, self._handler)
                except (ValueError, OSError):  # pragma: no cover - not allowed here
                    pass
        return self

    def restore(self) -> None:
        for s, old in self._old.items():
            try:
                signal.signal(s, old)
            except (ValueError, OSError, TypeError):  # pragma: no cover
                pass
        self._old = {}

    def __exit__(self, *exc: object) -> None:
        self.restore()


def ensure_writable_file(path: str | os.PathLike, what: str = "output file") -> Path:
    """Check that ``path`` can be written as a file: not a folder, and its folder exists (or can be made) and is
    writable. Nothing is written at ``path`` itself.

    Raises:
        IsADirectoryError / OSError: naming the path and the cause.
    """
    p = Path(path)
    if p.is_dir():
        raise IsADirectoryError(errno.EISDIR, f"{what} {p} is a folder; give a file name")
    ancestor = next((a for a in p.absolute().parents if a.exists()), None)
    if ancestor is not None and not ancestor.is_dir():
        raise NotADirectoryError(errno.ENOTDIR, f"{what} {p} cannot be created: a parent path is a file ({ancestor})")
    ensure_writable_dir(p.parent if str(p.parent) else Path("."), f"folder of {what} {p}")
    return p
