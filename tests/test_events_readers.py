"""Event structured arrays and file readers: N-MNIST .bin (real files), AEDAT 2 (hand-built, SpikingJelly's
CIFAR10-DVS decoding), AEDAT 4 and Prophesee .dat (tonic's real samples), truncated / malformed files."""
from __future__ import annotations

import os
import struct
from pathlib import Path

import numpy as np
import pytest

from multispike.data.events import (EVENT_DTYPE, EventFileError, EventRecording, SensorSize, decode_dvs128_cifar10dvs,
                                    infer_sensor_size, is_time_sorted, load_events, make_events, read_aedat2_raw,
                                    read_aedat4, read_cifar10dvs_aedat, read_events_npz, read_nmnist_bin,
                                    read_prophesee_dat, read_prophesee_dat_header, sort_events, validate_events)

DATA = Path(os.environ.get("MULTISPIKE_DATA") or Path(__file__).resolve().parents[1].parent / "shared" / "datasets")
NMNIST_DIR = DATA / "events" / "nmnist-small"
SAMPLES = DATA / "events" / "tonic-samples"
needs_nmnist = pytest.mark.skipif(not (NMNIST_DIR / "labels.csv").is_file(),
                                  reason=f"N-MNIST-small not found at {NMNIST_DIR}")
needs_samples = pytest.mark.skipif(not SAMPLES.is_dir(), reason=f"tonic sample files not found at {SAMPLES}")


def _nmnist_files() -> list[tuple[str, Path, int]]:
    """(split, path, label) from labels.csv, with the '\\r' quirk of the shared copy handled."""
    rows = []
    lines = [ln for ln in (NMNIST_DIR / "labels.csv").read_bytes().decode().split("\n") if ln.strip()]
    for line in lines[1:]:
        split, rel, label = line.split(",")[:3]
        path = NMNIST_DIR / rel.replace("\r", "")
        rows.append((split, path if path.is_file() else NMNIST_DIR / rel, int(label.strip())))
    return rows


# ----------------------------------------------------------------------------------------------- structured arrays
def test_make_events_dtype_and_range_errors():
    ev = make_events([0, 5, 9], [1, 2, 3], [0, 0, 1], [1, 0, 1])
    assert ev.dtype == EVENT_DTYPE
    assert ev.dtype["t"] == np.int64 and ev.dtype["x"] == np.int16 and ev.dtype["p"] == np.int8
    assert ev["x"].tolist() == [1, 2, 3]
    with pytest.raises(ValueError, match="field 'x'.*int16"):
        make_events([0], [40000], [0], [0])
    with pytest.raises(ValueError, match="equally long"):
        make_events([0, 1], [0], [0], [0])
    with pytest.raises(ValueError, match="integers"):
        make_events([0.5], [0], [0], [0])


def test_validate_events_names_max_seen_and_sensor():
    ev = make_events([0, 1, 2], [3, 40, 5], [1, 2, 37], [0, 1, 1])
    with pytest.raises(ValueError) as err:
        validate_events(ev, (34, 34, 2), owner="sample.bin")
    msg = str(err.value)
    assert "sample.bin" in msg and "40" in msg and "37" in msg and "(34, 34)" in msg
    with pytest.raises(ValueError, match="polarity seen in"):
        validate_events(make_events([0], [0], [0], [2]), (34, 34, 2))
    with pytest.raises(ValueError, match="timestamps decrease at event 1"):
        validate_events(make_events([5, 3], [0, 0], [0, 0], [0, 0]), (34, 34, 2), require_sorted=True)
    validate_events(ev[:1], (34, 34))  # (W, H) without P is accepted


def test_sensor_size_helpers_and_sorting():
    ev = make_events([3, 1, 1, 2], [0, 5, 6, 1], [2, 0, 9, 0], [0, 1, 0, 1])
    assert infer_sensor_size(ev) == SensorSize(7, 10, 2)
    assert SensorSize(34, 20).hw == (20, 34)
    assert not is_time_sorted(ev)
    s = sort_events(ev)
    assert s["t"].tolist() == [1, 1, 2, 3] and s["x"].tolist() == [5, 6, 1, 0]  # stable for ties
    with pytest.raises(ValueError, match="outside the sensor"):
        EventRecording(ev, (5, 5, 2))


