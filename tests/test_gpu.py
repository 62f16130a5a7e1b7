"""The CUDA paths of the torch backend and of training: fp16, CUDA-graph replay, on-device timing.

Skipped where torch sees no CUDA device (CI); run on a GPU machine with ``pytest tests/test_gpu.py``.
The fp32 CUDA path is held to the 1e-3 parity of test_train_export.py::test_backend_parity_with_torch.
"""
from __future__ import annotations

import numpy as np
import pytest

torch = pytest.importorskip("torch")
if not torch.cuda.is_available():
    pytest.skip("no CUDA device: the GPU paths cannot run here", allow_module_level=True)

from engines.backends import load_backend  # noqa: E402
from tests.fp16_check import assert_fp16_keeps_decisions, shipped_detectors  # noqa: E402

pytestmark = pytest.mark.gpu


def test_cuda_fp16_keeps_the_shipped_models_decisions(ok_images):
    """fp16 against fp32 on the shipped model and real images, judged as tests/fp16_check.py says.
    The scores are nearest-neighbour novelties in a whitened space: well-trained weights keep them
    close; the few-step fixture model's are not (its memory's calibration is very steep), so this is
    judged on the model that ships."""
    ref, fp16 = shipped_detectors("cuda")
    assert fp16.backend.fp16 and fp16.backend.device.startswith("cuda:")
    assert fp16.backend.module.model.memory.bank.dtype == torch.float32
    for image in ok_images:
        assert_fp16_keeps_decisions(ref.predict(image), fp16.predict(image), ref.meta.pixel_threshold)


def test_cuda_graph_replay_follows_its_input(trained_model):
    eager = load_backend("torch", trained_model, device="cuda")
    graphed = load_backend("torch", trained_model, device="cuda", cuda_graph_batch=4)
    rng = np.random.default_rng(1)
    first, second = (rng.normal(0, 1, (4, 1, 128, 128)).astype(np.float32) for _ in range(2))
    for x in (first, second):  # the second call must see new input, not the captured one
        maps, scores = graphed.infer(x)
        ref_maps, ref_scores = eager.infer(x)
        assert np.abs(maps - ref_maps).max() < 1e-3 and np.abs(scores - ref_scores).max() < 1e-3
    assert graphed._graph is not None
    assert np.abs(graphed.infer(first)[0] - graphed.infer(second)[0]).max() > 1e-3
    odd = rng.normal(0, 1, (3, 1, 128, 128)).astype(np.float32)  # other batch sizes run eagerly
    assert graphed.infer(odd)[0].shape == (3, 1, 128, 128)


def test_device_ms_times_compute_alone(trained_model):
    for options in ({}, {"cuda_graph_batch": 8}):
        engine = load_backend("torch", trained_model, device="cuda", **options)
        ms = engine.device_ms(8, calls=10)
        assert ms is not None and 0.0 < ms < 1000.0
    assert load_backend("torch", trained_model, device="cpu").device_ms(8) is None


def test_train_on_cuda_exports_for_cpu(tmp_path, mini_data):
    from engines.export import export_model
    from engines.train import TrainConfig, train

    cfg = TrainConfig(data=str(mini_data), out=str(tmp_path), width=8, epochs=1, steps_per_epoch=3, batch_size=4,
                      warmup_steps=1, workers=0, threads=1, device="cuda")
    train(cfg, progress=False)
    state = torch.load(tmp_path / "last.pt", map_location="cpu", weights_only=True)
    assert state["step"] == 3
    model = export_model(tmp_path / "last.pt", tmp_path / "model")
    maps, scores = load_backend("onnxruntime", model).infer(np.zeros((2, 1, 128, 128), np.float32))
    assert maps.shape == (2, 1, 128, 128) and np.isfinite(scores).all()


def _gpu_backend_or_skip(name: str, model, **options):
    from engines.backends import BackendUnavailable

    try:
        return load_backend(name, model, **options)
    except BackendUnavailable as exc:
        pytest.skip(f"{name}: {exc}")


def test_onnxruntime_cuda_matches_the_cpu(ok_images):
    from tests.fp16_check import SHIPPED

    gpu = _gpu_backend_or_skip("onnxruntime-cuda", SHIPPED)
    cpu = load_backend("onnxruntime", SHIPPED)
    x = gpu.meta.normalise(np.stack([img[:128, :128] for img in ok_images])[:, None])
    (gm, gs), (cm, cs) = gpu.infer(x), cpu.infer(x)
    assert np.abs(gm - cm).max() < 1e-3 and np.abs(gs - cs).max() < 1e-3


@pytest.mark.parametrize("precision", ["fp32", "fp16", "int8"])
def test_tensorrt_builds_and_matches_onnxruntime(precision, tmp_path, mini_data, ok_images):
    """A real engine of the shipped model per precision (int8 from a quantize --target tensorrt
    folder), judged against ONNX Runtime fp32 on real images: fp32 to 1e-3, fp16 and int8 by their
    decisions (tests/fp16_check.py's rule; int8 with the INT8 test's looser map bound)."""
    pytest.importorskip("tensorrt")
    import shutil

    from engines.detector import Detector
    from calibration.int8 import quantize_model
    from engines.tensorrt_build import build_engine
    from tests.fp16_check import SHIPPED, fp16_disagreement

    folder = tmp_path / "model"
    if precision == "int8":
        quantize_model(SHIPPED, mini_data, folder, target="tensorrt")
    else:
        shutil.copytree(SHIPPED, folder)
    build_engine(folder, folder / "model.engine", precision, max_batch=64)
    trt_det = Detector(_gpu_backend_or_skip("tensorrt", folder))
    ref = Detector(load_backend("onnxruntime", SHIPPED))
    for image in ok_images:
        score, flipped, map_diff = fp16_disagreement(ref.predict(image), trt_det.predict(image),
                                                     ref.meta.pixel_threshold)
        print(f"tensorrt {precision}: score diff {score:.2e}, flipped {flipped:.2e}, map max diff {map_diff:.2e}")
        if precision == "fp32":
            assert score < 1e-3 and map_diff < 1e-3
        else:
            assert score < 0.02 and flipped < 2e-3 and map_diff < 0.5
