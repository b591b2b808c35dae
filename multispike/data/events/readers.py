"""Readers for event-camera files: N-MNIST ``.bin``, jAER AEDAT 2 ``.aedat`` (CIFAR10-DVS), AEDAT 4, Prophesee ``.dat``.

Every reader returns a structured array with :data:`~multispike.data.events.events.EVENT_DTYPE` (fields
``t`` µs int64, ``x``, ``y`` int16, ``p`` int8 with 1 = ON). A truncated or malformed file raises
:class:`~multispike.data.events.events.EventFileError`, whose message names the file and the byte offset.

=================  =====================================  ===============  =====================================
format             function                               sensor (W,H,P)   notes
=================  =====================================  ===============  =====================================
N-MNIST ``.bin``   :func:`read_nmnist_bin`                (34, 34, 2)      5 bytes/event, big-endian bit fields
AEDAT 2 (DVS128)   :func:`read_cifar10dvs_aedat`          (128, 128, 2)    SpikingJelly's CIFAR10-DVS decoding
AEDAT 2 (raw)      :func:`read_aedat2_raw`                -                (address, timestamp) pairs
AEDAT 4            :func:`read_aedat4`                    from the file    needs ``pip install multispike[events]``
Prophesee ``.dat`` :func:`read_prophesee_dat`             header / data    EVT2 "Event2d", 8 bytes/event
=================  =====================================  ===============  =====================================

:func:`load_events` dispatches on the file suffix and returns an
:class:`~multispike.data.events.events.EventRecording` (events + sensor size + provenance).

Size (over 450 lines): four event-file formats, each with its own validation of truncated or malformed files,
sharing one recording type and one set of checks; a file per format would repeat those checks.
"""
from __future__ import annotations

import os
import re
import struct
from pathlib import Path
from typing import Any, Union

import numpy as np

from .events import (EVENT_DTYPE, EventFileError, EventRecording, SensorSize, empty_events, infer_sensor_size,
                     validate_events)

__all__ = [
    "NMNIST_SENSOR_SIZE", "CIFAR10DVS_SENSOR_SIZE", "read_nmnist_bin", "read_aedat2_raw",
    "decode_dvs128_cifar10dvs", "read_cifar10dvs_aedat", "read_aedat4", "aedat4_sensor_size",
    "read_prophesee_dat", "read_prophesee_dat_header", "read_events_npz", "load_events",
]

NMNIST_SENSOR_SIZE = SensorSize(34, 34, 2)
CIFAR10DVS_SENSOR_SIZE = SensorSize(128, 128, 2)

PathLike = Union[str, "os.PathLike[str]"]


def _read_bytes(path) -> bytes:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event file not found: {path}")
    return path.read_bytes()


def _check_whole_events(raw: bytes, start: int, size: int, path, what: str, event: str) -> None:
    """Refuse a body (from byte ``start``) that is not a whole number of ``size``-byte events (a truncated file)."""
    body = len(raw) - start
    if body % size:
        raise EventFileError(path, start + body - body % size,
                             f"truncated {what}: {body % size} trailing byte(s) do not form a whole {event}; the data "
                             f"starts at byte {start}")


def _check_field(col: np.ndarray, name: str, path) -> None:
    """Refuse values that would wrap or be truncated when cast to the event field's dtype."""
    if not col.size or np.issubdtype(col.dtype, np.bool_):
        return
    target = EVENT_DTYPE[name]
    info = np.iinfo(target)
    if np.issubdtype(col.dtype, np.integer):
        lo, hi = int(col.min()), int(col.max())
    elif np.issubdtype(col.dtype, np.floating):
        if not bool(np.isfinite(col).all()) or not bool((col == np.round(col)).all()):
            raise EventFileError(path, None, f"event field {name!r} must hold integers, but the file stores {col.dtype} "
                                             f"values that are not whole numbers (or NaN/Inf)")
        lo, hi = float(col.min()), float(col.max())
    else:
        raise EventFileError(path, None, f"event field {name!r} has dtype {col.dtype}; expected integers")
    if lo < info.min or hi > info.max:
        raise EventFileError(path, None, f"event field {name!r} spans [{lo:g}, {hi:g}], outside the {target} range "
                                         f"[{info.min}, {info.max}] it is stored in; casting would wrap the values. "
                                         f"The file is corrupt or not in this layout")


