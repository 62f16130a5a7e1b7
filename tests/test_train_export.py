import json
import shutil

import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.backends import BACKENDS, Backend, BackendUnavailable, backend_class, load_backend  # noqa: E402
from engines.export import TENSORRT_NATIVE_OPS, onnx_operators  # noqa: E402
from engines.train import TrainConfig, train  # noqa: E402
from tools import evaluate as evaluate_cli  # noqa: E402
from tools import train as train_cli  # noqa: E402


def test_checkpoint_resume_continues(tmp_path, mini_data):
    cfg = TrainConfig(data=str(mini_data), out=str(tmp_path), width=8, epochs=2, steps_per_epoch=2, batch_size=2,
                      warmup_steps=1, workers=0, threads=1)
    train(cfg, progress=False)
    state = torch.load(tmp_path / "last.pt", weights_only=True)
    assert state["step"] == 4
    cfg.epochs = 3
    train(cfg, resume=True, progress=False)
    assert torch.load(tmp_path / "last.pt", weights_only=True)["step"] == 6
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert (tmp_path / "train_config.json").is_file()
    # the resumed run appends: the first run's memory record (at its last step, 4) is still there,
    # and the memories are fitted again on the weights the resumed run ended with
    assert [r["step"] for r in log if "memory_tiles" in r] == [4, 6]
    assert not torch.equal(state["model"]["memory.bank"],
                           torch.load(tmp_path / "last.pt", weights_only=True)["model"]["memory.bank"])
    train(cfg, resume=True, progress=False)  # nothing left to train: the memories stay as they are
    log = [json.loads(line) for line in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log if "memory_tiles" in r] == [4, 6]
    # the default mix is written out, so the run says what it drew from whatever the default becomes
    assert json.loads((tmp_path / "train_config.json").read_text())["generators"].split(",").count("uneven") == 3


def test_weight_average_follows_the_formula():
    from engines.train import WeightAverage

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.BatchNorm1d(2))
    avg = WeightAverage(net, decay=0.9)
    start = net[0].weight.detach().clone()
    with torch.no_grad():
        net[0].weight.add_(1.0)
    net[1].num_batches_tracked += 5
    avg.update(net, step=100)  # the ramp (101/110) is above 0.9, so 0.9 applies
    assert torch.allclose(avg.state["0.weight"], start + 0.1)
    assert int(avg.state["1.num_batches_tracked"]) == 5  # counters are copied, not averaged
    with pytest.raises(ValueError, match="--ema"):
        WeightAverage(net, decay=1.0)


def test_ema_run_exports_the_average_and_resumes(tmp_path, mini_data):
    from engines.export import export_model

    cfg = TrainConfig(data=str(mini_data), out=str(tmp_path / "run"), width=8, epochs=1, steps_per_epoch=3,
                      batch_size=2, warmup_steps=1, workers=0, threads=1, ema=0.5)
    train(cfg, progress=False)
    state = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    name = "inc.0.weight" if "inc.0.weight" in state["raw_model"] else next(iter(state["raw_model"]))
    assert not torch.equal(state["model"][name], state["raw_model"][name])  # the average, not the last step
    assert torch.equal(state["model"][name], state["ema"][name])
    assert "memory.bank" in state["model"] and "memory.bank" not in state["raw_model"]
    cfg.epochs = 2
    train(cfg, resume=True, progress=False)  # continues from the raw weights, the average from its own state
    state2 = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert state2["step"] == 6 and not torch.equal(state2["ema"][name], state["ema"][name])
    model_dir = export_model(tmp_path / "run" / "last.pt", tmp_path / "model", progress=False)
    assert json.loads((model_dir / "model.json").read_text())["extra"]["train_steps"] == 6


def test_exported_graph_stays_tensorrt_native(trained_model):
    ops = onnx_operators(trained_model / "model.onnx")
    assert ops <= TENSORRT_NATIVE_OPS, ops - TENSORRT_NATIVE_OPS
    assert "BatchNormalization" not in ops  # folded into the convolutions at export


def test_ae_ssim_baseline_exports_for_reports(tmp_path):
    from engines.artifact import ModelMeta
    from engines.export import export_untrained

    out = export_untrained("ae_ssim", 8, 1, tmp_path / "ae")
    meta = ModelMeta.load(out)
    assert meta.arch == "ae_ssim" and meta.extra["tensorrt_native"] is False and meta.extra["non_tensorrt_ops"]
    assert meta.extra["onnx_vs_torch_max_abs_diff"] < 1e-3
    maps, scores = load_backend("onnxruntime", out).infer(np.zeros((2, 1, 128, 128), np.float32))
    assert maps.shape == (2, 1, 128, 128) and scores.shape == (2,)


