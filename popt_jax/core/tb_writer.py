"""A minimal TensorBoard scalar writer (and reader) with no TensorFlow or tensorboardX.

TensorBoard reads `events.out.tfevents.*` files: a sequence of TFRecords, each holding one
serialized `tensorflow.Event` protobuf. A record is

    uint64 length | uint32 masked_crc32c(length) | data | uint32 masked_crc32c(data)

(little endian; crc32c is the Castagnoli CRC, masked as ((crc >> 15 | crc << 17) + 0xa282ead8)).
The protobufs are hand-encoded; only the fields a scalar needs are written:

    Event   { double wall_time = 1; int64 step = 2; string file_version = 3;
              Summary summary = 5; }
    Summary { repeated Value value = 1; }
    Value   { string tag = 1; float simple_value = 2; }

`read_scalars` parses such files back (CRCs checked), which is what the tests use.
"""

from __future__ import annotations

import glob
import os
import socket
import struct
import time
from typing import Iterator, Mapping

__all__ = ["SummaryWriter", "read_events", "read_scalars", "crc32c", "masked_crc32c"]


def _crc32c_table() -> list[int]:
    poly = 0x82F63B78  # Castagnoli, reflected
    table = []
    for i in range(256):
        crc = i
        for _ in range(8):
            crc = (crc >> 1) ^ poly if crc & 1 else crc >> 1
        table.append(crc)
    return table


_TABLE = _crc32c_table()