def _events_from_columns(t: np.ndarray, x: np.ndarray, y: np.ndarray, p: np.ndarray, path=None) -> np.ndarray:
    """Pack four columns into :data:`EVENT_DTYPE`, checking every value fits its field first (no silent wrap)."""
    cols = {"t": np.asarray(t), "x": np.asarray(x), "y": np.asarray(y), "p": np.asarray(p)}
    for name, col in cols.items():
        _check_field(col, name, path if path is not None else "<events>")
    out = np.empty(len(cols["t"]), dtype=EVENT_DTYPE)
    out["t"], out["x"], out["y"], out["p"] = cols["t"], cols["x"], cols["y"], cols["p"]
    return out


# ----------------------------------------------------------------------------------------------- N-MNIST
def read_nmnist_bin(path: PathLike) -> np.ndarray:
    """Read an N-MNIST / N-Caltech101 (ATIS) ``.bin`` recording.

    Each event is 5 bytes, big-endian bit fields (Orchard et al. 2015)::

        byte 0          x
        byte 1          y
        byte 2 bit 7    polarity (1 = ON)
        bytes 2-4 bits 22-0   timestamp in µs

    An event with ``y == 240`` is a timestamp-overflow marker in the original format: it adds 2^13 µs to every
    later timestamp and is dropped (the rule of Orchard's ``eventvision`` reader that tonic also applies; the
    300 ms N-MNIST saccade recordings never contain one).

    Raises:
        EventFileError: the file size is not a multiple of 5 (truncated), or an event lies outside 34 x 34.
    """
    raw = _read_bytes(path)
    if len(raw) % 5:
        whole = len(raw) - len(raw) % 5
        raise EventFileError(path, whole, f"truncated N-MNIST file: {len(raw) % 5} trailing byte(s) do not form a "
                                          f"whole 5-byte event ({len(raw)} bytes, {whole // 5} whole events)")
    data = np.frombuffer(raw, dtype=np.uint8).reshape(-1, 5).astype(np.int64)
    x, y = data[:, 0], data[:, 1]
    p = data[:, 2] >> 7
    t = ((data[:, 2] & 0x7F) << 16) | (data[:, 3] << 8) | data[:, 4]
    index = np.arange(len(data))
    overflow = y == 240
    if overflow.any():
        t = t + (np.cumsum(overflow) << 13)
        keep = ~overflow
        x, y, p, t, index = x[keep], y[keep], p[keep], t[keep], index[keep]
    bad = (x >= NMNIST_SENSOR_SIZE.width) | (y >= NMNIST_SENSOR_SIZE.height)
    if bad.any():
        first = int(np.argmax(bad))
        raise EventFileError(path, 5 * int(index[first]),
                             f"malformed N-MNIST event: x={int(x[first])}, y={int(y[first])} outside the 34 x 34 "
                             f"sensor (max x seen {int(x.max())}, max y seen {int(y.max())})")
    return _events_from_columns(t, x, y, p, path)


