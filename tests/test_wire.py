import msgpack
import numpy as np
import pytest

from pipeline import wire


def test_roundtrip_arrays_and_header():
    arrays = {"image": np.arange(24, dtype=np.uint8).reshape(2, 3, 4), "maps": np.ones((2, 1, 4, 4), np.float16),
              "empty": np.zeros((0, 3), np.float32)}
    frames = wire.encode({"kind": "x", "frame_id": 7, "H": [1.0] * 9}, arrays)
    header, out = wire.decode(frames)
    assert header["frame_id"] == 7 and header["v"] == wire.VERSION
    for k, a in arrays.items():
        assert out[k].dtype == a.dtype and np.array_equal(out[k], a)


def test_buffers_are_not_copied_on_encode():
    a = np.arange(1000, dtype=np.float32)
    frames = wire.encode({}, {"a": a})
    assert np.shares_memory(np.frombuffer(frames[1], np.float32), a)


def test_size_mismatch_rejected():
    frames = wire.encode({}, {"a": np.zeros((4, 4), np.float32)})
    with pytest.raises(wire.WireError, match="bytes"):
        wire.decode([frames[0], b"\x00" * 10])


def test_bad_dtype_and_version_and_garbage():
    with pytest.raises(wire.WireError, match="not allowed"):
        wire.encode({}, {"a": np.zeros(3, np.complex64)})
    header = msgpack.packb({"v": 99, "arrays": []})
    with pytest.raises(wire.WireError, match="version"):
        wire.decode([header])
    with pytest.raises(wire.WireError, match="msgpack"):
        wire.decode([b"\xc1\xff\x00"])
    forged = msgpack.packb({"v": wire.VERSION, "arrays": [{"name": "a", "dtype": "object", "shape": [1]}]})
    with pytest.raises(wire.WireError, match="not allowed"):
        wire.decode([forged, b"12345678"])
    with pytest.raises(wire.WireError, match="declares"):
        wire.decode([msgpack.packb({"v": wire.VERSION, "arrays": []}), b"extra"])
