"""Tests of the hand-rolled TensorBoard writer: CRCs, framing, protobuf encoding, read-back."""

import math
import os
import struct

import pytest

from popt_jax.core import tb_writer


def test_crc32c_known_vectors():
    # RFC 3720 (iSCSI) B.4 and the classic check value.
    assert tb_writer.crc32c(b"123456789") == 0xE3069283
    assert tb_writer.crc32c(bytes(32)) == 0x8A9136AA
    assert tb_writer.crc32c(b"\xff" * 32) == 0x62A8AB43
    assert tb_writer.crc32c(bytes(range(32))) == 0x46DD794E


def test_masked_crc_formula():
    crc = tb_writer.crc32c(b"abc")
    expected = (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF
    assert tb_writer.masked_crc32c(b"abc") == expected


def test_write_and_read_back(tmp_path):
    with tb_writer.SummaryWriter(str(tmp_path)) as w:
        w.scalars(1, {"train/loss": 0.5, "train/lr": 1e-4})
        w.scalar("valid/roc_auc", 0.75, 100)
        w.scalars(2**40, {"big/step": -3.25})
    files = [f for f in os.listdir(tmp_path) if f.startswith("events.out.tfevents.")]
    assert len(files) == 1
    events = tb_writer.read_events(os.path.join(tmp_path, files[0]))
    assert events[0]["file_version"] == "brain.Event:2"
    assert all(e["wall_time"] > 1.6e9 for e in events)
    scalars = tb_writer.read_scalars(str(tmp_path))
    assert scalars["train/loss"] == [(1, 0.5)]
    assert scalars["train/lr"][0][0] == 1
    assert math.isclose(scalars["train/lr"][0][1], 1e-4, rel_tol=1e-6)  # float32 on disk
    assert scalars["valid/roc_auc"] == [(100, 0.75)]
    assert scalars["big/step"] == [(2**40, -3.25)]


def test_corruption_is_detected(tmp_path):
    with tb_writer.SummaryWriter(str(tmp_path)) as w:
        w.scalar("x", 1.0, 3)
        path = w.path
    data = bytearray(open(path, "rb").read())
    data[-6] ^= 0x01  # inside the last record's payload
    open(path, "wb").write(bytes(data))
    with pytest.raises(ValueError, match="CRC"):
        tb_writer.read_events(path)


def test_framing_layout(tmp_path):
    with tb_writer.SummaryWriter(str(tmp_path)) as w:
        path = w.path
    raw = open(path, "rb").read()
    (n,) = struct.unpack("<Q", raw[:8])
    assert len(raw) == 8 + 4 + n + 4
    assert struct.unpack("<I", raw[8:12])[0] == tb_writer.masked_crc32c(raw[:8])


def test_encoding_matches_protobuf_library():
    """Parses our bytes with the real protobuf runtime, on a descriptor built here."""
    pytest.importorskip("google.protobuf")
    from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

    fdp = descriptor_pb2.FileDescriptorProto(name="ev_test.proto", package="t", syntax="proto3")
    F = descriptor_pb2.FieldDescriptorProto
    value = fdp.message_type.add(name="Value")
    value.field.add(name="tag", number=1, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    value.field.add(name="simple_value", number=2, type=F.TYPE_FLOAT, label=F.LABEL_OPTIONAL)
    summary = fdp.message_type.add(name="Summary")
    summary.field.add(name="value", number=1, type=F.TYPE_MESSAGE, type_name=".t.Value",
                      label=F.LABEL_REPEATED)
    event = fdp.message_type.add(name="Event")
    event.field.add(name="wall_time", number=1, type=F.TYPE_DOUBLE, label=F.LABEL_OPTIONAL)
    event.field.add(name="step", number=2, type=F.TYPE_INT64, label=F.LABEL_OPTIONAL)
    event.field.add(name="file_version", number=3, type=F.TYPE_STRING, label=F.LABEL_OPTIONAL)
    event.field.add(name="summary", number=5, type=F.TYPE_MESSAGE, type_name=".t.Summary",
                    label=F.LABEL_OPTIONAL)
    pool = descriptor_pool.DescriptorPool()
    pool.Add(fdp)
    Event = message_factory.GetMessageClass(pool.FindMessageTypeByName("t.Event"))

    msg = Event()
    msg.ParseFromString(tb_writer.encode_event(1234.5, 77, scalars={"a/b": 2.5, "c": -1.0}))
    assert msg.wall_time == 1234.5 and msg.step == 77
    assert [(v.tag, v.simple_value) for v in msg.summary.value] == [("a/b", 2.5), ("c", -1.0)]
    msg = Event()
    msg.ParseFromString(tb_writer.encode_event(1.0, file_version="brain.Event:2"))
    assert msg.file_version == "brain.Event:2"
    # And the other way: bytes from the protobuf runtime decode with our reader.
    ref = Event(wall_time=9.0, step=5)
    ref.summary.value.add(tag="z", simple_value=0.25)
    back = tb_writer.decode_event(ref.SerializeToString())
    assert back["step"] == 5 and back["scalars"] == {"z": 0.25}
