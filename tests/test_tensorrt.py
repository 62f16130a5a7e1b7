"""The TensorRT path without a GPU: build plans and whole builds against recorded descriptions of
TensorRT 10 and 11 (tests/trt_standin.py), the backend's bindings against ONNX Runtime's outputs,
CUDA error reporting, and the fp16 graph the builds parse.

On a machine with TensorRT and a GPU, tests/test_gpu.py builds and runs real engines."""
from __future__ import annotations

import json
import shutil
import types
from pathlib import Path

import numpy as np
import pytest

from engines.artifact import ModelMeta
from engines.backends import load_backend
from engines.tensorrt_api import TrtApi, plan_build
from engines.tensorrt_build import build_engine
from tests.trt_standin import FakeCuda, make_tensorrt

API_DIR = Path(__file__).parent / "data" / "tensorrt_api"
TRT10, TRT11 = (TrtApi.load(API_DIR / name) for name in ("tensorrt-10.13.json", "tensorrt-11.4.json"))


def test_recorded_apis_differ_where_tensorrt_11_removed_weak_typing():
    assert {"FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"} <= TRT10.builder_flags
    assert not {"FP16", "INT8", "PREFER_PRECISION_CONSTRAINTS"} & TRT11.builder_flags
    assert TRT10.implicit_int8 and not TRT11.implicit_int8


@pytest.mark.parametrize("api", [TRT10, TRT11], ids=["10", "11"])
def test_plans_are_strongly_typed_with_precision_from_the_graph(api):
    assert plan_build(api, "fp16", "fp32", None) == plan_build(api, "fp16", "fp32", None)
    fp16 = plan_build(api, "fp16", "fp32", None)
    assert fp16.graph == "fp16" and fp16.strongly_typed and fp16.builder_flags == ()
    assert plan_build(api, "fp32", "fp32", None).graph == "fp32"
    explicit = plan_build(api, "int8", "int8", "tensorrt")
    assert explicit.route == "explicit" and explicit.graph == "qdq" and explicit.builder_flags == ()
    with pytest.raises(ValueError, match="--target tensorrt"):
        plan_build(api, "int8", "int8", "onnxruntime")
    with pytest.raises(ValueError, match="--precision int8"):
        plan_build(api, "fp16", "int8", "tensorrt")


def test_implicit_int8_only_where_the_calibrator_api_exists():
    plan = plan_build(TRT10, "int8", "fp32", None)
    assert plan.route == "implicit" and {"FP16", "INT8"} <= set(plan.builder_flags) and plan.pin_memory_fp32
    with pytest.raises(ValueError, match="removed in TensorRT 11.*quantize"):
        plan_build(TRT11, "int8", "fp32", None)
    with pytest.raises(ValueError, match="not supported"):
        plan_build(TrtApi("12.0.0", frozenset(), frozenset(), frozenset()), "fp16", "fp32", None)


def _graph_types(graph) -> tuple[set, set]:
    """(element types of the Conv weights before the output head, element types of the tile
    memories' MatMul inputs)."""
    from onnx import shape_inference

    graph = shape_inference.infer_shapes(graph)
    types_ = {v.name: v.type.tensor_type.elem_type for v in [*graph.graph.value_info, *graph.graph.input]}
    types_.update({i.name: i.data_type for i in graph.graph.initializer})
    conv = {types_[n.input[1]] for n in graph.graph.node if n.op_type == "Conv" and not n.name.startswith("/out_conv/")}
    memory = {types_.get(i) for n in graph.graph.node if n.op_type == "MatMul" and "memory" in n.name for i in n.input}
    return conv, memory


@pytest.mark.parametrize("api", [TRT10, TRT11], ids=["10", "11"])
def test_fp16_build_parses_an_fp16_graph_and_sets_no_removed_flag(api, trained_model, tmp_path):
    trt = make_tensorrt(api)
    out = build_engine(trained_model, tmp_path / "model.engine", "fp16", max_batch=8, trt=trt, cuda=FakeCuda)
    built = trt.built
    assert built["flags"] == []
    assert built["network_flags"] == 1 << trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED
    conv, memory = _graph_types(built["graph"])
    assert conv == {10} and memory == {1}  # network fp16; tile memories (and output head) fp32
    profile = built["config"]["profiles"][0]
    assert profile.shapes["tiles"] == ((1, 1, 128, 128), (8, 1, 128, 128), (8, 1, 128, 128))
    side = json.loads(Path(str(out) + ".json").read_text())
    assert side["tensorrt_version"] == api.version and side["graph"] == "fp16" and side["strongly_typed"]


def test_implicit_int8_calibrates_at_its_own_batch_with_a_cache_keyed_on_the_graph(trained_model, mini_data,
                                                                                   tmp_path, monkeypatch):
    trt = make_tensorrt(TRT10)
    made = {}

    def calibrator(tiles, batch, cache_file, cuda, trt_module):
        made.update(tiles=len(tiles), batch=batch, cache=cache_file)
        return types.SimpleNamespace(batch=batch)

    from calibration.int8 import calibration_tiles
    from engines.artifact import ModelMeta

    monkeypatch.setattr("engines.int8_calibrator.make_entropy_calibrator", calibrator)
    tiles = calibration_tiles(mini_data, ModelMeta.load(trained_model))
    out = build_engine(trained_model, tmp_path / "e" / "model.engine", "int8", max_batch=256, calib_tiles=tiles,
                       trt=trt, cuda=FakeCuda)
    config = trt.built["config"]
    assert config["int8_calibrator"].batch == made["batch"] == 32
    assert config["calibration_profile"].shapes["tiles"] == ((32, 1, 128, 128),) * 3  # not the opt batch, 256
    assert config["profiles"][0].shapes["tiles"][1] == (256, 1, 128, 128)
    assert {trt.BuilderFlag.FP16, trt.BuilderFlag.INT8} <= set(trt.built["flags"])
    sha = json.loads(Path(str(out) + ".json").read_text())["onnx_sha256"]
    assert made["cache"].parent == out.parent and sha[:16] in made["cache"].name
    assert not (Path(__file__).parents[1] / "calibration" / "cache").exists()