# ----------------------------------------------------------------------------------------------- AEDAT 2
def _aedat2_header_end(raw: bytes, path) -> tuple[int, list[str]]:
    """Byte offset of the first data byte and the header lines.

    Mirrors SpikingJelly's ``_skip_header``: a line is a header line while, stripped of whitespace, it starts
    with ``#`` and decodes as UTF-8.
    """
    pos, lines = 0, []
    while pos < len(raw):
        nl = raw.find(b"\n", pos)
        end = len(raw) if nl < 0 else nl + 1
        line = raw[pos:end]
        stripped = line.strip()
        if not stripped.startswith(b"#"):
            break
        try:
            text = stripped.decode("utf-8")
        except UnicodeDecodeError:
            break
        lines.append(text)
        pos = end
    if not lines:
        raise EventFileError(path, 0, "not a jAER AEDAT file: no '#' header line (expected '#!AER-DAT2.0')")
    match = re.match(r"#!AER-DAT(\d+)\.(\d+)", lines[0])
    if match and int(match.group(1)) != 2:
        raise EventFileError(path, 0, f"AEDAT version {match.group(1)}.{match.group(2)} is not AEDAT 2; use "
                                      f"read_aedat4 for AEDAT 4 files")
    return pos, lines


def read_aedat2_raw(path: PathLike) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """Read a jAER AEDAT 2 file into raw ``(address, timestamp, header_lines)``.

    The file is a text header of ``#`` lines, then big-endian uint32 ``(address, timestamp)`` pairs, 8 bytes per
    event. The 32-bit µs timestamps are unwrapped (a drop of more than 2^31 counts as a wrap-around) and returned
    as int64. The address layout depends on the camera; see :func:`decode_dvs128_cifar10dvs`.

    Raises:
        EventFileError: no header, a non-2.x version line, or a body that is not a whole number of 8-byte events.
    """
    raw = _read_bytes(path)
    start, header = _aedat2_header_end(raw, path)
    _check_whole_events(raw, start, 8, path, "AEDAT 2 file", "8-byte (address, timestamp) event")
    pairs = np.frombuffer(raw, dtype=">u4", offset=start).reshape(-1, 2)
    address = pairs[:, 0].astype(np.uint32)
    timestamp = pairs[:, 1].astype(np.int64)
    if len(timestamp) > 1:
        wraps = np.diff(timestamp) < -(1 << 31)
        if wraps.any():
            timestamp[1:] += np.cumsum(wraps) << 32
    return address, timestamp, header


def decode_dvs128_cifar10dvs(address: np.ndarray, timestamp: np.ndarray) -> np.ndarray:
    """Decode DVS128 AEDAT 2 addresses the way SpikingJelly decodes CIFAR10-DVS.

    ``x = (a & 0xFE) >> 1``, ``y = (a & 0x7F00) >> 8``, ``p = a & 1``, then SpikingJelly stores the transposed,
    flipped view ``x' = 127 - y``, ``y' = 127 - x``, ``p' = 1 - p`` (``spikingjelly/datasets/cifar10_dvs.py``,
    ``_load_origin_data``). Using the same orientation and polarity keeps models trained on SpikingJelly's
    frames valid here.
    """
    a = np.asarray(address).astype(np.int64)
    x = (a & 0xFE) >> 1
    y = (a & 0x7F00) >> 8
    p = a & 1
    return _events_from_columns(np.asarray(timestamp, dtype=np.int64), 127 - y, 127 - x, 1 - p)


def read_cifar10dvs_aedat(path: PathLike) -> np.ndarray:
    """Read one original CIFAR10-DVS ``.aedat`` file (jAER AEDAT 2, DVS128) with SpikingJelly's decoding.

    Example::

        ev = read_cifar10dvs_aedat("CIFAR10-DVS/airplane/cifar10_airplane_0.aedat")   # 128 x 128 sensor
    """
    address, timestamp, _ = read_aedat2_raw(path)
    return decode_dvs128_cifar10dvs(address, timestamp)


# ----------------------------------------------------------------------------------------------- AEDAT 4
def _import_aedat():
    try:
        import aedat  # noqa: PLC0415 - optional dependency, imported only when an AEDAT 4 file is read
    except ImportError as err:
        raise ImportError("reading AEDAT 4 files needs the optional 'aedat' package: "
                          "pip install multispike[events]  (or: pip install aedat)") from err
    return aedat


