from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

DATA = Path(__file__).parent / "data" / "magnetic_tile_mini"


@pytest.fixture(scope="session")
def mini_data() -> Path:
    """A few real magnetic-tile images (MVTec layout) bundled with the tests."""
    return DATA


@pytest.fixture(scope="session")
def ok_images() -> list[np.ndarray]:
    from engines.data import read_image

    return [read_image(p, 1) for p in sorted((DATA / "train" / "good").iterdir())]


@pytest.fixture(scope="session")
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


@pytest.fixture(scope="session")
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