def test_every_backend_implements_the_interface():
    for name in BACKENDS:
        assert issubclass(backend_class(name), Backend), name


@pytest.mark.parametrize("name", ["onnxruntime", "torch"])
def test_backend_parity_with_torch(name, trained_model):
    """The backends that run on any machine agree with the torch CPU reference (max abs diff < 1e-3).
    Torch runs in fp32 on whatever device it finds (CUDA on a GPU machine); its fp16 path, and the
    GPU-only backends (onnxruntime-cuda, tensorrt), are in test_gpu.py and test_tensorrt.py."""
    try:
        engine = load_backend(name, trained_model, **({"fp16": False} if name == "torch" else {}))
    except BackendUnavailable as exc:
        pytest.skip(f"{name}: {exc}")
    reference = load_backend("torch", trained_model, device="cpu")
    x = np.random.default_rng(0).normal(0, 1, (5, 1, 128, 128)).astype(np.float32)
    maps, scores = engine.infer(x)
    ref_maps, ref_scores = reference.infer(x)
    assert maps.shape == (5, 1, 128, 128) and scores.shape == (5, 2)  # novelty vs the fine and the coarse memory
    assert np.abs(maps - ref_maps).max() < 1e-3
    assert np.abs(scores - ref_scores).max() < 1e-3


def test_coarse_map_network_is_a_model_folder_the_backends_open_beside_the_model(trained_model, coarse_map_model):
    """export_model --coarse-map writes the half-scale run's network (no memories) as MODEL/coarse_map/;
    the model's own graph is unchanged; every backend opens the coarse-map network as its
    ``coarse_map``, which maps tiles as that run's network does (torch and ONNX Runtime agree)."""
    from engines.artifact import ModelMeta
    from engines.export import load_checkpoint

    x = np.random.default_rng(1).normal(0, 1, (4, 1, 128, 128)).astype(np.float32)
    plain = load_backend("onnxruntime", trained_model)
    ort_engine = load_backend("onnxruntime", coarse_map_model)
    torch_engine = load_backend("torch", coarse_map_model, device="cpu")
    assert plain.coarse_map is None and ort_engine.coarse_map is not None and torch_engine.coarse_map is not None
    for a, b in zip(ort_engine.infer(x), plain.infer(x)):
        np.testing.assert_allclose(a, b, atol=1e-6)
    half_maps, _ = ort_engine.coarse_map.infer(x)
    net, _ = load_checkpoint(coarse_map_model.parent / "last.pt")
    with torch.no_grad():
        half_ref = torch.sigmoid(net(torch.from_numpy(x))[0]).numpy()
    np.testing.assert_allclose(half_maps, half_ref, atol=1e-4)
    assert np.abs(torch_engine.coarse_map.infer(x)[0] - half_maps).max() < 1e-3
    assert np.abs(half_maps - plain.infer(x)[0]).max() > 1e-3  # two different networks
    meta, sub = ModelMeta.load(coarse_map_model), ModelMeta.load(coarse_map_model / "coarse_map")
    assert meta.coarse_map_weight == 0.25 and meta.coarse_scale == 0.5
    assert (sub.width, sub.coarse_scale, sub.extra["image_scale"], sub.extra["train_steps"]) == (8, 0.0, 0.5, 3)
    assert meta.map_blur_sigma == 2.0 and sub.map_blur_sigma == 0.0  # its tile maps are read, not a finished map
    assert onnx_operators(coarse_map_model / "coarse_map" / "model.onnx") <= TENSORRT_NATIVE_OPS


