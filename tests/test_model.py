import pytest

torch = pytest.importorskip("torch")

from engines.ae_ssim import AESSIM  # noqa: E402
from engines.inference_model import inference_module  # noqa: E402
from engines.tiny_unet import TinyUNet, count_macs, count_parameters  # noqa: E402


def test_reference_width_size():
    model = TinyUNet(1, 32)
    assert 4.2e6 < count_parameters(model) < 4.6e6
    assert 2.3e9 < count_macs(model, 1) < 3.0e9


@pytest.mark.parametrize("channels", [1, 3])
@pytest.mark.parametrize("width", [8, 16])
def test_forward_shapes(channels, width):
    model = TinyUNet(channels, width).eval()
    maps, tiles = model(torch.randn(2, channels, 128, 128))
    assert maps.shape == (2, 1, 128, 128) and tiles.shape == (2,)
    assert torch.isfinite(maps).all() and torch.isfinite(tiles).all()


def test_bad_arguments():
    with pytest.raises(ValueError, match="width"):
        TinyUNet(1, 12)
    with pytest.raises(ValueError, match="in_channels"):
        TinyUNet(2, 16)


@pytest.mark.parametrize("arch,model", [("tiny_unet", TinyUNet(1, 8)), ("ae_ssim", AESSIM(1, 8))])
def test_inference_contract(arch, model):
    with torch.no_grad():
        maps, scores = inference_module(arch, model)(torch.randn(3, 1, 128, 128))
    assert maps.shape == (3, 1, 128, 128) and scores.shape == (3,)
    assert float(maps.min()) >= 0.0 and float(maps.max()) <= 1.0


def test_shipped_model_folder_stays_under_20_mb():
    """The size limit for engines/models/magnetic_tile/, its coarse-map network included."""
    from pathlib import Path

    folder = Path(__file__).resolve().parents[1] / "engines" / "models" / "magnetic_tile"
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert {"model.onnx", "model.json", "coarse_map/model.onnx"} <= {str(f.relative_to(folder)) for f in files}
    assert sum(f.stat().st_size for f in files) < 20 * 1000 ** 2