# ----------------------------------------------------------------------------------------------- N-MNIST
@needs_nmnist
def test_nmnist_reader_on_all_real_files():
    rows = _nmnist_files()
    assert len(rows) == 1100
    counts, total = [], 0
    per_digit = {"train": np.zeros(10, int), "test": np.zeros(10, int)}
    for split, path, label in rows:
        ev = read_nmnist_bin(path)
        assert ev.dtype == EVENT_DTYPE
        counts.append(len(ev))
        total += len(ev)
        assert int(ev["x"].max()) < 34 and int(ev["y"].max()) < 34 and int(ev["x"].min()) >= 0
        assert set(np.unique(ev["p"]).tolist()) <= {0, 1}
        assert is_time_sorted(ev)
        assert path.parent.name.strip() == str(label)  # label from labels.csv matches the digit folder
        per_digit[split][label] += 1
    assert min(counts) == 1069 and max(counts) == 7152 and total == 4_518_827
    assert np.median(counts) == 4163.5  # the README's "median 4,163" (1,100 files: mean of the middle two)
    assert per_digit["train"].tolist() == [97, 116, 99, 93, 105, 92, 94, 117, 87, 100]
    assert per_digit["test"].tolist() == [8, 14, 8, 11, 14, 7, 10, 15, 2, 11]


@needs_nmnist
def test_nmnist_first_events_decode_bit_fields():
    split, path, label = _nmnist_files()[0]
    raw = path.read_bytes()[:10]
    ev = read_nmnist_bin(path)
    for i in range(2):
        b = raw[5 * i: 5 * i + 5]
        assert ev["x"][i] == b[0] and ev["y"][i] == b[1] and ev["p"][i] == b[2] >> 7
        assert ev["t"][i] == ((b[2] & 0x7F) << 16) | (b[3] << 8) | b[4]
    rec = load_events(path)
    assert rec.sensor_size == SensorSize(34, 34, 2) and not rec.synthetic and len(rec.events) == len(ev)


@needs_nmnist
def test_nmnist_truncated_file_names_file_and_offset(tmp_path):
    src = _nmnist_files()[0][1].read_bytes()
    bad = tmp_path / "cut.bin"
    bad.write_bytes(src[:-2])
    with pytest.raises(EventFileError) as err:
        read_nmnist_bin(bad)
    whole = (len(src) - 2) // 5 * 5
    assert err.value.offset == whole and err.value.path == str(bad)
    assert str(bad) in str(err.value) and f"byte offset {whole}" in str(err.value)


def _nmnist_bytes(events: list[tuple[int, int, int, int]]) -> bytes:
    out = bytearray()
    for x, y, p, t in events:
        out += bytes([x, y, (p << 7) | ((t >> 16) & 0x7F), (t >> 8) & 0xFF, t & 0xFF])
    return bytes(out)


def test_nmnist_overflow_marker_and_out_of_range(tmp_path):
    f = tmp_path / "a.bin"
    f.write_bytes(_nmnist_bytes([(1, 2, 1, 100), (0, 240, 0, 0), (3, 4, 0, 50)]))
    ev = read_nmnist_bin(f)
    assert ev["t"].tolist() == [100, 50 + 8192] and ev["x"].tolist() == [1, 3] and ev["p"].tolist() == [1, 0]
    g = tmp_path / "b.bin"
    g.write_bytes(_nmnist_bytes([(1, 2, 1, 100), (35, 2, 0, 200)]))
    with pytest.raises(EventFileError) as err:
        read_nmnist_bin(g)
    assert err.value.offset == 5 and "35" in str(err.value)


# ----------------------------------------------------------------------------------------------- AEDAT 2
def _dvs128_address(x: int, y: int, p: int) -> int:
    # The raw DVS128 layout that SpikingJelly decodes: p = a & 1, x = (a & 0xFE) >> 1, y = (a & 0x7F00) >> 8.
    return (y << 8) | (x << 1) | p


def _write_aedat2(path: Path, pairs: list[tuple[int, int]], header: bytes | None = None) -> int:
    header = header if header is not None else (b"#!AER-DAT2.0\r\n# This is a raw AE data file - do not edit\r\n"
                                                 b"# Data format is int32 address, int32 timestamp\r\n")
    body = b"".join(struct.pack(">II", a, t) for a, t in pairs)
    path.write_bytes(header + body)
    return len(header)