def test_from_model_refits_memories_and_keeps_the_rest(tmp_path, trained_model, coarse_map_model, mini_data, capsys):
    """export_model --from-model MODEL --memory-data OK_IMAGES: the folder's network re-exported with
    memories fitted again (train fitted them on the same images, so they come out the same), its
    thresholds, image-score rule, map rule, coarse-map network and weight kept, also in place; the thresholds are
    said to need setting again. --checkpoint with --from-model is refused."""
    import torch

    from engines.artifact import ModelMeta
    from engines.export import copy_model
    from tools import export_model as export_cli

    src = copy_model(coarse_map_model, tmp_path / "src")
    meta = ModelMeta.load(src)
    meta.pixel_threshold, meta.image_threshold, meta.coarse_map_weight, meta.fine_top_k = 0.123, 0.456, 0.3, 2
    meta.fine_map_share, meta.coarse_map_share, meta.both_scales_map_share = 0.004, 0.005, 0.006
    meta.both_scales_score_weight, meta.map_blur_sigma = 0.25, 1.5
    meta.save(src)
    out = tmp_path / "out"
    assert export_cli.main(["--from-model", str(src), "--memory-data", str(mini_data), "--out", str(out)]) == 0
    assert "evaluate --set-thresholds" in capsys.readouterr().err
    new = ModelMeta.load(out)
    assert (new.pixel_threshold, new.image_threshold, new.coarse_map_weight, new.fine_top_k) == (0.123, 0.456, 0.3, 2)
    assert (new.fine_map_share, new.coarse_map_share, new.both_scales_map_share) == (0.004, 0.005, 0.006)
    assert (new.both_scales_score_weight, new.map_blur_sigma) == (0.25, 1.5)
    assert new.training_command == meta.training_command and new.extra["train_steps"] == meta.extra["train_steps"]
    assert new.extra["memory_data"] == str(mini_data)
    x = np.random.default_rng(3).normal(0, 1, (4, 1, 128, 128)).astype(np.float32)
    got, want = load_backend("onnxruntime", out), load_backend("onnxruntime", coarse_map_model)
    for a, b in zip(got.infer(x), want.infer(x)):  # the same up to float rounding (threads, fp16 banks)
        np.testing.assert_allclose(a, b, atol=1e-4)
    np.testing.assert_allclose(got.coarse_map.infer(x)[0], want.coarse_map.infer(x)[0], atol=1e-6)
    # In place: the coarse-map network is kept although the export clears OUT's coarse_map/ first.
    assert export_cli.main(["--from-model", str(src), "--memory-data", str(mini_data), "--out", str(src)]) == 0
    assert ModelMeta.load(src).coarse_map_weight == 0.3
    np.testing.assert_allclose(load_backend("onnxruntime", src).coarse_map.infer(x)[0], want.coarse_map.infer(x)[0],
                               atol=1e-6)
    assert torch.equal(torch.load(src / "model.pt", weights_only=True)["memory.bank"],
                       torch.load(out / "model.pt", weights_only=True)["memory.bank"])
    capsys.readouterr()
    assert export_cli.main(["--from-model", str(src), "--checkpoint", str(trained_model.parent / "last.pt"),
                            "--memory-data", str(mini_data), "--out", str(tmp_path / "y")]) == 2
    assert "not both" in capsys.readouterr().err


def test_from_model_sets_the_map_blur(tmp_path, trained_model, capsys):
    """export_model --from-model MODEL --map-blur-sigma PX: a copy of the folder whose sidecar alone
    changes (the pixel threshold said to need setting again); a sigma out of range is refused with
    the range and the default."""
    import filecmp

    from engines.artifact import ModelMeta
    from tools import export_model as export_cli

    out = tmp_path / "out"
    assert export_cli.main(["--from-model", str(trained_model), "--map-blur-sigma", "3", "--out", str(out)]) == 0
    err = capsys.readouterr().err
    assert "sigma 3 px" in err and "evaluate --set-thresholds" in err
    old, new = ModelMeta.load(trained_model), ModelMeta.load(out)
    assert new == old.__class__(**{**old.__dict__, "map_blur_sigma": 3.0})
    assert all(filecmp.cmp(trained_model / f, out / f, shallow=False) for f in ("model.onnx", "model.pt"))
    assert export_cli.main(["--from-model", str(trained_model), "--map-blur-sigma", "-1", "--out", str(tmp_path / "b")]) == 2
    assert "from 0 to 32" in capsys.readouterr().err and not (tmp_path / "b").exists()  # refused before any copy


