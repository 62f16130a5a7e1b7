"""Typed line configuration: YAML parsed once into dataclasses with defaults and validation.

A wrong key or value fails at start-up with the file, the dotted key and what was expected.
Relative paths in the file are resolved against the file's own folder.
"""
from __future__ import annotations

import dataclasses
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml


class ConfigError(ValueError):
    pass


# Every verdict a result record can carry, in the order of their Modbus codes (1 = OK ... 5 = DROPPED).
VERDICTS = ("OK", "NG", "NO_PART", "ERROR", "DROPPED")


@dataclass
class CameraConfig:
    width: int = 640
    height: int = 480
    fps: float = 30.0
    exposure: float | None = None  # camera units (OpenCV CAP_PROP_EXPOSURE); None keeps the camera's own
    queue: int = 4                 # frames buffered before the oldest is dropped


@dataclass
class StreamConfig:
    """Network cameras (``rtsp://``, ``http://``), opened through OpenCV's FFmpeg backend."""
    transport: str = "tcp"         # RTSP transport: tcp (no lost packets, so no torn frames) or udp
    low_latency: bool = True       # short stream probe, no demuxer buffer: frames at camera pace from the first
    open_timeout_s: float = 10.0   # connecting and reading the stream description
    read_timeout_s: float = 5.0    # a stream silent this long counts as lost


@dataclass
class SourceConfig:
    uri: str = ""                  # camera0, video:FILE, dir:DIR, replay:SEQ, rtsp://...
    realtime: bool = False         # replay at recorded pace instead of as fast as possible
    # A camera or stream that stops delivering is reopened (waits 0.5, 1, 2, 4, then 5 s) for up to
    # this long; each loss is an ERROR record in the results. After that the run flushes and ends
    # with an error. It also bounds the wait for a camera that is not there yet at start.
    reconnect_s: float = 60.0
    camera: CameraConfig = field(default_factory=CameraConfig)
    stream: StreamConfig = field(default_factory=StreamConfig)


@dataclass
class BeltConfig:
    mean: list[float] = field(default_factory=lambda: [0.0, 0.0, 0.0])  # the belt's mean features
    inv_cov: list[list[float]] = field(default_factory=lambda: [[1.0, 0, 0], [0, 1.0, 0], [0, 0, 1.0]])
    max_distance: float = 4.0     # Mahalanobis distance under which a pixel is belt
    features: str = "lab"         # lab: colour (colour cameras); mono: brightness and texture (mono cameras)
    level: float = 0.0            # mono: belt lightness each frame is scaled to (light drift); 0: none
    shading: list[float] = field(default_factory=list)  # the light's gain over the view (SHADING_TERMS); []: even


@dataclass
class PreprocessConfig:
    # colour | mono: the frames calibration saw. A frame the line cannot read as calibrated gets an
    # ERROR record, never a verdict: one without colour where the belt is told by colour, one with
    # visible colour on a mono line (pipeline.vision.camera.kind_mismatch).
    camera: str = "colour"
    mode: str = "silhouette"       # silhouette | template
    template: str = ""             # golden OK template (template mode)
    template_min_score: float = 0.5
    template_scales: list[float] = field(default_factory=lambda: [0.9, 0.95, 1.0, 1.05, 1.1])
    downscale: float = 0.5         # locating the part (template search, silhouette) runs on a downscaled frame
    canonical_size: list[int] = field(default_factory=lambda: [256, 320])  # [width, height]
    min_part_area: int = 5000      # camera px; smaller silhouettes mean no part in view
    # a silhouette of at least this fraction of min_part_area, but under it, is something on the belt
    # that is not a whole part (a part not told whole from the belt, a part half in view): ERROR
    min_object_fraction: float = 0.05
    # a part whose own surface lies on the frame's outermost rows and columns for this fraction of
    # its outline's length is cut by the frame's edge: ERROR, for a part of it would go uninspected
    max_edge_contact: float = 0.003
    belt: BeltConfig = field(default_factory=BeltConfig)
    tile_overlap: float = 0.25
    min_tile_part_fraction: float = 0.3