def test_int8_on_tensorrt_11_asks_for_a_qdq_folder(trained_model, tmp_path):
    with pytest.raises(ValueError, match="quantize --model MODEL --calib DIR --target tensorrt"):
        build_engine(trained_model, tmp_path / "m.engine", "int8", trt=make_tensorrt(TRT11), cuda=FakeCuda)


def _engine_folder(trained_model, tmp_path, max_batch: int) -> Path:
    folder = tmp_path / "model"
    shutil.copytree(trained_model, folder)
    build_engine(folder, folder / "model.engine", "fp32", max_batch=max_batch, trt=make_tensorrt(TRT11),
                 cuda=FakeCuda)
    return folder


def test_backend_binds_batches_and_releases_against_real_outputs(trained_model, tmp_path):
    folder = _engine_folder(trained_model, tmp_path, max_batch=4)
    cuda = FakeCuda()
    engine = load_backend("tensorrt", folder, trt=make_tensorrt(TRT11, cuda), cuda=lambda: cuda)
    x = np.random.default_rng(0).normal(0, 1, (10, 1, 128, 128)).astype(np.float32)  # 3 batches: 4, 4, 2
    maps, scores = engine.infer(x)
    ref_maps, ref_scores = load_backend("onnxruntime", trained_model).infer(x)
    assert np.abs(maps - ref_maps).max() < 1e-5 and np.abs(scores - ref_scores).max() < 1e-5
    assert "TensorRT" in engine.device and engine.precision == "fp32"
    allocated = set(cuda.mem)
    engine.close()
    assert cuda.closed and set(cuda.freed) == allocated and not cuda.mem


def test_cuda_graph_replay_and_a_failed_capture_is_reported(trained_model, tmp_path):
    from engines.cuda_rt import CudaError

    folder = _engine_folder(trained_model, tmp_path, max_batch=4)
    x = np.random.default_rng(1).normal(0, 1, (4, 1, 128, 128)).astype(np.float32)
    cuda = FakeCuda()
    graphed = load_backend("tensorrt", folder, trt=make_tensorrt(TRT11, cuda), cuda=lambda: cuda, cuda_graph_batch=4)
    ref = load_backend("onnxruntime", trained_model).infer(x)[0]
    assert np.abs(graphed.infer(x)[0] - ref).max() < 1e-5 and graphed._graph == ("graph", "graph_exec")
    graphed.close()
    broken = FakeCuda(fail_capture=True)
    engine = load_backend("tensorrt", folder, trt=make_tensorrt(TRT11, broken), cuda=lambda: broken,
                          cuda_graph_batch=4)
    with pytest.raises(CudaError, match="StreamCaptureInvalidated"):
        engine.infer(x)


def test_cuda_python_statuses_are_checked():
    from engines.cuda_rt import CudaError, CudaRuntime, checked

    class Status:
        def __init__(self, name):
            self.name = name

    success, failure = Status("cudaSuccess"), Status("cudaErrorMemoryAllocation")
    cudart = types.SimpleNamespace(cudaError_t=types.SimpleNamespace(cudaSuccess=success),
                                   cudaGetErrorString=lambda s: (success, b"out of memory"),
                                   cudaSetDevice=lambda i: (success,),
                                   cudaMalloc=lambda n: (failure, 0) if n > 100 else (success, 1234))
    assert checked(cudart, (success, 7), "x") == 7
    rt = CudaRuntime(cudart)
    assert rt.malloc(10) == 1234
    with pytest.raises(CudaError, match="cudaMalloc failed: cudaErrorMemoryAllocation: out of memory"):
        rt.malloc(1000)


def test_fp16_graph_keeps_the_shipped_models_decisions_on_real_images(tmp_path, ok_images):
    """The graph a TensorRT fp16 build parses, run by ONNX Runtime on the CPU, judged as the
    torch CUDA fp16 path is (tests/fp16_check.py)."""
    from engines.detector import Detector
    from engines.fp16_onnx import fp16_model_bytes
    from tests.fp16_check import SHIPPED, assert_fp16_keeps_decisions

    folder = tmp_path / "fp16"
    shutil.copytree(SHIPPED, folder)
    (folder / "model.onnx").write_bytes(fp16_model_bytes(SHIPPED / "model.onnx"))
    ref = Detector(load_backend("onnxruntime", SHIPPED))
    half = Detector(load_backend("onnxruntime", folder))
    band = Path(__file__).parent / "data" / "uneven_band" / "exp1_num_109232.jpg"
    from engines.data import read_image

    for image in [*ok_images, read_image(band, 1)]:
        assert_fp16_keeps_decisions(ref.predict(image), half.predict(image), ModelMeta.load(SHIPPED).pixel_threshold)