def test_from_model_adds_a_coarse_map_to_a_copy(tmp_path, trained_model, coarse_map_model, capsys):
    """export_model --from-model MODEL --coarse-map RUN/last.pt: a copy of the folder (thresholds,
    memories, provenance as they were) with the coarse-map network added; a run at the wrong scale,
    a missing --coarse-map, a weight of 0 and a folder whose coarse_map/ went missing are refused
    naming the fix."""
    from engines.artifact import ArtifactError, ModelMeta
    from engines.export import copy_model
    from tools import export_model as export_cli

    src = copy_model(trained_model, tmp_path / "src")
    meta = ModelMeta.load(src)
    meta.pixel_threshold, meta.image_threshold = 0.123, 0.456
    meta.save(src)
    half_run = str(coarse_map_model.parent / "last.pt")
    out = tmp_path / "out"
    assert export_cli.main(["--from-model", str(src), "--coarse-map", half_run, "--out", str(out),
                            "--coarse-map-weight", "0.5"]) == 0
    assert "evaluate --set-thresholds" in capsys.readouterr().err
    new = ModelMeta.load(out)
    assert new == meta.__class__(**{**meta.__dict__, "coarse_map_weight": 0.5})
    assert ModelMeta.load(src).coarse_map_weight == 0.0 and not (src / "coarse_map").exists()
    x = np.random.default_rng(2).normal(0, 1, (3, 1, 128, 128)).astype(np.float32)
    got, want = load_backend("onnxruntime", out), load_backend("onnxruntime", coarse_map_model)
    np.testing.assert_allclose(got.coarse_map.infer(x)[0], want.coarse_map.infer(x)[0], atol=1e-6)
    full_scale_run = str(trained_model.parent / "last.pt")
    assert export_cli.main(["--from-model", str(src), "--coarse-map", full_scale_run, "--out", str(tmp_path / "b")]) == 2
    assert "train --image-scale 0.5" in capsys.readouterr().err
    assert export_cli.main(["--from-model", str(src), "--out", str(tmp_path / "c")]) == 2
    assert "--coarse-map" in capsys.readouterr().err
    assert export_cli.main(["--from-model", str(src), "--coarse-map", half_run, "--out", str(tmp_path / "d"),
                            "--coarse-map-weight", "0"]) == 2
    assert "above 0" in capsys.readouterr().err
    shutil.rmtree(out / "coarse_map")
    with pytest.raises(ArtifactError, match="coarse_map is missing; add it"):
        load_backend("onnxruntime", out)
    # A new export into a folder leaves no coarse-map network of an earlier one behind.
    from engines.export import export_model

    again = export_model(trained_model.parent / "last.pt", tmp_path / "again", coarse_map=half_run)
    assert (again / "coarse_map").is_dir()
    export_model(trained_model.parent / "last.pt", again)
    assert not (again / "coarse_map").exists() and ModelMeta.load(again).coarse_map_weight == 0.0


def test_fp16_keeps_the_shipped_models_decisions_on_cpu(ok_images):
    """The fp16 numerics the CUDA path serves, checked where CI runs: torch's CPU fp16 reproduces the
    H100's differences on these images (map 2.41e-2 against 2.36e-2, score 2.18e-3 against 2.21e-3 on
    the worst one, 2026-11-27), so a change that breaks fp16 fails here, not only on a GPU.
    One image, the one fp16 moves most (fp16 convolutions are slow on a CPU)."""
    from tests.fp16_check import assert_fp16_keeps_decisions, shipped_detectors

    ref, fp16 = shipped_detectors("cpu")
    assert fp16.backend.precision == "fp16"
    image = ok_images[1]  # exp1_num_306586.jpg
    assert_fp16_keeps_decisions(ref.predict(image), fp16.predict(image), ref.meta.pixel_threshold)


def test_backend_rejects_wrong_shape(trained_model):
    engine = load_backend("onnxruntime", trained_model)
    with pytest.raises(ValueError, match=r"expected \(N, 1, 128, 128\)"):
        engine.infer(np.zeros((2, 3, 128, 128), np.float32))


def test_evaluate_cli_writes_metrics_plots_overlays(tmp_path, trained_model, mini_data):
    out = tmp_path / "eval"
    assert evaluate_cli.main(["--model", str(trained_model), "--data", str(mini_data), "--out", str(out)]) == 0
    result = json.loads((out / "metrics.json").read_text())
    for key in ("image_auroc", "pixel_auroc", "aupro", "pixel_f1", "ms_per_tile"):
        assert isinstance(result[key], float), key
    assert set(result["per_type"]) == {"blowhole", "break", "crack"}
    halves = result["halves"]  # the even- and odd-numbered images, together all of them
    assert halves["even"]["n_images"] + halves["odd"]["n_images"] == result["n_images"]
    assert halves["even"]["n_defective"] + halves["odd"]["n_defective"] == result["n_defective"]
    assert all(0.0 <= h["pixel_auroc"] <= 1.0 for h in halves.values())
    assert 0.0 <= result["pixel_auroc"] <= 1.0 and result["ms_per_tile"] > 0
    assert (out / "roc_pr.png").stat().st_size > 1000
    assert len(list((out / "overlays").glob("*.png"))) == 6 + 3
    (out / "overlays" / "07_missed_crack_from_an_older_run.png").write_bytes(b"stale")
    (out / "overlays" / "notes.png").write_bytes(b"someone's own file")
    assert evaluate_cli.main(["--model", str(trained_model), "--data", str(mini_data), "--out", str(out)]) == 0
    names = {p.name for p in (out / "overlays").glob("*.png")}
    assert len(names) == 6 + 3 + 1 and "notes.png" in names  # stale worst cases gone, other files kept