def test_aedat2_decoder_on_hand_built_file_with_spikingjelly_flip(tmp_path):
    raw = [(0, 0, 0, 10), (127, 0, 1, 20), (5, 100, 1, 35), (64, 127, 0, 4000)]
    f = tmp_path / "cifar10_airplane_0.aedat"
    start = _write_aedat2(f, [(_dvs128_address(x, y, p), t) for x, y, p, t in raw])
    address, timestamp, header = read_aedat2_raw(f)
    assert header[0] == "#!AER-DAT2.0" and len(header) == 3
    assert timestamp.tolist() == [10, 20, 35, 4000]
    ev = read_cifar10dvs_aedat(f)
    assert ev["x"].tolist() == [127 - y for _, y, _, _ in raw]
    assert ev["y"].tolist() == [127 - x for x, _, _, _ in raw]
    assert ev["p"].tolist() == [1 - p for _, _, p, _ in raw]
    assert ev["t"].tolist() == [10, 20, 35, 4000]
    rec = load_events(f)
    assert rec.sensor_size == SensorSize(128, 128, 2)
    # Bits outside the DVS128 fields do not leak into x, y, p.
    ev2 = decode_dvs128_cifar10dvs(np.array([_dvs128_address(3, 4, 1) | 0x80000]), np.array([7]))
    assert (ev2["x"][0], ev2["y"][0], ev2["p"][0]) == (123, 124, 0)
    assert start > 0


def test_aedat2_timestamp_wraparound_is_unwrapped(tmp_path):
    f = tmp_path / "wrap.aedat"
    _write_aedat2(f, [(0, 2**32 - 10), (0, 5)])
    _, t, _ = read_aedat2_raw(f)
    assert t.tolist() == [2**32 - 10, 2**32 + 5]


def test_aedat2_truncated_and_malformed(tmp_path):
    f = tmp_path / "cut.aedat"
    start = _write_aedat2(f, [(1, 1), (2, 2), (3, 3)])
    f.write_bytes(f.read_bytes()[:-3])
    with pytest.raises(EventFileError) as err:
        read_cifar10dvs_aedat(f)
    assert err.value.offset == start + 16 and str(f) in str(err.value) and "5 trailing byte" in str(err.value)
    g = tmp_path / "noheader.aedat"
    g.write_bytes(struct.pack(">II", 1, 2))
    with pytest.raises(EventFileError, match="no '#' header") as err:
        read_aedat2_raw(g)
    assert err.value.offset == 0
    h = tmp_path / "v3.aedat"
    _write_aedat2(h, [], header=b"#!AER-DAT3.1\r\n#!END-HEADER\r\n")
    with pytest.raises(EventFileError, match="version 3.1 is not AEDAT 2"):
        read_aedat2_raw(h)


@needs_samples
def test_aedat2_header_only_real_sample():
    address, timestamp, header = read_aedat2_raw(SAMPLES / "sample_aedat_header.aedat")
    assert len(address) == 0 and len(timestamp) == 0
    assert header[0] == "#!AER-DAT2.0" and any("Davis346red" in h for h in header)


# ----------------------------------------------------------------------------------------------- AEDAT 4
@needs_samples
def test_aedat4_sample():
    pytest.importorskip("aedat", reason="optional dependency 'aedat' (pip install multispike[events]) missing")
    path = SAMPLES / "sample.aedat4"
    ev = read_aedat4(path)
    rec = load_events(path)
    assert rec.sensor_size == SensorSize(320, 240, 2)  # DVXplorer
    assert len(ev) == 111_954 and ev.dtype == EVENT_DTYPE
    assert int(ev["x"].max()) < 320 and int(ev["y"].max()) < 240
    assert set(np.unique(ev["p"]).tolist()) == {0, 1}
    assert is_time_sorted(ev)
    assert ev["t"][0] > 1_600_000_000_000_000  # absolute µs since the epoch (2020), as tonic keeps them


@needs_samples
def test_aedat4_truncated_names_offset(tmp_path):
    pytest.importorskip("aedat", reason="optional dependency 'aedat' (pip install multispike[events]) missing")
    bad = tmp_path / "cut.aedat4"
    bad.write_bytes((SAMPLES / "sample.aedat4").read_bytes()[:400_000])
    with pytest.raises(EventFileError) as err:
        read_aedat4(bad)
    assert err.value.offset is not None and 0 < err.value.offset < 400_000
    assert str(bad) in str(err.value)


