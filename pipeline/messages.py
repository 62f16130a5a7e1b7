"""Every message kind on the line's sockets, built and checked in one place.

Stages build messages with the functions below and check every message they receive with
:func:`check` before reading a field of it. A message that fails the check raises
:class:`MessageError`; the receiving stage counts it (``bad_messages`` in its status), logs one
line and goes on: one malformed message never stops a stage.

    kind          from -> to                 header fields                          arrays
    frame         source -> preprocess       frame_id source_name capture_ns        image
    register      source -> stitch           frame_id source_name capture_ns        -
    result        any stage -> stitch        frame_id source_name capture_ns        -
                                             verdict reason [camera_lost]
    tiles         preprocess -> infer        frame_id source_name capture_ns grid   tiles tile_index part_mask
                                             [coarse_grid] H t_pre_ns               [frame]
    maps          infer -> stitch            tiles' fields + t_infer_ns             maps scores tile_index
                                                                                    part_mask [frame]
    end           source -> stitch -> sinks  count                                  -
    source_gone   supervisor -> stitch       -                                      -
    crash         supervisor -> stitch       stage at_ns frame_ids                  -
    abort         supervisor -> stitch       reason                                 -
    resend        sinks -> stitch            from                                   -
    record        stitch -> sinks            record [H]                             [frame anomaly_map]
    status        any stage -> supervisor    stage pid processed busy_ms ...        -
"""
from __future__ import annotations

from typing import Any

import numpy as np

from pipeline.config import VERDICTS
from pipeline.wire import WireError


class MessageError(WireError):
    """A message that does not have the fields, types or arrays its kind needs."""


_INT = (int,)
_NUM = (int, float)
_STR = (str,)
_IDS = ("frame_id", "source_name", "capture_ns")

# kind -> {field: accepted types}; a field given as (types, None) may be missing.
_HEADERS: dict[str, dict[str, Any]] = {
    "frame": {"frame_id": _INT, "source_name": _STR, "capture_ns": _INT},
    "register": {"frame_id": _INT, "source_name": _STR, "capture_ns": _INT},
    "result": {"frame_id": _INT, "source_name": _STR, "capture_ns": _INT, "verdict": _STR, "reason": _STR},
    "tiles": {"frame_id": _INT, "source_name": _STR, "capture_ns": _INT, "grid": (dict,), "H": (list,),
              "t_pre_ns": (list,)},
    "maps": {"frame_id": _INT, "source_name": _STR, "capture_ns": _INT, "grid": (dict,), "H": (list,),
             "t_pre_ns": (list,), "t_infer_ns": (list,)},
    "end": {"count": _INT},
    "source_gone": {},
    "crash": {"stage": _STR, "at_ns": _INT, "frame_ids": (list,)},
    "abort": {"reason": _STR},
    "resend": {"from": _INT},
    "record": {"record": (dict,)},
    "status": {"stage": _STR},
}
# kind -> {array: (dtypes, ndims)}; arrays not named here are refused, except optional ones.
_ARRAYS: dict[str, dict[str, tuple[set[str], set[int]]]] = {
    "frame": {"image": ({"uint8", "uint16"}, {2, 3})},
    "tiles": {"tiles": ({"uint8"}, {4}), "tile_index": ({"int32"}, {1}), "part_mask": ({"uint8"}, {2})},
    "maps": {"maps": ({"float16", "float32"}, {4}), "scores": ({"float32", "float16"}, {1, 2}),
             "tile_index": ({"int32"}, {1}), "part_mask": ({"uint8"}, {2})},
}
_OPTIONAL_ARRAYS: dict[str, dict[str, tuple[set[str], set[int]]]] = {
    "tiles": {"frame": ({"uint8", "uint16"}, {2, 3})},
    "maps": {"frame": ({"uint8", "uint16"}, {2, 3})},
    "record": {"frame": ({"uint8", "uint16"}, {2, 3}), "anomaly_map": ({"float16", "float32"}, {2})},
}
KINDS = tuple(_HEADERS)


def _is(value: Any, types: tuple) -> bool:
    if isinstance(value, bool) and bool not in types:
        return False
    return isinstance(value, types)