def test_evaluate_flip_tta_moves_the_maps_not_the_image_scores(tmp_path, trained_model, mini_data):
    plain, tta = tmp_path / "plain", tmp_path / "tta"
    assert evaluate_cli.main(["--model", str(trained_model), "--data", str(mini_data), "--out", str(plain)]) == 0
    assert evaluate_cli.main(["--model", str(trained_model), "--data", str(mini_data), "--out", str(tta),
                              "--flip-tta", "--overlap", "0.25"]) == 0
    a, b = (json.loads((d / "metrics.json").read_text()) for d in (plain, tta))
    assert (a["flip_tta"], b["flip_tta"]) == ("none", "h")
    assert b["image_auroc"] == a["image_auroc"]
    assert b["pixel_auroc"] != a["pixel_auroc"]


def test_train_cli_empty_folder_is_a_clear_error(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    code = train_cli.main(["--data", str(tmp_path / "empty"), "--out", str(tmp_path / "run")])
    err = capsys.readouterr().err
    assert code == 2 and "no images found" in err and str(tmp_path / "empty") in err


def test_train_cli_unknown_generator_is_named(tmp_path, mini_data, capsys):
    code = train_cli.main(["--data", str(mini_data), "--out", str(tmp_path / "run"), "--generators", "bezier_blob,blobs"])
    err = capsys.readouterr().err
    assert code == 2 and "--generators" in err and "blobs" in err and "uneven" in err  # names the valid ones
    assert not (tmp_path / "run").exists()  # refused before anything was written


def test_generators_reach_the_samples(tmp_path, mini_data):
    from engines.train_data import SampleConfig, load_images, make_sample
    from engines.data import training_images

    cfg = TrainConfig(data=str(mini_data), out=str(tmp_path), width=8, epochs=1, steps_per_epoch=1, batch_size=2,
                      warmup_steps=1, workers=0, threads=1, generators="uneven", memory=False)
    train(cfg, progress=False)
    assert json.loads((tmp_path / "train_config.json").read_text())["generators"] == "uneven"
    cfg.epochs, cfg.generators = 2, ""  # resuming with another mix (here the default) is refused, naming the fix
    with pytest.raises(ValueError, match="resume with --generators uneven"):
        train(cfg, resume=True, progress=False)
    images = load_images(training_images(mini_data), 1, 128)
    rng = np.random.default_rng(0)
    names = {make_sample(rng, images, SampleConfig(generators=("uneven",), defect_prob=1.0), (0.5, 1.0))[3]
             for _ in range(12)}
    assert names <= {"uneven", "none"} and "uneven" in names


def test_image_scale_trains_on_downscaled_images_as_the_coarse_pass_sees_them(tmp_path, mini_data, capsys):
    """--image-scale S loads every training image as pipeline.vision.tiling.downscale makes it (the
    coarse pass's own resampling), records S, refuses a resume at another scale and a factor out of
    (0, 1] before anything is written."""
    from engines.data import read_image, training_images
    from engines.train_data import load_images
    from pipeline.vision.tiling import downscale

    files = training_images(mini_data)
    full = read_image(files[0], 1)
    half = load_images(files[:1], 1, 64, 0.5)[0]
    assert np.array_equal(half, downscale(full, 0.5)) and half.shape[0] < full.shape[0]
    out = tmp_path / "run"
    assert train_cli.main(["--data", str(mini_data), "--out", str(out), "--width", "8", "--epochs", "1",
                           "--steps-per-epoch", "1", "--batch-size", "2", "--workers", "0", "--threads", "1",
                           "--no-memory", "--image-scale", "0.5"]) == 0
    saved = json.loads((out / "train_config.json").read_text())
    assert saved["image_scale"] == 0.5 and "--image-scale 0.5" in saved["command"]
    cfg = TrainConfig(data=str(mini_data), out=str(out), width=8, epochs=2, steps_per_epoch=1, batch_size=2,
                      warmup_steps=1, workers=0, threads=1, memory=False, generators=saved["generators"])
    with pytest.raises(ValueError, match="--image-scale 0.5, but 1.0 was asked"):
        train(cfg, resume=True, progress=False)
    assert train_cli.main(["--data", str(mini_data), "--out", str(tmp_path / "bad"), "--image-scale", "1.5"]) == 2
    assert "--image-scale" in capsys.readouterr().err and not (tmp_path / "bad").exists()


def test_corrupt_image_named(tmp_path, mini_data, capsys):
    data = tmp_path / "data"
    shutil.copytree(mini_data / "train" / "good", data)
    (data / "zz_broken.png").write_bytes(b"not a png")
    code = train_cli.main(["--data", str(data), "--out", str(tmp_path / "run"), "--epochs", "1"])
    err = capsys.readouterr().err
    assert code == 2 and "zz_broken.png" in err and "not a readable image" in err


def test_mask_size_mismatch_named(tmp_path, trained_model, mini_data, capsys):
    data = tmp_path / "data"
    shutil.copytree(mini_data, data)
    mask = next((data / "ground_truth" / "crack").iterdir())
    import cv2

    cv2.imwrite(str(mask), np.zeros((10, 10), np.uint8))
    code = evaluate_cli.main(["--model", str(trained_model), "--data", str(data), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and mask.name in err and "must have the image's size" in err


def test_budget_warning_projects_the_run_and_names_the_epochs_that_fit():
    from engines.train import TrainConfig, budget_warning, uses_default_schedule

    # The reference run at the end of epoch 4: 473 s passed, 0.471 s per step since epoch 1, 4,500
    # steps and 42 s of memories left: 43.9 minutes (it took 44.3), no warning.
    assert budget_warning(0.471, 4500, 473.3, 42.0, 250) is None
    # The second reference run projected 43.1 minutes (it took 45.2): no warning; 45.6 minutes: a warning.
    assert budget_warning(0.46, 4500, 475.8, 42.0, 250) is None
    assert budget_warning(0.49, 4500, 490.0, 42.0, 250) is not None
    # A machine 20 % slower: 568 + 4500 x 0.565 + 42 s = 52.5 minutes; 18 epochs of 250 steps fit.
    line = budget_warning(0.565, 4500, 568.0, 42.0, 250)
    assert line is not None and "about 53 minutes" in line and "--epochs 18 would fit" in line
    assert "not even one epoch" in budget_warning(20.0, 4500, 5000.0, 42.0, 250)
    assert uses_default_schedule(TrainConfig(data="d", out="o"))
    assert not uses_default_schedule(TrainConfig(data="d", out="o", epochs=30))


def test_default_cpu_run_warns_once_when_it_would_overshoot(tmp_path, mini_data, monkeypatch, capsys):
    import engines.train as train_mod

    monkeypatch.setattr(train_mod, "uses_default_schedule", lambda cfg: True)  # a tiny run stands in for the default
    monkeypatch.setattr(train_mod, "CPU_DEFAULT_BUDGET_S", 1e-3)
    cfg = train_mod.TrainConfig(data=str(mini_data), out=str(tmp_path / "run"), width=8, epochs=6, steps_per_epoch=1,
                                batch_size=2, warmup_steps=1, workers=0, threads=1, memory=False, device="cpu")
    train_mod.train(cfg, progress=False)
    captured = capsys.readouterr()
    out = captured.out + captured.err
    assert out.count("more than the 0 minutes the defaults are sized for") == 1  # once, at PROJECT_AT_EPOCH
    assert "not even one epoch fits" in out or "--epochs" in out


def test_bf16_on_a_cpu_without_native_bf16_says_it_will_be_slow():
    from engines.train import cpu_has_native_bf16, precision_note

    zen4 = "processor\t: 0\nflags\t\t: fpu sse2 avx2 avx512f avx512_bf16 avx512bw\n"
    zen2 = "processor\t: 0\nflags\t\t: fpu sse2 avx2\n"
    sapphire = "flags\t\t: avx512f amx_bf16 amx_tile\n"
    assert cpu_has_native_bf16(zen4) and cpu_has_native_bf16(sapphire) and not cpu_has_native_bf16(zen2)
    assert "emulated" in precision_note("bf16", "cpu", zen2)
    assert precision_note("bf16", "cpu", zen4) is None and precision_note("bf16", "cuda", zen2) is None
    assert precision_note("fp32", "cpu", zen2) is None
    with pytest.raises(ValueError, match="--precision"):
        precision_note("fp16", "cpu", zen4)


def test_bf16_run_records_its_precision_and_exports_a_working_model(tmp_path, mini_data):
    """A few bf16 autocast steps (emulated where the CPU has no native bf16): the weights stay fp32,
    the config says what was trained, and the export serves finite maps and scores."""
    import torch

    cfg = TrainConfig(data=str(mini_data), out=str(tmp_path / "run"), width=8, epochs=1, steps_per_epoch=3,
                      batch_size=2, warmup_steps=1, workers=0, threads=1, memory=False, device="cpu",
                      precision="bf16")
    out = train(cfg, progress=False)
    assert json.loads((out / "train_config.json").read_text())["precision"] == "bf16"
    state = torch.load(out / "last.pt", map_location="cpu", weights_only=True)
    assert state["config"]["precision"] == "bf16"
    assert all(v.dtype == torch.float32 for v in state["model"].values() if v.is_floating_point())
    from engines.export import export_model

    model_dir = export_model(out / "last.pt", tmp_path / "model")
    maps, scores = load_backend("onnxruntime", model_dir).infer(np.zeros((2, 1, 128, 128), np.float32))
    assert np.isfinite(maps).all() and np.isfinite(scores).all()


def test_bf16_keeps_the_first_and_last_blocks_fp32():
    """Under bf16 autocast the high-gain first block and the logits' convolution still compute in fp32;
    the blocks between run in bf16 (where the speed comes from), and the state dict is unchanged."""
    import torch

    from engines.inference_model import build_model
    from engines.train import keep_blocks_fp32

    model = build_model("tiny_unet", 1, 8)
    keys = list(model.state_dict())
    keep_blocks_fp32(model, "cpu")
    seen = {}
    for name in ("inc", "down1", "up4", "out_conv"):
        getattr(model, name).register_forward_hook(lambda _m, _i, out, name=name: seen.__setitem__(name, out.dtype))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        map_logits, _ = model(torch.randn(2, 1, 128, 128))
    assert seen == {"inc": torch.float32, "down1": torch.bfloat16, "up4": torch.bfloat16, "out_conv": torch.float32}
    assert map_logits.dtype == torch.float32 and list(model.state_dict()) == keys


def test_init_starts_from_the_given_weights(tmp_path, mini_data, trained_model):
    """``--init`` loads a model folder's network (not its memories) with a fresh optimizer: at a
    learning rate too small to move them, the run ends where the weights it started from were."""
    from engines.artifact import ModelMeta
    from engines.export import export_model

    torch = pytest.importorskip("torch")
    start = {k: v for k, v in torch.load(trained_model / "model.pt", weights_only=True).items()
             if k.endswith("weight") and "memory" not in k}
    origin = shutil.copytree(trained_model, tmp_path / "origin")
    meta = ModelMeta.load(origin)
    meta.training_command = "train --data GOOD --out first"
    meta.save(origin)
    cfg = TrainConfig(data=str(mini_data), out=str(tmp_path / "ft"), width=8, epochs=1, steps_per_epoch=2,
                      batch_size=2, lr=1e-9, warmup_steps=1, workers=0, threads=1, memory=False,
                      init=str(origin), command="train --init origin --out ft")
    train(cfg, progress=False)
    tuned = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    assert max(float((tuned[k] - v).abs().max()) for k, v in start.items()) < 1e-6
    run = json.loads((tmp_path / "ft" / "train_config.json").read_text())
    assert run["init"] == str(origin) and run["init_command"] == "train --data GOOD --out first"
    # the exported sidecar names what the fine-tune started from, and a re-export keeps it
    folder = export_model(tmp_path / "ft" / "last.pt", tmp_path / "m_ft", progress=False)
    assert ModelMeta.load(folder).extra["init_training_command"] == "train --data GOOD --out first"
    assert ModelMeta.load(export_model(folder, tmp_path / "m_again", progress=False)).extra == \
        {**ModelMeta.load(folder).extra, "onnx_vs_torch_max_abs_diff": pytest.approx(0, abs=1e-3)}
    # a fine-tune of the fine-tune (from its checkpoint) names both
    train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "ft2"), "init": str(tmp_path / "ft" / "last.pt")}),
          progress=False)
    assert json.loads((tmp_path / "ft2" / "train_config.json").read_text())["init_command"] == \
        "train --init origin --out ft (started from: train --data GOOD --out first)"
    fresh = TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "fresh"), "init": "", "seed": 1})
    train(fresh, progress=False)
    other = torch.load(tmp_path / "fresh" / "last.pt", weights_only=True)["model"]
    assert max(float((other[k] - v).abs().max()) for k, v in start.items()) > 1e-2  # a fresh start is elsewhere