def _aedat4_truncation_offset(raw: bytes, stream_ids: set[int]) -> int | None:
    """Walk the AEDAT 4 packet framing and return the offset of the first packet that runs past the end.

    Layout: ``#!AER-DAT4.0\\r\\n``, uint32 LE header size, the IOHeader, then packets of (int32 stream id,
    uint32 size, payload). A trailing file data table is not framed as a packet and ends the walk.
    """
    magic = b"#!AER-DAT4.0\r\n"
    if not raw.startswith(magic):
        return 0
    if len(raw) < len(magic) + 4:
        return len(magic)
    (header_size,) = struct.unpack_from("<I", raw, len(magic))
    off = len(magic) + 4 + header_size
    if off > len(raw):
        return len(magic)
    while off + 8 <= len(raw):
        sid, size = struct.unpack_from("<iI", raw, off)
        if sid not in stream_ids:
            return None
        if off + 8 + size > len(raw):
            return off
        off += 8 + size
    # 1-7 bytes left: a packet header cut short.
    return off if off < len(raw) else None


def _aedat4_decoder(path):
    aedat = _import_aedat()
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event file not found: {path}")
    try:
        return aedat.Decoder(str(path))
    except Exception as err:  # the Rust decoder raises plain RuntimeError/OSError
        raise EventFileError(path, 0, f"malformed AEDAT 4 file ({err})") from err


def aedat4_sensor_size(path: PathLike, stream_id: int | None = None) -> SensorSize:
    """``(W, H, 2)`` of the (first, or ``stream_id``) event stream declared in an AEDAT 4 file."""
    streams = _aedat4_decoder(path).id_to_stream()
    sid = _pick_event_stream(streams, stream_id, path)
    return SensorSize(int(streams[sid]["width"]), int(streams[sid]["height"]), 2)


def _pick_event_stream(streams: dict, stream_id: int | None, path) -> int:
    event_ids = sorted(i for i, s in streams.items() if s.get("type") == "events")
    if not event_ids:
        raise EventFileError(path, None, f"AEDAT 4 file has no 'events' stream (streams: {streams})")
    if stream_id is None:
        return event_ids[0]
    if stream_id not in event_ids:
        raise ValueError(f"{path}: stream_id={stream_id} is not an event stream; event streams: {event_ids}")
    return stream_id


def read_aedat4(path: PathLike, stream_id: int | None = None) -> np.ndarray:
    """Read the polarity events of an AEDAT 4 file (iniVation DV) with the optional ``aedat`` package.

    Timestamps stay absolute (µs since the Unix epoch, as the camera wrote them), like tonic.

    Args:
        stream_id: which event stream to read; default: the lowest-numbered one.

    Raises:
        ImportError: ``aedat`` is not installed (``pip install multispike[events]``).
        EventFileError: truncated or malformed; the offset is that of the first incomplete packet.
    """
    decoder = _aedat4_decoder(path)
    streams = decoder.id_to_stream()
    sid = _pick_event_stream(streams, stream_id, path)
    chunks = []
    try:
        for packet in decoder:
            if packet.get("stream_id") == sid and "events" in packet:
                chunks.append(packet["events"])
    except Exception as err:  # truncated LZ4/flatbuffer payloads surface as RuntimeError
        offset = _aedat4_truncation_offset(_read_bytes(path), set(streams))
        raise EventFileError(path, offset, f"truncated or malformed AEDAT 4 packet ({err}); "
                                           f"{sum(len(c) for c in chunks)} events were decoded before it") from err
    if not chunks:
        return empty_events()
    ev = np.concatenate(chunks)
    pname = "on" if "on" in ev.dtype.names else "p"
    out = _events_from_columns(ev["t"], ev["x"], ev["y"], ev[pname], path)
    validate_events(out, (int(streams[sid]["width"]), int(streams[sid]["height"]), 2), owner=str(path))
    return out