def check(header: dict, arrays: dict[str, np.ndarray] | None = None) -> str:
    """The message's kind, once its header and arrays have what that kind needs; else MessageError."""
    arrays = arrays or {}
    kind = header.get("kind")
    if kind not in _HEADERS:
        raise MessageError(f"unknown message kind {kind!r}; expected one of {list(KINDS)}")
    for name, types in _HEADERS[kind].items():
        if name not in header:
            raise MessageError(f"{kind} message without {name!r}")
        if not _is(header[name], types):
            raise MessageError(f"{kind} message: {name!r} is {type(header[name]).__name__}, expected "
                               f"{'/'.join(t.__name__ for t in types)}")
    for name in ("frame_id", "count", "from"):
        if name in _HEADERS[kind] and header[name] < 0:
            raise MessageError(f"{kind} message: {name!r} = {header[name]} is negative")
    if kind == "result":
        if header["verdict"] not in VERDICTS:
            raise MessageError(f"result message: verdict {header['verdict']!r} is not one of {list(VERDICTS)}")
    elif kind in ("tiles", "maps"):
        _check_frame_geometry(kind, header)
    elif kind == "crash":
        if not all(_is(f, _INT) for f in header["frame_ids"]):
            raise MessageError("crash message: frame_ids must be integers")
    elif kind == "record":
        rec = header["record"]
        if not _is(rec.get("frame_id"), _INT) or rec["frame_id"] < 0 or rec.get("verdict") not in VERDICTS:
            raise MessageError("record message: the record needs an integer frame_id and a verdict "
                               f"among {list(VERDICTS)}")
        if "H" in header:
            _check_h(kind, header["H"])
    required, optional = _ARRAYS.get(kind, {}), _OPTIONAL_ARRAYS.get(kind, {})
    for name in required:
        if name not in arrays:
            raise MessageError(f"{kind} message without array {name!r}")
    for name, arr in arrays.items():
        spec = required.get(name) or optional.get(name)
        if spec is None:
            raise MessageError(f"{kind} message: unexpected array {name!r}")
        dtypes, ndims = spec
        if str(arr.dtype) not in dtypes or arr.ndim not in ndims:
            raise MessageError(f"{kind} message: array {name!r} is {arr.dtype}{list(arr.shape)}; expected "
                               f"{'/'.join(sorted(dtypes))} with {'/'.join(map(str, sorted(ndims)))} dims")
    if kind in ("tiles", "maps"):
        n = len(arrays["tile_index"])
        first = arrays["tiles" if kind == "tiles" else "maps"]
        if len(first) != n or (kind == "maps" and len(arrays["scores"]) != n):
            raise MessageError(f"{kind} message: {len(first)} tiles but {n} tile indices")
    return kind


def _check_h(kind: str, H: Any) -> None:
    if not (isinstance(H, list) and len(H) == 9 and all(_is(v, _NUM) for v in H)):
        raise MessageError(f"{kind} message: H must be 9 numbers (a 3x3 homography)")


def _check_frame_geometry(kind: str, header: dict) -> None:
    _check_h(kind, header["H"])
    for name in ("grid", "coarse_grid"):
        if name not in header:
            continue
        grid = header[name]
        try:
            ok = (all(_is(grid[k], _INT) and 0 < grid[k] <= 1 << 16 for k in ("height", "width", "tile"))
                  and all(isinstance(grid[k], list) and len(grid[k]) <= 4096 and all(_is(p, _INT) for p in grid[k])
                          for k in ("ys", "xs")))
        except (KeyError, TypeError):
            ok = False
        if not ok:
            raise MessageError(f"{kind} message: {name!r} is not a tile grid (height, width, tile, ys, xs)")
    for name in ("t_pre_ns", "t_infer_ns"):
        if name in header and not (len(header[name]) == 2 and all(_is(t, _INT) for t in header[name])):
            raise MessageError(f"{kind} message: {name!r} must be two integer times")


# Builders: the one place where each kind's header is written.

def frame(frame_id: int, source_name: str, capture_ns: int, recorded_ns: int | None = None) -> dict:
    return {"kind": "frame", "frame_id": frame_id, "source_name": source_name, "capture_ns": capture_ns,
            "recorded_ns": recorded_ns}


def register(frame_id: int, source_name: str, capture_ns: int) -> dict:
    return {"kind": "register", "frame_id": frame_id, "source_name": source_name, "capture_ns": capture_ns}


def result(ids: dict, verdict: str, reason: str, camera_lost: bool = False) -> dict:
    """``ids``: the frame's ``frame_id``, ``source_name`` and ``capture_ns`` (any message of it has them)."""
    return {"kind": "result", **{k: ids[k] for k in _IDS}, "verdict": verdict, "reason": reason,
            **({"camera_lost": True} if camera_lost else {})}


def frame_ids(header: dict) -> dict:
    return {k: header[k] for k in _IDS}


def tiles(ids: dict, grids: dict, H: np.ndarray, t_pre_ns: list[int]) -> dict:
    return {"kind": "tiles", **frame_ids(ids), **grids, "H": [float(v) for v in np.asarray(H).ravel()],
            "t_pre_ns": t_pre_ns}


def maps(tiles_header: dict, t_infer_ns: list[int], batch_tiles: int) -> dict:
    return {**tiles_header, "kind": "maps", "t_infer_ns": t_infer_ns, "batch_tiles": batch_tiles}


def end(count: int) -> dict:
    return {"kind": "end", "count": count}


def source_gone() -> dict:
    return {"kind": "source_gone"}


def crash(stage: str, at_ns: int, held: list[int]) -> dict:
    """``held``: the frames the crashed stage had taken and not passed on (its holding note)."""
    return {"kind": "crash", "stage": stage, "at_ns": at_ns, "frame_ids": list(held)}


def abort(reason: str) -> dict:
    return {"kind": "abort", "reason": reason}


def resend(from_id: int) -> dict:
    return {"kind": "resend", "from": from_id}


def record(rec: dict, H: np.ndarray | None = None) -> dict:
    out = {"kind": "record", "record": rec}
    if H is not None:
        out["H"] = [float(v) for v in np.asarray(H).ravel()]
    return out


def status(stage: str, pid: int, counters: dict) -> dict:
    return {"kind": "status", "stage": stage, "pid": pid, **counters}