@dataclass
class InferenceConfig:
    model: str = ""
    backend: str = "onnxruntime"
    workers: int = 1
    max_batch: int = 32
    max_wait_ms: float = 5.0
    threads: int = 0


@dataclass
class DecisionConfig:
    pixel_threshold: float | None = None  # None: the model's own
    image_threshold: float | None = None
    min_defect_area: int = 20             # canonical px
    # Regions at the pixel threshold closer than this (canonical px) are one group: their pixels
    # count together towards min_defect_area, and the group is reported where its map is at least
    # half its peak (pipeline.vision.defects.find_defects), each connected piece as a defect.
    merge_gap_px: int = 8
    part_erode_px: int = 3                # ignore the part's outermost pixels (silhouette edge)


@dataclass
class EndpointsConfig:
    frames: str = "ipc://{run}/frames"     # source -> preprocess
    tiles: str = "ipc://{run}/tiles"       # preprocess -> infer workers
    verdict: str = "ipc://{run}/verdict"   # infer, preprocess, source -> stitch
    results: str = "ipc://{run}/results"   # stitch -> sinks
    status: str = "ipc://{run}/status"     # every stage -> supervisor


@dataclass
class ModbusConfig:
    enabled: bool = False
    host: str = "127.0.0.1"
    port: int = 502
    unit: int = 1
    verdict_coil: int = 0          # 1 = reject: the verdict is one of reject_verdicts
    # Fail-safe by default: a part that was not inspected (ERROR, DROPPED) is rejected like an NG one.
    reject_verdicts: list[str] = field(default_factory=lambda: ["NG", "ERROR", "DROPPED"])
    # The result block, written in one request: +0 verdict code (1 OK, 2 NG, 3 NO_PART, 4 ERROR,
    # 5 DROPPED), +1 defect count, +2 missed results since start, +3 sequence (last: a new result).
    result_register: int = 0
    heartbeat_register: int = 4
    heartbeat_s: float = 1.0
    timeout_s: float = 1.0
    # A verdict older than this (since capture) when the PLC's turn comes is not written (the part
    # has moved on); it is counted in the missed-results register and in the results log.
    max_age_s: float = 3.0


@dataclass
class HttpConfig:
    enabled: bool = False
    url: str = ""                  # a token in it is kept out of logs and config copies; prefer headers_env
    timeout_s: float = 2.0
    retries: int = 3
    backoff_s: float = 0.2
    spool_dir: str = "mes_spool"   # records wait here (on disk) until the MES accepts them
    # Request headers whose values come from the environment, e.g. {Authorization: MES_AUTH} sends
    # the value of $MES_AUTH; the values are never logged or written to a config copy.
    headers_env: dict[str, str] = field(default_factory=dict)
    ca_bundle: str = ""            # PEM file of the CAs to trust for https:// (default: the system's)


