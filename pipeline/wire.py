"""Wire format: a msgpack header frame followed by raw array buffers (sent without copies).

    header = {"v": 1, "kind": str, ..., "arrays": [{"name", "dtype", "shape"}, ...]}
    frames = [packb(header), buffer_0, buffer_1, ...]

Decoding checks the version, that each buffer's byte size matches its declared dtype and shape,
and that dtypes come from a fixed allow-list, before any array is built. No pickle anywhere.
"""
from __future__ import annotations

from typing import Any, Sequence

import msgpack
import numpy as np

VERSION = 1
ALLOWED_DTYPES = {"uint8", "uint16", "float16", "float32", "int32"}
MAX_DIMS = 5
# The largest message part the line accepts (sockets set ZMQ_MAXMSGSIZE to it, so a peer sending
# more is disconnected): a 12-megapixel colour frame is 36 MB.
MAX_PART_BYTES = 256 << 20
# Headers are ids, times, grids and a record's defect polygons: small. A larger one is refused
# before it is unpacked.
MAX_HEADER_BYTES = 4 << 20


class WireError(ValueError):
    pass


def encode(header: dict[str, Any], arrays: dict[str, np.ndarray] | None = None) -> list:
    arrays = arrays or {}
    specs, buffers = [], []
    for name, arr in arrays.items():
        if str(arr.dtype) not in ALLOWED_DTYPES:
            raise WireError(f"array {name!r}: dtype {arr.dtype} not allowed on the wire ({sorted(ALLOWED_DTYPES)})")
        arr = np.ascontiguousarray(arr)
        specs.append({"name": name, "dtype": str(arr.dtype), "shape": list(arr.shape)})
        buffers.append(memoryview(arr).cast("B") if arr.size else b"")
    return [msgpack.packb({**header, "v": VERSION, "arrays": specs}, use_bin_type=True), *buffers]


def decode(frames: Sequence[Any]) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
    if not frames:
        raise WireError("empty message")
    if len(frames[0]) > MAX_HEADER_BYTES:
        raise WireError(f"header of {len(frames[0])} bytes; at most {MAX_HEADER_BYTES} are accepted")
    try:
        header = msgpack.unpackb(bytes(frames[0]), raw=False, strict_map_key=True)
    except Exception as exc:  # msgpack raises several unrelated types
        raise WireError(f"header is not valid msgpack: {exc}") from exc
    if not isinstance(header, dict):
        raise WireError("header is not a map")
    if header.get("v") != VERSION:
        raise WireError(f"wire version {header.get('v')!r}; this stage speaks {VERSION}")
    specs = header.get("arrays", [])
    if not isinstance(specs, list) or len(specs) != len(frames) - 1:
        raise WireError(f"header declares {len(specs) if isinstance(specs, list) else '?'} arrays, "
                        f"message carries {len(frames) - 1}")
    arrays = {}
    for spec, buf in zip(specs, frames[1:]):
        try:
            name, dtype, shape = str(spec["name"]), str(spec["dtype"]), [int(s) for s in spec["shape"]]
        except (KeyError, TypeError, ValueError) as exc:
            raise WireError(f"malformed array spec {spec!r}") from exc
        if dtype not in ALLOWED_DTYPES:
            raise WireError(f"array {name!r}: dtype {dtype!r} not allowed")
        if len(shape) > MAX_DIMS or any(s < 0 for s in shape):
            raise WireError(f"array {name!r}: bad shape {shape}")
        expected = np.dtype(dtype).itemsize
        for s in shape:  # Python integers: a shape whose product overflows int64 cannot pass as small
            expected *= s
        if expected > MAX_PART_BYTES:
            raise WireError(f"array {name!r}: {dtype}{shape} would be {expected} bytes; at most {MAX_PART_BYTES}")
        data = memoryview(buf.buffer if hasattr(buf, "buffer") else buf)
        if data.nbytes != expected:
            raise WireError(f"array {name!r}: {data.nbytes} bytes, but {dtype}{shape} needs {expected}")
        arrays[name] = np.frombuffer(data, dtype=dtype).reshape(shape) if expected else np.zeros(shape, dtype)
    return header, arrays