def test_freeze_encoder_keeps_the_encoder_and_trains_the_rest(tmp_path, mini_data, trained_model):
    """--freeze-encoder: the encoder's weights and BatchNorm statistics stay as --init gave them (so
    the tile memories' embedding does not move), the decoder learns; without --init it is refused."""
    from engines.train import ENCODER

    start = torch.load(trained_model / "model.pt", weights_only=True)
    cfg = TrainConfig(data=str(mini_data), out=str(tmp_path / "ft"), width=8, epochs=1, steps_per_epoch=3,
                      batch_size=2, lr=1e-2, warmup_steps=1, workers=0, threads=1, memory=False, ema=0.9,
                      init=str(trained_model), freeze_encoder=True)
    train(cfg, progress=False)
    tuned = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)["model"]
    encoder = [k for k in tuned if k.split(".", 1)[0] in ENCODER]
    assert any("running_mean" in k for k in encoder)
    assert all(torch.equal(tuned[k], start[k]) for k in encoder)
    assert max(float((tuned[k] - start[k]).abs().max()) for k in tuned
               if k.startswith("up1.") and tuned[k].is_floating_point()) > 1e-4
    with pytest.raises(ValueError, match="give --init"):
        train(TrainConfig(**{**cfg.__dict__, "out": str(tmp_path / "b"), "init": ""}), progress=False)
    # a frozen run resumes frozen (--resume without --init), and only so
    more = TrainConfig(**{**cfg.__dict__, "init": "", "epochs": 2})
    with pytest.raises(ValueError, match="resume with --freeze-encoder"):
        train(TrainConfig(**{**more.__dict__, "freeze_encoder": False}), resume=True, progress=False)
    train(more, resume=True, progress=False)
    resumed = torch.load(tmp_path / "ft" / "last.pt", weights_only=True)
    assert resumed["step"] == 6 and all(torch.equal(resumed["model"][k], start[k]) for k in encoder)


