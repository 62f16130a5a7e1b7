from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "magnetic_tile_mini"
# The fixtures below are built once for the whole run: tests/ is one package.


@pytest.fixture(scope="package")
def mini_data() -> Path:
    """A few real magnetic-tile images (MVTec layout) bundled with the tests."""
    return DATA


@pytest.fixture(scope="package")
def ok_images() -> list[np.ndarray]:
    from engines.data import read_image

    return [read_image(p, 1) for p in sorted((DATA / "train" / "good").iterdir())]


@pytest.fixture(scope="package")
def trained_model(tmp_path_factory, mini_data) -> Path:
    """A width-8 Tiny-UNet trained for a few steps and exported: a real artifact, not a good model."""
    pytest.importorskip("torch")
    from engines.export import export_model
    from engines.train import TrainConfig, train

    run = tmp_path_factory.mktemp("run")
    cfg = TrainConfig(data=str(mini_data), out=str(run), width=8, epochs=2, steps_per_epoch=3, batch_size=4,
                      warmup_steps=1, workers=0, threads=1)
    train(cfg, progress=False)
    return export_model(run / "last.pt", run / "model")


@pytest.fixture(scope="package")
def coarse_map_model(trained_model, mini_data) -> Path:
    """``trained_model``'s checkpoint exported with a coarse-map network (a width-8 run on the images
    at half scale, a few steps) in ``coarse_map/``: the shipped model's layout."""
    pytest.importorskip("torch")
    from engines.export import export_model
    from engines.train import TrainConfig, train

    run = trained_model.parent / "half_scale_run"
    cfg = TrainConfig(data=str(mini_data), out=str(run), width=8, epochs=1, steps_per_epoch=3, batch_size=4,
                      warmup_steps=1, workers=0, threads=1, memory=False, image_scale=0.5)
    train(cfg, progress=False)
    return export_model(trained_model.parent / "last.pt", run / "model", coarse_map=run / "last.pt")


@pytest.fixture(scope="package")
def line(tmp_path_factory, trained_model, mini_data):
    """A line calibrated on simulated frames of the test parts, and a 10-frame recorded sequence
    (4 OK, 4 NG, 2 empty; every 5th frame file corrupt): (config, sequence folder)."""
    import cv2

    from pipeline.sim import simulate, write_sequence
    from tools import calibrate_line

    root = tmp_path_factory.mktemp("line")
    calib = root / "calib"
    calib.mkdir()
    for i, f in enumerate(simulate(mini_data, n_ok=5, n_ng=0, n_empty=0, seed=11)):
        cv2.imwrite(str(calib / f"{i:02d}.png"), f.frame)
    config = root / "line.yaml"
    assert calibrate_line.main(["--frames", str(calib), "--model", str(trained_model), "--out", str(config)]) == 0
    seq = write_sequence(simulate(mini_data, n_ok=4, n_ng=4, n_empty=2, seed=12), root / "seq", fps=5.0, corrupt_every=5)
    return config, seq


@pytest.fixture
def plc():
    """A real pymodbus server on loopback and a client that reads it, as the PLC: (port, reader)."""
    from pymodbus.client import ModbusTcpClient

    from tests.servers import ModbusServer, free_port

    port = free_port()
    server = ModbusServer(port)  # 64 coils and 64 registers from address 0
    reader = ModbusTcpClient("127.0.0.1", port=port)
    assert reader.connect()
    yield port, reader
    reader.close()
    server.stop()