@dataclass
class SinksConfig:
    modbus: ModbusConfig = field(default_factory=ModbusConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    overlays_dir: str = ""
    save_masks: bool = False


@dataclass
class LineConfig:
    name: str = "line"
    source: SourceConfig = field(default_factory=SourceConfig)
    preprocess: PreprocessConfig = field(default_factory=PreprocessConfig)
    inference: InferenceConfig = field(default_factory=InferenceConfig)
    decision: DecisionConfig = field(default_factory=DecisionConfig)
    endpoints: EndpointsConfig = field(default_factory=EndpointsConfig)
    sinks: SinksConfig = field(default_factory=SinksConfig)
    frame_timeout_s: float = 30.0  # a frame with no result after this becomes ERROR


PATH_FIELDS = {("preprocess", "template"), ("inference", "model")}
_BLOCK = ("the PLC now gets one block of registers per part, written in one request: set "
          "`sinks.modbus.result_register` to its first address (+0 verdict code, +1 defect count, "
          "+2 missed results, +3 sequence) and update the PLC program (docs/operating.md, 'PLC')")
REPLACED_KEYS = {"ModbusConfig": {"verdict_register": _BLOCK, "defect_count_register": _BLOCK,
                                  "sequence_register": _BLOCK}}
VALID = {("preprocess", "mode"): ("silhouette", "template"),
         ("preprocess", "camera"): ("colour", "mono"),
         ("preprocess", "belt", "features"): ("lab", "mono"),
         ("inference", "backend"): ("onnxruntime", "onnxruntime-cuda", "torch", "tensorrt"),
         ("source", "stream", "transport"): ("tcp", "udp")}


def _type_ok(value: Any, tp: Any) -> bool:
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        return any(_type_ok(value, t) for t in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if tp is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if origin is list:
        (inner,) = typing.get_args(tp) or (Any,)
        return isinstance(value, list) and all(inner is Any or _type_ok(v, inner) for v in value)
    if origin is dict:
        key_tp, value_tp = typing.get_args(tp) or (Any, Any)
        return isinstance(value, dict) and all(_type_ok(k, key_tp) and _type_ok(v, value_tp) for k, v in value.items())
    if tp is Any:
        return True
    return isinstance(value, tp)


def _build(cls: type, raw: Any, where: str, source: str) -> Any:
    if not isinstance(raw, dict):
        raise ConfigError(f"{source}: `{where or 'top level'}` must be a mapping, got {type(raw).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = set(raw) - set(fields)
    for old in sorted(unknown & set(REPLACED_KEYS.get(cls.__name__, {}))):
        raise ConfigError(f"{source}: `{where}.{old}` is no longer used: {REPLACED_KEYS[cls.__name__][old]}")
    if unknown:
        raise ConfigError(f"{source}: unknown key(s) {sorted(f'{where}.{k}'.lstrip('.') for k in unknown)}; "
                          f"valid keys here: {sorted(fields)}")
    values = {}
    for name, value in raw.items():
        key = f"{where}.{name}".lstrip(".")
        tp = hints[name]
        if dataclasses.is_dataclass(tp):
            values[name] = _build(tp, value, key, source)
            continue
        if not _type_ok(value, tp):
            raise ConfigError(f"{source}: `{key}` = {value!r} is not a valid {getattr(tp, '__name__', tp)}")
        values[name] = float(value) if tp is float else value
    return cls(**values)


def validate(cfg: LineConfig, source: str = "config") -> LineConfig:
    for path, choices in VALID.items():
        value = cfg
        for name in path:
            value = getattr(value, name)
        if value not in choices:
            raise ConfigError(f"{source}: `{'.'.join(path)}` = {value!r}; expected one of {list(choices)}")
    checks = [
        (cfg.inference.workers >= 1, "inference.workers", "an integer >= 1"),
        (cfg.inference.max_batch >= 1, "inference.max_batch", "an integer >= 1"),
        (0 <= cfg.preprocess.tile_overlap < 1, "preprocess.tile_overlap", "a fraction in [0, 1)"),
        (0 <= cfg.preprocess.min_object_fraction <= 1, "preprocess.min_object_fraction",
         "a fraction in [0, 1] of min_part_area (1: a part too small to locate is always NO_PART)"),
        (0 < cfg.preprocess.max_edge_contact <= 1, "preprocess.max_edge_contact",
         "a fraction in (0, 1] of the part's outline (1: a part cut by the frame's edge is still inspected)"),
        (len(cfg.preprocess.canonical_size) == 2 and min(cfg.preprocess.canonical_size) >= 32,
         "preprocess.canonical_size", "[width, height], each >= 32"),
        (0 < cfg.preprocess.downscale <= 1, "preprocess.downscale", "a factor in (0, 1]"),
        (len(cfg.preprocess.belt.mean) == 3, "preprocess.belt.mean", "3 numbers (Lab)"),
        (cfg.preprocess.belt.level >= 0, "preprocess.belt.level",
         "a lightness >= 0 (0: frames compared unscaled); re-run calibrate_line to fit it"),
        (len(cfg.preprocess.belt.shading) in (0, 5), "preprocess.belt.shading",
         "5 numbers (the terms u, v, u*u, v*v, u*v) or [] for even light; re-run calibrate_line to fit it"),
        (cfg.decision.min_defect_area >= 1, "decision.min_defect_area", "an integer >= 1 (canonical px)"),
        (cfg.source.reconnect_s >= 0, "source.reconnect_s", "seconds >= 0 (0: a lost camera ends the run at once)"),
        (cfg.source.stream.open_timeout_s > 0 and cfg.source.stream.read_timeout_s > 0,
         "source.stream.open_timeout_s / read_timeout_s", "seconds > 0"),
        (cfg.decision.merge_gap_px >= 0, "decision.merge_gap_px", "an integer >= 0 (canonical px; 0: no merging)"),
    ]
    for ok, key, expected in checks:
        if not ok:
            raise ConfigError(f"{source}: `{key}` is invalid; expected {expected}")
    m = cfg.sinks.modbus
    registers = {"result_register": range(m.result_register, m.result_register + 4),
                 "heartbeat_register": range(m.heartbeat_register, m.heartbeat_register + 1)}
    if min(m.result_register, m.heartbeat_register, m.verdict_coil) < 0 or m.result_register + 3 > 0xFFFF:
        raise ConfigError(f"{source}: `sinks.modbus` addresses must be 0..65532 (result_register takes 4 registers)")
    if set(registers["result_register"]) & set(registers["heartbeat_register"]):
        raise ConfigError(f"{source}: `sinks.modbus.heartbeat_register` {m.heartbeat_register} lies inside the "
                          f"result block {m.result_register}..{m.result_register + 3}; move one of them")
    if m.max_age_s <= 0:
        raise ConfigError(f"{source}: `sinks.modbus.max_age_s` must be seconds > 0")
    unknown = sorted(set(cfg.sinks.modbus.reject_verdicts) - set(VERDICTS))
    if unknown:
        raise ConfigError(f"{source}: `sinks.modbus.reject_verdicts` has {unknown}; expected verdicts among {list(VERDICTS)}")
    if cfg.preprocess.mode == "template" and not cfg.preprocess.template:
        raise ConfigError(f"{source}: `preprocess.template` is required when preprocess.mode is template "
                          "(run calibrate_line to make one)")
    return cfg


def load_config(path: str | Path, overrides: dict | None = None) -> LineConfig:
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file not found")
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: not valid YAML: {exc}") from exc
    cfg = _build(LineConfig, raw, "", str(path))
    for section, name in PATH_FIELDS:
        sec = getattr(cfg, section)
        value = getattr(sec, name)
        if value and not Path(value).is_absolute():
            setattr(sec, name, str((path.parent / value).resolve()))
    if cfg.sinks.http.spool_dir and not Path(cfg.sinks.http.spool_dir).is_absolute():
        cfg.sinks.http.spool_dir = str((path.parent / cfg.sinks.http.spool_dir).resolve())
    if cfg.sinks.http.ca_bundle and not Path(cfg.sinks.http.ca_bundle).is_absolute():
        cfg.sinks.http.ca_bundle = str((path.parent / cfg.sinks.http.ca_bundle).resolve())
    for key, value in (overrides or {}).items():
        section, name = key.split(".")
        setattr(getattr(cfg, section), name, value)
    return validate(cfg, str(path))


def to_dict(cfg: LineConfig, redact: bool = True) -> dict:
    """The config as plain data; with ``redact``, secrets kept out: credentials and tokens in URLs
    become ``***`` (header values never live in the config: they are read from the environment)."""
    from pipeline.redact import redact_url

    out = dataclasses.asdict(cfg)
    if redact:
        out["sinks"]["http"]["url"] = redact_url(out["sinks"]["http"]["url"])
        out["source"]["uri"] = redact_url(out["source"]["uri"])
    return out


def dump_config(cfg: LineConfig, path: str | Path, header: str = "", redact: bool = True) -> Path:
    """Write ``cfg`` as YAML. ``redact=False`` (the copy the stages read) keeps the URLs whole and
    makes the file readable by its owner only."""
    path = Path(path)
    text = yaml.safe_dump(to_dict(cfg, redact), sort_keys=False)
    if not redact:
        path.touch(mode=0o600)
        path.chmod(0o600)
    path.write_text((header + "\n" if header else "") + text)
    return path


# What each key of a line config means: the comments of the YAML that calibrate_line and
# commission_line write (commented_yaml), kept here beside the dataclasses they describe.
FIELD_HELP = {
    "name": "the line's name, in status lines and run folders",
    "source": "the camera (run_pipeline --source camera0, rtsp://..., video:F, dir:D, replay:SEQ)",
    "source.uri": "set by run_pipeline --source",
    "source.realtime": "a replay at its recorded pace (a live source) instead of as fast as possible",
    "source.reconnect_s": "reopen a camera that stops delivering for this long, then end the run",
    "source.camera": "cameraN",
    "source.camera.width": "camera px asked of the camera",
    "source.camera.height": "camera px asked of the camera",
    "source.camera.fps": "frames per second asked of the camera",
    "source.camera.exposure": "camera units; null keeps the camera's own",
    "source.camera.queue": "frames waiting for inspection before the oldest is dropped (DROPPED)",
    "source.stream": "rtsp:// and http:// cameras",
    "source.stream.transport": "tcp, or udp (lost packets tear frames)",
    "source.stream.low_latency": "short stream probe: no 2-s backlog of old frames at start",
    "source.stream.open_timeout_s": "connecting and reading the stream description",
    "source.stream.read_timeout_s": "a stream silent this long counts as lost",
    "preprocess.camera": "colour or mono: the kind of frames calibrated; another camera's frames get ERROR records",
    "preprocess.mode": "silhouette: belt mask -> largest blob -> quadrilateral; template: golden-template match + ECC",
    "preprocess.template": "golden OK template (template mode)",
    "preprocess.template_min_score": "template mode: under it, NO_PART on an empty belt, ERROR if something is seen",
    "preprocess.template_scales": "template mode: scales searched",
    "preprocess.downscale": "the part is located on the frame downscaled by this factor",
    "preprocess.canonical_size": "[width, height] of the rectified part in px",
    "preprocess.min_part_area": "camera px; a smaller silhouette means no part in view (NO_PART)",
    "preprocess.min_object_fraction": ("a silhouette this large against min_part_area, but under it, is ERROR: "
                                       "something in view that is not a whole part"),
    "preprocess.max_edge_contact": ("a part whose surface lies on the frame's edge for this fraction of its outline "
                                    "is cut by it: ERROR, not a verdict"),
    "preprocess.belt": "Gaussian model of the belt (colour, or brightness and texture), fitted on the frame borders",
    "preprocess.belt.max_distance": "Mahalanobis distance under which a pixel counts as belt",
    "preprocess.belt.features": "lab (colour) or mono (brightness and texture)",
    "preprocess.belt.level": "mono: the belt's lightness each frame is brought to before comparing (0: none)",
    "preprocess.belt.shading": ("the light's gain over the view, 1 + these times u, v, u*u, v*v, u*v (u, v -1..1), taken out of "
                                "each frame before comparing ([]: even light)"),
    "preprocess.tile_overlap": "128x128 tiles overlapping by this fraction",
    "preprocess.min_tile_part_fraction": "tiles with less of the part are not inspected",
    "inference.backend": "onnxruntime (CPU), onnxruntime-cuda, torch, tensorrt",
    "inference.workers": "inference processes sharing the load",
    "inference.max_batch": "tiles per batch, across frames",
    "inference.max_wait_ms": "wait at most this long to fill a batch",
    "inference.threads": "CPU threads per worker; 0: the backend's choice",
    "decision.pixel_threshold": "null: the model's own (model.json)",
    "decision.image_threshold": "score at or above which a part is NG; null: the model's own",
    "decision.min_defect_area": "canonical px; smaller regions are not reported",
    "decision.merge_gap_px": "canonical px; regions closer than this are one group, reported where its map is >= half its peak",
    "decision.part_erode_px": "ignore this many px at the part's outline",
    "endpoints": "ZeroMQ addresses between the stages; {run} is the run folder",
    "sinks.modbus.enabled": "write each part's result to a PLC over Modbus TCP",
    "sinks.modbus.host": "the PLC's address",
    "sinks.modbus.port": "Modbus TCP port",
    "sinks.modbus.unit": "Modbus unit (slave) id",
    "sinks.modbus.verdict_coil": "1 = reject: the verdict is one of reject_verdicts",
    "sinks.modbus.reject_verdicts": "fail-safe: a part not inspected is rejected too",
    "sinks.modbus.result_register": ("one block per part, in one write: +0 verdict (1 OK, 2 NG, 3 NO_PART, 4 ERROR, "
                                     "5 DROPPED), +1 defect count, +2 missed results since start, +3 sequence "
                                     "(changes last: a new result)"),
    "sinks.modbus.heartbeat_register": "increments every heartbeat_s while the line runs",
    "sinks.modbus.heartbeat_s": "seconds between heartbeats",
    "sinks.modbus.timeout_s": "a PLC request unanswered this long has failed",
    "sinks.modbus.max_age_s": "a verdict older than this is not written (counted as missed)",
    "sinks.http.enabled": "POST each part's record to an MES",
    "sinks.http.url": "MES endpoint: one JSON POST per part",
    "sinks.http.timeout_s": "a POST unanswered this long is retried",
    "sinks.http.retries": "tries per round before the record waits for the next round",
    "sinks.http.backoff_s": "first wait between tries, doubling",
    "sinks.http.spool_dir": "records wait here while the MES is down",
    "sinks.http.headers_env": "e.g. {Authorization: MES_AUTH}: the value is read from $MES_AUTH",
    "sinks.http.ca_bundle": "PEM file of CAs for https (default: the system's)",
    "sinks.overlays_dir": "an overlay image per NG frame here (run_pipeline --save-overlays)",
    "sinks.save_masks": "with overlays: a defect mask image per NG frame too",
    "frame_timeout_s": "a frame with no result after this becomes ERROR",
}


def _scalar(value: Any) -> str:
    """One value as YAML on one line."""
    return yaml.safe_dump(value, default_flow_style=True, width=1 << 16).removesuffix("\n...\n").strip()


def commented_yaml(cfg: LineConfig, header: list[str] = (), values: dict[str, Any] | None = None) -> str:
    """``cfg`` as YAML with every key, in the dataclasses' order, each with what it means
    (``FIELD_HELP``): the line config calibrate_line and commission_line write. ``values``
    replaces some values by dotted key (a path written relative to the file, say)."""
    values = values or {}
    lines = [f"# {h}" if h else "#" for h in header]

    def walk(obj: Any, prefix: str, indent: str) -> None:
        for f in dataclasses.fields(obj):
            key = f"{prefix}{f.name}"
            value = getattr(obj, f.name)
            note = FIELD_HELP.get(key)
            if dataclasses.is_dataclass(value):
                lines.append(f"{indent}{f.name}:" + (f"  # {note}" if note else ""))
                walk(value, key + ".", indent + "  ")
                continue
            text = _scalar(values.get(key, value))
            lines.append(f"{indent}{f.name}: {text}" + (f"  # {note}" if note else ""))

    walk(cfg, "", "")
    return "\n".join(lines) + "\n"