def test_export_averages_fine_tunes_of_one_network(tmp_path, mini_data, trained_model, capsys):
    """export_model --checkpoint A B: two seeds of a --freeze-encoder fine-tune averaged weight by
    weight; the encoder stays the shared one, the sidecar names both runs and their start. Runs
    that do not start from the same weights are refused, naming the file."""
    from engines.artifact import ModelMeta
    from tools import export_model as export_cli

    runs = []
    for seed in (0, 1):
        cfg = TrainConfig(data=str(mini_data), out=str(tmp_path / f"s{seed}"), width=8, epochs=1, steps_per_epoch=2,
                          batch_size=2, lr=1e-2, warmup_steps=1, workers=0, threads=1, memory=False, seed=seed,
                          init=str(trained_model), freeze_encoder=True, command=f"train seed {seed}")
        train(cfg, progress=False)
        runs.append(tmp_path / f"s{seed}" / "last.pt")
    assert export_cli.main(["--checkpoint", *map(str, runs), "--out", str(tmp_path / "avg")]) == 0
    a, b = (torch.load(r, weights_only=True)["model"] for r in runs)
    got = torch.load(tmp_path / "avg" / "model.pt", weights_only=True)
    assert torch.allclose(got["up1.conv.0.weight"], (a["up1.conv.0.weight"] + b["up1.conv.0.weight"]) / 2)
    assert not torch.allclose(a["up1.conv.0.weight"], b["up1.conv.0.weight"])  # the seeds did differ
    assert torch.equal(got["inc.0.weight"], a["inc.0.weight"])
    meta = ModelMeta.load(tmp_path / "avg")
    assert meta.training_command == "average of 2 runs: train seed 0 | train seed 1"
    assert meta.extra.get("init_training_command", "") == ModelMeta.load(trained_model).training_command
    scratch = tmp_path / "scratch"
    train(TrainConfig(data=str(mini_data), out=str(scratch), width=8, epochs=1, steps_per_epoch=1, batch_size=2,
                      warmup_steps=1, workers=0, threads=1, memory=False), progress=False)
    capsys.readouterr()
    assert export_cli.main(["--checkpoint", str(scratch / "last.pt"), str(runs[0]), "--out", str(tmp_path / "x")]) == 2
    assert "not a fine-tune" in capsys.readouterr().err
    assert export_cli.main(["--checkpoint", str(runs[0]), str(scratch / "last.pt"), "--out", str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert str(scratch / "last.pt") in err and "its init differs" in err


def test_init_errors_name_the_fix(tmp_path, mini_data, trained_model, capsys):
    base = ["--data", str(mini_data), "--epochs", "1", "--steps-per-epoch", "1", "--batch-size", "2",
            "--workers", "0", "--no-memory"]
    assert train_cli.main(base + ["--out", str(tmp_path / "a"), "--init", str(tmp_path / "none")]) == 2
    assert "needs a checkpoint (last.pt) or a model folder" in capsys.readouterr().err
    assert train_cli.main(base + ["--out", str(tmp_path / "b"), "--init", str(trained_model), "--width", "16"]) == 2
    err = capsys.readouterr().err
    assert str(trained_model) in err and "do not fit" in err and "--width 16" in err
    assert train_cli.main(base + ["--out", str(tmp_path / "c"), "--width", "8"]) == 0
    capsys.readouterr()
    assert train_cli.main(base + ["--out", str(tmp_path / "c"), "--width", "8", "--resume",
                                  "--init", str(trained_model)]) == 2
    assert "drop --init" in capsys.readouterr().err