# ----------------------------------------------------------------------------------------------- Prophesee
def _dat_header(raw: bytes, path) -> tuple[int, dict[str, Any]]:
    """Parse the ``% ...`` header and the (event type, event size) bytes; return (data offset, header dict)."""
    pos, info = 0, {"lines": []}
    while raw.startswith(b"% ", pos) or raw.startswith(b"%\n", pos):
        nl = raw.find(b"\n", pos)
        if nl < 0:
            raise EventFileError(path, pos, "truncated Prophesee .dat header: the last '%' line has no newline")
        line = raw[pos:nl].decode("latin-1").rstrip("\r")
        info["lines"].append(line)
        words = line[1:].split()
        if len(words) >= 2 and words[0] in ("Width", "Height", "Version"):
            try:
                info[words[0].lower()] = int(words[1])
            except ValueError:
                raise EventFileError(path, pos, f"malformed header line {line!r}") from None
        pos = nl + 1
    if info["lines"]:
        # Prophesee's own loader reads these two bytes only when the file has a header (older files lack both).
        if len(raw) < pos + 2:
            raise EventFileError(path, pos, "truncated Prophesee .dat file: missing the event type/size bytes")
        info["event_type"], info["event_size"] = raw[pos], raw[pos + 1]
        pos += 2
    else:
        info["event_type"], info["event_size"] = 0, 8
    if info["event_size"] != 8:
        raise EventFileError(path, pos - 1, f"unsupported Prophesee event size {info['event_size']} (only the 8-byte "
                                            f"EVT2 'Event2d' / CD layout is supported)")
    return pos, info


def read_prophesee_dat_header(path: PathLike) -> dict[str, Any]:
    """The parsed header of a Prophesee ``.dat`` file: lines, version, width/height if given, event type/size."""
    raw = _read_bytes(path)
    _, info = _dat_header(raw, path)
    return info


def read_prophesee_dat(path: PathLike) -> np.ndarray:
    """Read a Prophesee ``.dat`` file ("Event2d" / CD events; N-CARS, the Gen1 automotive set).

    Layout: ``%`` header lines, one byte event type, one byte event size (8), then little-endian events of
    uint32 timestamp (µs) and uint32 data with x in bits 0-13, y in bits 14-27 and polarity in bits 28-31.

    Raises:
        EventFileError: truncated (not a whole number of 8-byte events), a polarity field other than 0/1, or an
            event outside the Width x Height the header declares.
    """
    raw = _read_bytes(path)
    start, info = _dat_header(raw, path)
    _check_whole_events(raw, start, 8, path, "Prophesee .dat file", "8-byte event")
    rec = np.frombuffer(raw, dtype=[("t", "<u4"), ("d", "<u4")], offset=start)
    d = rec["d"].astype(np.int64)
    p = (d >> 28) & 0xF
    if len(p) and p.max() > 1:
        first = int(np.argmax(p > 1))
        raise EventFileError(path, start + 8 * first + 4, f"malformed event {first}: polarity field {int(p[first])} "
                                                          f"(bits 28-31) is neither 0 nor 1")
    out = _events_from_columns(rec["t"], d & 0x3FFF, (d >> 14) & 0x3FFF, p, path)
    if "width" in info and "height" in info:
        validate_events(out, (info["width"], info["height"], 2), owner=str(path))
    return out


# ----------------------------------------------------------------------------------------------- npz + dispatch
#: An npz whose members declare more than this many times the file's size is refused before decompressing
#: (deflate reaches ~1000:1 only on constant data; real event columns compress a few times at most).
NPZ_MAX_EXPANSION = 200


def _check_npz_sizes(path: Path) -> None:
    import zipfile

    size = path.stat().st_size
    try:
        with zipfile.ZipFile(path) as zf:
            declared = sum(i.file_size for i in zf.infolist())
    except (zipfile.BadZipFile, OSError, ValueError) as err:
        raise EventFileError(path, None, f"unreadable npz event file ({err})") from err
    if declared > NPZ_MAX_EXPANSION * size + (1 << 20):
        raise EventFileError(path, None, f"npz members declare {declared:,} bytes uncompressed from a {size:,}-byte "
                                         f"file (over {NPZ_MAX_EXPANSION}x): refusing a likely decompression bomb")


