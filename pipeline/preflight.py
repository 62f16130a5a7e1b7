"""Checks run_pipeline makes before any stage starts: the model folder and every path the line will
read or write. Each problem is one ``PreflightError`` line naming the file, the setting and the fix,
so a wrong model folder or a read-only results folder is exit 2 with one line, not a crash loop."""
from __future__ import annotations

import os
import tempfile
from pathlib import Path

from pipeline.config import LineConfig


class PreflightError(ValueError):
    pass


def check_model(folder: str | Path, backend: str, where: str = "inference.model") -> None:
    """The folder holds a sidecar this runtime reads and model files whose structure holds (a
    truncated, empty or foreign file is caught here; the infer stage loads them in full)."""
    from engines.artifact import COARSE_MAP_DIR, ArtifactError, ModelMeta

    folder = Path(folder)
    if not str(folder) or not folder.is_dir():
        raise PreflightError(f"{where}: model folder {folder} not found; set it to a folder made by export_model "
                             "(engines/models/magnetic_tile is the bundled one)")
    try:
        meta = ModelMeta.load(folder)
    except (ArtifactError, OSError, ValueError) as exc:
        raise PreflightError(f"{where}: {exc}") from exc
    folders = [folder] + ([folder / COARSE_MAP_DIR] if meta.coarse_map_weight > 0 else [])
    for f in folders:
        if backend in ("onnxruntime", "tensorrt"):
            _check_onnx(f / "model.onnx")
        if backend == "tensorrt" and not (f / "model.engine").is_file():
            raise PreflightError(f"{f / 'model.engine'}: not found; build it on this GPU with build_engine --model {f}")
        if backend == "torch" and not (f / "model.pt").is_file():
            raise PreflightError(f"{f / 'model.pt'}: not found; the torch backend needs it (export_model writes it)")


def _check_onnx(path: Path) -> None:
    from engines.artifact import ArtifactError, check_onnx_file

    try:
        check_onnx_file(path)
    except ArtifactError as exc:
        raise PreflightError(str(exc)) from exc


def check_writable(folder: str | Path, what: str) -> None:
    """``folder`` exists (made if need be) and takes a new file."""
    folder = Path(folder)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise PreflightError(f"{what} {folder}: cannot write there ({exc.strerror or exc}); choose a folder this "
                             "user can write, or fix its permissions or free space") from exc


def check_line(cfg: LineConfig, results: str | Path | None = None) -> None:
    """Everything the line needs before its stages start; PreflightError on the first problem."""
    check_model(cfg.inference.model, cfg.inference.backend)
    p = cfg.preprocess
    if p.mode == "template" and not Path(p.template).is_file():
        raise PreflightError(f"preprocess.template: {p.template} not found; run calibrate_line to make it, or fix "
                             "the path (relative paths are read from the config's folder)")
    if results:
        check_writable(Path(results).parent, "--results: folder")
        if Path(results).exists() and not os.access(results, os.W_OK):
            raise PreflightError(f"--results: {results} is not writable; fix its permissions or choose another file")
    if cfg.sinks.overlays_dir:
        check_writable(cfg.sinks.overlays_dir, "overlays folder")
    if cfg.sinks.http.enabled:
        check_writable(cfg.sinks.http.spool_dir, "sinks.http.spool_dir")
        from pipeline.sinks.http import env_headers

        env_headers(cfg.sinks.http.headers_env)
        if cfg.sinks.http.ca_bundle and not Path(cfg.sinks.http.ca_bundle).is_file():
            raise PreflightError(f"sinks.http.ca_bundle: {cfg.sinks.http.ca_bundle} not found (a PEM file of CA "
                                 "certificates)")