def test_aedat4_missing_dependency_message(monkeypatch, tmp_path):
    import builtins
    real_import = builtins.__import__

    def fake_import(name, *args, **kwargs):
        if name == "aedat":
            raise ImportError("No module named 'aedat'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", fake_import)
    f = tmp_path / "x.aedat4"
    f.write_bytes(b"#!AER-DAT4.0\r\n")
    with pytest.raises(ImportError, match=r"pip install multispike\[events\]"):
        read_aedat4(f)


# ----------------------------------------------------------------------------------------------- Prophesee .dat
@needs_samples
def test_prophesee_dat_sample():
    path = SAMPLES / "sample_ncars.dat"
    ev = read_prophesee_dat(path)
    assert len(ev) == 2009
    assert int(ev["x"].max()) == 77 and int(ev["y"].max()) == 41  # the 78 x 42 N-CARS crop
    assert int(ev["x"].min()) >= 0 and int(ev["y"].min()) >= 0
    assert is_time_sorted(ev) and 0 <= ev["t"][0] and ev["t"][-1] < 100_000
    assert np.bincount(ev["p"]).tolist() == [659, 1350]
    info = read_prophesee_dat_header(path)
    assert info["version"] == 2 and info["event_size"] == 8 and info["event_type"] == 0
    rec = load_events(path)
    assert rec.sensor_size == SensorSize(78, 42, 2) and rec.metadata["sensor_size_inferred"]


def _write_dat(path: Path, events: list[tuple[int, int, int, int]], header=b"% Version 2\n% Width 10\n% Height 8\n",
               p_bits=None) -> int:
    body = b"".join(struct.pack("<II", t, x | (y << 14) | ((p if p_bits is None else p_bits) << 28))
                    for t, x, y, p in events)
    data = header + bytes([0, 8]) + body
    path.write_bytes(data)
    return len(header) + 2


def test_prophesee_dat_hand_built_truncated_and_malformed(tmp_path):
    f = tmp_path / "a.dat"
    start = _write_dat(f, [(5, 1, 2, 1), (9, 9, 7, 0)])
    ev = read_prophesee_dat(f)
    assert ev["t"].tolist() == [5, 9] and ev["x"].tolist() == [1, 9] and ev["y"].tolist() == [2, 7]
    assert ev["p"].tolist() == [1, 0]
    assert load_events(f).sensor_size == SensorSize(10, 8, 2)
    f.write_bytes(f.read_bytes()[:-1])
    with pytest.raises(EventFileError) as err:
        read_prophesee_dat(f)
    assert err.value.offset == start + 8 and str(f) in str(err.value)
    g = tmp_path / "p.dat"
    start = _write_dat(g, [(5, 1, 2, 0)], p_bits=3)
    with pytest.raises(EventFileError, match="polarity field 3") as err:
        read_prophesee_dat(g)
    assert err.value.offset == start + 4
    h = tmp_path / "out.dat"
    _write_dat(h, [(5, 12, 2, 0)])
    with pytest.raises(ValueError, match="outside the sensor"):
        read_prophesee_dat(h)


# ----------------------------------------------------------------------------------------------- npz + dispatch
def test_npz_events_and_load_events_errors(tmp_path):
    f = tmp_path / "e.npz"
    np.savez(f, t=np.array([1, 2]), x=np.array([3, 4]), y=np.array([0, 1]), p=np.array([1, 0]))
    ev = read_events_npz(f)
    assert ev["x"].tolist() == [3, 4]
    rec = load_events(f, sensor_size=(8, 8, 2))
    assert rec.sensor_size == SensorSize(8, 8, 2)
    bad = tmp_path / "bad.npz"
    np.savez(bad, t=np.array([1]), x=np.array([1]))
    with pytest.raises(EventFileError, match="lacks array"):
        read_events_npz(bad)
    with pytest.raises(ValueError, match="cannot tell the format"):
        load_events(tmp_path / "x.unknown")
    with pytest.raises(FileNotFoundError, match="event file not found"):
        read_nmnist_bin(tmp_path / "missing.bin")