def read_events_npz(path: PathLike) -> np.ndarray:
    """Read events saved as ``.npz`` with arrays ``t, x, y, p`` (SpikingJelly's ``events_np`` layout)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"event file not found: {path}")
    _check_npz_sizes(path)
    try:
        with np.load(path, allow_pickle=False) as z:
            missing = [k for k in "txyp" if k not in z.files]
            if missing:
                raise EventFileError(path, None, f"npz event file lacks array(s) {missing}; has {z.files}")
            cols = [np.asarray(z[k]) for k in "txyp"]
    except (OSError, ValueError) as err:
        if isinstance(err, EventFileError):
            raise
        raise EventFileError(path, None, f"unreadable npz event file ({err})") from err
    if len({c.shape for c in cols}) != 1 or cols[0].ndim != 1:
        raise EventFileError(path, None, f"npz arrays t, x, y, p must be 1-D and equally long, got "
                                         f"{[c.shape for c in cols]}")
    return _events_from_columns(cols[0], cols[1], cols[2], cols[3], path)


_SUFFIX_FORMATS = {".bin": "nmnist", ".aedat": "cifar10dvs", ".aedat4": "aedat4", ".dat": "prophesee",
                   ".npz": "npz"}


def load_events(path: PathLike, format: str | None = None, sensor_size: tuple[int, ...] | None = None
                ) -> EventRecording:
    """Read any supported event file into an :class:`EventRecording` (events, sensor size, provenance).

    Args:
        path: the file.
        format: ``"nmnist"``, ``"cifar10dvs"`` (AEDAT 2, DVS128), ``"aedat4"``, ``"prophesee"`` or ``"npz"``;
            default: from the suffix (``.bin``, ``.aedat``, ``.aedat4``, ``.dat``, ``.npz``).
        sensor_size: ``(W, H, P)`` override; required for ``npz``/``prophesee`` files whose size is not known
            (otherwise the smallest size holding the events is used, and recorded as ``inferred``).

    Example::

        rec = load_events("../shared/datasets/events/nmnist-small/Train/5/00001.bin")
        rec.sensor_size   # SensorSize(width=34, height=34, polarities=2)
    """
    path = Path(path)
    fmt = format or _SUFFIX_FORMATS.get(path.suffix.lower())
    if fmt is None:
        raise ValueError(f"load_events: cannot tell the format of {path} from its suffix {path.suffix!r}; pass "
                         f"format= one of {sorted(set(_SUFFIX_FORMATS.values()))}")
    meta: dict[str, Any] = {"path": str(path), "format": fmt}
    if fmt == "nmnist":
        events, size = read_nmnist_bin(path), NMNIST_SENSOR_SIZE
    elif fmt == "cifar10dvs":
        events, size = read_cifar10dvs_aedat(path), CIFAR10DVS_SENSOR_SIZE
    elif fmt == "aedat4":
        events, size = read_aedat4(path), aedat4_sensor_size(path)
    elif fmt == "prophesee":
        events = read_prophesee_dat(path)
        info = read_prophesee_dat_header(path)
        size = (info["width"], info["height"], 2) if "width" in info and "height" in info else None
    elif fmt == "npz":
        events, size = read_events_npz(path), None
    else:
        raise ValueError(f"load_events: unknown format {fmt!r}; use one of {sorted(set(_SUFFIX_FORMATS.values()))}")
    if sensor_size is not None:
        size = sensor_size
    elif size is None:
        if len(events) == 0:
            raise ValueError(f"load_events: {path} holds no events, so its sensor size cannot be inferred; pass "
                             f"sensor_size=(W, H, P)")
        size = infer_sensor_size(events)
        meta["sensor_size_inferred"] = True
    return EventRecording(events, size, synthetic=False, metadata=meta)