def crc32c(data: bytes) -> int:
    """CRC-32C of `data` (pure Python; event records are a few dozen bytes)."""
    crc = 0xFFFFFFFF
    for byte in data:
        crc = _TABLE[(crc ^ byte) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


def masked_crc32c(data: bytes) -> int:
    crc = crc32c(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


# --------------------------------------------------------------------------------------------
# Protobuf wire format (the subset used here)
# --------------------------------------------------------------------------------------------


def _varint(value: int) -> bytes:
    if value < 0:
        value += 1 << 64  # int64 negatives: ten-byte two's complement
    out = bytearray()
    while True:
        bits = value & 0x7F
        value >>= 7
        if value:
            out.append(bits | 0x80)
        else:
            out.append(bits)
            return bytes(out)


def _key(field: int, wire_type: int) -> bytes:
    return _varint((field << 3) | wire_type)


def _length_delimited(field: int, payload: bytes) -> bytes:
    return _key(field, 2) + _varint(len(payload)) + payload


def _encode_value(tag: str, value: float) -> bytes:
    return _length_delimited(1, tag.encode("utf-8")) + _key(2, 5) + struct.pack("<f", value)


def encode_event(wall_time: float, step: int = 0, *, file_version: str | None = None,
                 scalars: Mapping[str, float] | None = None) -> bytes:
    """Serialized `Event` with the given wall time, step and scalar values or file version."""
    out = _key(1, 1) + struct.pack("<d", wall_time)
    if step:
        out += _key(2, 0) + _varint(int(step))
    if file_version is not None:
        out += _length_delimited(3, file_version.encode("utf-8"))
    if scalars:
        summary = b"".join(_length_delimited(1, _encode_value(k, float(v)))
                           for k, v in scalars.items())
        out += _length_delimited(5, summary)
    return out


def _read_varint(buf: bytes, pos: int) -> tuple[int, int]:
    shift = result = 0
    while True:
        byte = buf[pos]
        pos += 1
        result |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return result, pos
        shift += 7


def _fields(buf: bytes) -> Iterator[tuple[int, int, object]]:
    """(field number, wire type, raw value) for every field of one message."""
    pos = 0
    while pos < len(buf):
        key, pos = _read_varint(buf, pos)
        field, wire = key >> 3, key & 7
        if wire == 0:
            value, pos = _read_varint(buf, pos)
        elif wire == 1:
            value, pos = buf[pos:pos + 8], pos + 8
        elif wire == 2:
            n, pos = _read_varint(buf, pos)
            value, pos = buf[pos:pos + n], pos + n
        elif wire == 5:
            value, pos = buf[pos:pos + 4], pos + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        yield field, wire, value


def decode_event(data: bytes) -> dict:
    """{'wall_time', 'step', 'file_version'?, 'scalars': {tag: value}} of one `Event`."""
    event: dict = {"wall_time": 0.0, "step": 0, "scalars": {}}
    for field, _, value in _fields(data):
        if field == 1:
            event["wall_time"] = struct.unpack("<d", value)[0]
        elif field == 2:
            event["step"] = value - (1 << 64) if value >= 1 << 63 else value
        elif field == 3:
            event["file_version"] = value.decode("utf-8")
        elif field == 5:
            for f, _, v in _fields(value):
                if f != 1:
                    continue
                tag, simple = None, None
                for ff, _, vv in _fields(v):
                    if ff == 1:
                        tag = vv.decode("utf-8")
                    elif ff == 2:
                        simple = struct.unpack("<f", vv)[0]
                if tag is not None and simple is not None:
                    event["scalars"][tag] = simple
    return event


# --------------------------------------------------------------------------------------------
# Files
# --------------------------------------------------------------------------------------------


def _record(data: bytes) -> bytes:
    header = struct.pack("<Q", len(data))
    return (header + struct.pack("<I", masked_crc32c(header)) + data
            + struct.pack("<I", masked_crc32c(data)))


class SummaryWriter:
    """Appends scalar summaries to a new `events.out.tfevents.*` file in `logdir`.

    Usage: `w = SummaryWriter(dir); w.scalars(step, {"train/loss": 0.7}); w.close()`.
    Records are flushed after every call, so TensorBoard sees a live run.
    """

    def __init__(self, logdir: str, filename_suffix: str = ""):
        os.makedirs(logdir, exist_ok=True)
        name = (f"events.out.tfevents.{int(time.time()):010d}.{socket.gethostname()}."
                f"{os.getpid()}.{id(self) % 100000}{filename_suffix}")
        self.path = os.path.join(logdir, name)
        self._f = open(self.path, "ab")
        self._write(encode_event(time.time(), file_version="brain.Event:2"))

    def _write(self, data: bytes) -> None:
        self._f.write(_record(data))
        self._f.flush()

    def scalars(self, step: int, values: Mapping[str, float]) -> None:
        """Writes one event holding every (tag, value) pair at `step`."""
        if values:
            self._write(encode_event(time.time(), int(step), scalars=values))

    def scalar(self, tag: str, value: float, step: int) -> None:
        self.scalars(step, {tag: value})

    def flush(self) -> None:
        self._f.flush()

    def close(self) -> None:
        if not self._f.closed:
            self._f.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_events(path: str) -> list[dict]:
    """Decodes every record of one event file, checking both CRCs of each."""
    with open(path, "rb") as f:
        buf = f.read()
    events, pos = [], 0
    while pos < len(buf):
        header = buf[pos:pos + 8]
        if len(header) < 8:
            raise ValueError(f"{path}: truncated record header at byte {pos}")
        (n,) = struct.unpack("<Q", header)
        (crc_len,) = struct.unpack("<I", buf[pos + 8:pos + 12])
        if crc_len != masked_crc32c(header):
            raise ValueError(f"{path}: bad length CRC at byte {pos}")
        data = buf[pos + 12:pos + 12 + n]
        (crc_data,) = struct.unpack("<I", buf[pos + 12 + n:pos + 16 + n])
        if len(data) < n or crc_data != masked_crc32c(data):
            raise ValueError(f"{path}: bad data CRC at byte {pos}")
        events.append(decode_event(data))
        pos += 16 + n
    return events


def read_scalars(logdir_or_file: str) -> dict[str, list[tuple[int, float]]]:
    """{tag: [(step, value), ...]} from an event file or every event file in a directory."""
    if os.path.isdir(logdir_or_file):
        paths = sorted(glob.glob(os.path.join(logdir_or_file, "events.out.tfevents.*")))
    else:
        paths = [logdir_or_file]
    out: dict[str, list[tuple[int, float]]] = {}
    for path in paths:
        for event in read_events(path):
            for tag, value in event["scalars"].items():
                out.setdefault(tag, []).append((event["step"], value))
    return out
