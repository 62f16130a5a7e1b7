import numpy as np
import pytest

torch = pytest.importorskip("torch")

from engines.artifact import ModelMeta  # noqa: E402
from engines.backends import load_backend  # noqa: E402
from engines.detector import Detector  # noqa: E402
from pipeline.vision.scoring import split_scores
from pipeline.vision.scoring import image_score  # noqa: E402
from calibration.memories import export_model  # noqa: E402
from engines.quantize import INPUT_BLOCK_SCOPE, float_nodes, output_head_nodes  # noqa: E402
from engines.tile_memory import (BOTH_SCALES_MAP_SHARE, BOTH_SCALES_SCORE_WEIGHT, COARSE_SCALE, MEMORY_NAMES,  # noqa: E402
                                 FINE_TOP_K, NOVELTY_SPREAD, WHITEN_SHRINK, fit_memory, k_center, memory_from_images,
                                 novelty_rule, whiten_shrink_for)
from engines.tiny_unet import TinyUNet  # noqa: E402


def _clusters(rng, n_images=6, per_image=20, dim=8):
    """OK embeddings: tight clusters around a few centres, several images each."""
    centres = rng.normal(0, 5, (3, dim))
    emb = np.concatenate([centres[i % 3] + rng.normal(0, 0.3, (per_image, dim)) for i in range(n_images)])
    ids = np.repeat(np.arange(n_images), per_image)
    return emb.astype(np.float32), ids, centres


def test_memory_scores_new_tiles_above_ok_tiles():
    rng = np.random.default_rng(0)
    emb, ids, centres = _clusters(rng)
    memory = fit_memory(emb, ids, max_tiles=40)
    assert memory.bank.shape == (40, 8)
    ok = memory(torch.from_numpy((centres + rng.normal(0, 0.3, centres.shape)).astype(np.float32)))
    novel = memory(torch.from_numpy(rng.normal(0, 5, (3, 8)).astype(np.float32) + 20.0))
    assert float(ok.max()) < 0.6 < 0.95 < float(novel.min())


def test_few_tiles_are_not_whitened():
    """Whitened on fewer tiles than a quarter of its dimensions, a memory blows up the directions
    its few tiles do not span: it is then only standardised (shrink 1.0: every eigenvalue alike)."""
    assert whiten_shrink_for(64, 256) == WHITEN_SHRINK and whiten_shrink_for(63, 256) == 1.0
    rng = np.random.default_rng(1)
    few = rng.normal(0, 1, (12, 64)).astype(np.float32)  # 12 < 64 / 4
    memory = fit_memory(few, np.arange(12))
    w = memory.whiten.numpy()
    assert np.allclose(w @ w.T, w[0] @ w[0] * np.eye(64), atol=1e-4)  # a rotation and one scale: no whitening
    many = rng.normal(0, 1, (400, 64)).astype(np.float32) * np.linspace(0.2, 3.0, 64)
    w = fit_memory(many, np.arange(400)).whiten.numpy()
    assert not np.allclose(w @ w.T, w[0] @ w[0] * np.eye(64), atol=1e-2)


def test_memory_needs_two_images():
    with pytest.raises(ValueError, match="at least two OK images"):
        fit_memory(np.zeros((5, 4), np.float32), np.zeros(5, int))


def test_k_center_covers_every_cluster():
    rng = np.random.default_rng(1)
    emb, _, _ = _clusters(rng)
    chosen = emb[k_center(emb, 3)]
    # One pick per cluster: every point lies near some chosen point.
    d = np.sqrt(((emb[:, None] - chosen[None]) ** 2).sum(-1)).min(1)
    assert d.max() < 3.0
    assert len(k_center(emb, 1000)) == len(emb)


def test_blend_keeps_map_in_unit_range():
    rng = np.random.default_rng(2)
    emb, ids, _ = _clusters(rng)
    memory = fit_memory(emb, ids)
    prob = torch.rand(4, 1, 8, 8)
    novelty = torch.tensor([0.0, 0.3, 0.7, 1.0])
    assert torch.equal(memory.blend(prob, novelty), prob)  # new memories: the share is added outside the graph
    memory.map_share.fill_(0.01)  # what models exported before fine_map_share existed carry
    out = memory.blend(prob, novelty)
    assert float(out.min()) >= 0.0 and float(out.max()) <= 1.0
    assert torch.allclose(out[3], 0.99 * prob[3] + 0.01)


def test_trained_model_carries_memory_through_every_backend(trained_model):
    """train fits the memory, export puts it in the graph and in model.pt, backends agree."""
    meta = ModelMeta.load(trained_model)
    assert meta.extra["memory_tiles"] > 0 and meta.map_score_weight == 0.0
    assert meta.novelty_spread == NOVELTY_SPREAD == "min"
    assert meta.extra["memory_map_share"] == 0.0  # nothing of the novelty is blended in the graph
    assert "memory.bank" in torch.load(trained_model / "model.pt", weights_only=True)
    x = np.random.default_rng(0).normal(0, 1, (3, 1, 128, 128)).astype(np.float32)
    ort_maps, ort_scores = load_backend("onnxruntime", trained_model).infer(x)
    t_maps, t_scores = load_backend("torch", trained_model, device="cpu").infer(x)
    assert np.abs(ort_scores - t_scores).max() < 1e-3 and np.abs(ort_maps - t_maps).max() < 1e-3
    # Random input is far from every OK tile: a novelty may saturate to exactly 1.0 in float32
    # (seen with the fixture trained on CUDA), but never leaves [0, 1].
    assert np.isfinite(ort_scores).all() and ((ort_scores >= 0) & (ort_scores <= 1)).all()
    # The coarse memory is a second score column, fitted on the same images at half their size.
    assert meta.coarse_scale == COARSE_SCALE and ort_scores.shape == (3, 2)
    # With both memories the map adds the lower of the two spreads, not each of them, and the image
    # score reads where they agree.
    assert (meta.fine_map_share, meta.coarse_map_share, meta.both_scales_map_share) == (0.0, 0.0, BOTH_SCALES_MAP_SHARE)
    assert meta.both_scales_score_weight == BOTH_SCALES_SCORE_WEIGHT > 0 and BOTH_SCALES_MAP_SHARE > 0
    assert meta.fine_top_k == FINE_TOP_K == 2  # and the fine part of it is the two strongest tiles
    one = novelty_rule(True, False)  # one memory: its own spread, nothing to agree with, the strongest tile
    assert one["fine_map_share"] > 0 and one["both_scales_map_share"] == one["both_scales_score_weight"] == 0
    assert one["fine_top_k"] == 1
    assert meta.extra["coarse_memory_tiles"] > 0
    assert meta.extra["coarse_memory_center"] != meta.extra["memory_center"]


def test_detector_runs_a_coarse_pass_and_averages_its_strongest_score(trained_model, ok_images):
    """The image score: the mean of the strongest fine and coarse tile scores, half of it replaced
    by the strongest place novel at both scales (the peak of the lower of the two spreads)."""
    from pipeline.vision.tiling import scaled_tiles, tile_grid
    from pipeline.vision.scoring import spread_scores

    detector = Detector(load_backend("onnxruntime", trained_model), overlap=0.25)
    img = ok_images[0]
    pred = detector.predict(img)
    fine, coarse = pred.tile_scores, pred.coarse_scores
    assert coarse is not None and 1 <= len(coarse) < len(fine)
    assert pred.anomaly_map.shape == img.shape
    f = spread_scores(fine, np.arange(len(fine)), tile_grid(*img.shape, 128, 0.25), img.shape, "min")
    _, coarse_grid = scaled_tiles(img, 128, 0.25, detector.meta.coarse_scale)
    peak = float(np.minimum(f, spread_scores(coarse, np.arange(len(coarse)), coarse_grid, img.shape, "min")).max())
    tiles = 0.5 * (fine.max() + coarse.max())
    w = BOTH_SCALES_SCORE_WEIGHT
    assert pred.score == pytest.approx((1 - w) * tiles + w * peak, abs=1e-6)
    assert abs(peak - tiles) > 1e-3  # the agreement is not the tile score under another name


def test_flip_tta_averages_the_maps_of_flipped_passes_and_keeps_the_plain_scores(trained_model, ok_images):
    """Flip TTA: the fine tiles' maps are the mean over the plain and the flipped passes; the tile
    scores (and so the image score) stay the plain pass's, since the memories hold unflipped tiles."""
    from pipeline.vision.tiling import scaled_tiles

    backend = load_backend("onnxruntime", trained_model)
    img = ok_images[0]
    plain = Detector(backend, overlap=0.25).predict(img)
    tta = Detector(backend, overlap=0.25, flip_tta="all")
    assert tta.views == 4
    pred = tta.predict(img)
    np.testing.assert_array_equal(pred.tile_scores, plain.tile_scores)
    np.testing.assert_array_equal(pred.coarse_scores, plain.coarse_scores)
    assert pred.score == plain.score
    assert np.abs(pred.anomaly_map - plain.anomaly_map).max() > 1e-4  # the maps did change
    tiles, _ = scaled_tiles(img, 128, 0.25)
    x = tta.meta.normalise(tiles[:3])
    expect = sum(np.flip(backend.infer(np.ascontiguousarray(np.flip(x, ax)))[0], ax)
                 for ax in ((-1,), (-2,), (-2, -1), ())) / 4
    maps, scores = tta.infer_tiles(tiles[:3])
    np.testing.assert_allclose(maps, expect, atol=1e-5)
    np.testing.assert_array_equal(scores, backend.infer(x)[1])
    with pytest.raises(ValueError, match="flip_tta must be one of"):
        Detector(backend, flip_tta="diagonal")


def test_detector_adds_the_novelty_shares_to_the_map(trained_model, ok_images, tmp_path):
    """The map is the fine tiles' graph output plus both_scales_map_share x the lower of the fine and
    the coarse scores, each spread as the minimum over the tiles covering a pixel; a folder with the
    older rule (fine_map_share, coarse_map_share) adds each spread; all shares 0: the graph's map alone.
    The image score never reads the map."""
    import shutil

    from pipeline.vision.tiling import scaled_tiles, tile_grid

    from pipeline.vision.scoring import blur_map, spread_scores

    img = ok_images[0]
    with_share = Detector(load_backend("onnxruntime", trained_model), overlap=0.25).predict(img)
    folder = shutil.copytree(trained_model, tmp_path / "plain")
    own = ModelMeta.load(folder)

    def predict(fine: float, coarse: float, both: float):
        meta = ModelMeta.load(folder)
        meta.fine_map_share, meta.coarse_map_share, meta.both_scales_map_share = fine, coarse, both
        meta.save(folder)
        return Detector(load_backend("onnxruntime", folder), overlap=0.25).predict(img)

    plain = predict(0.0, 0.0, 0.0)
    fine, coarse = with_share.tile_scores, with_share.coarse_scores
    f = spread_scores(fine, np.arange(len(fine)), tile_grid(*img.shape, 128, 0.25), img.shape, "min")
    _, coarse_grid = scaled_tiles(img, 128, 0.25, own.coarse_scale)
    c = spread_scores(coarse, np.arange(len(coarse)), coarse_grid, img.shape, "min")
    added = with_share.anomaly_map - plain.anomaly_map
    sigma = own.map_blur_sigma  # the finished map is smoothed, and smoothing is linear
    np.testing.assert_allclose(added, blur_map(BOTH_SCALES_MAP_SHARE * np.minimum(f, c), sigma), atol=1e-5)
    assert added.max() > 0 and (np.minimum(f, c) < np.maximum(f, c)).any()
    older = predict(0.01, 0.02, 0.0).anomaly_map - plain.anomaly_map
    np.testing.assert_allclose(older, blur_map(0.01 * f + 0.02 * c, sigma), atol=1e-5)
    assert with_share.score == pytest.approx(plain.score)


def test_detector_adds_the_coarse_map_networks_map(trained_model, coarse_map_model, ok_images):
    """With a coarse-map network the coarse tiles' maps are its maps: the defect map is the model's
    own plus its weight x those maps stitched on the coarse grid; the scores are unchanged."""
    import cv2

    from pipeline.vision.tiling import scaled_tiles, stitch

    from pipeline.vision.scoring import blur_map

    img = ok_images[1]
    plain = Detector(load_backend("onnxruntime", trained_model), overlap=0.25).predict(img)
    backend = load_backend("onnxruntime", coarse_map_model)
    both = Detector(backend, overlap=0.25).predict(img)
    tiles, grid = scaled_tiles(img, 128, 0.25, backend.meta.coarse_scale)
    half_maps = backend.coarse_map.infer(backend.meta.normalise(tiles))[0]
    expect = cv2.resize(stitch(half_maps, grid), (img.shape[1], img.shape[0]), interpolation=cv2.INTER_LINEAR)
    np.testing.assert_allclose(both.anomaly_map - plain.anomaly_map, blur_map(0.25 * expect, backend.meta.map_blur_sigma),
                               atol=1e-5)
    assert both.score == pytest.approx(plain.score, abs=1e-6)


def test_detector_smooths_the_finished_map(trained_model, ok_images, tmp_path):
    """Export writes MAP_BLUR_SIGMA; the detector's map is then the unsmoothed map (a folder with
    map_blur_sigma 0, as folders from before the field read) smoothed with that Gaussian. The image
    score of a model with tile memories does not read the map, so it does not move."""
    import json
    import shutil

    import cv2

    from engines.artifact import MAP_BLUR_SIGMA

    assert ModelMeta.load(trained_model).map_blur_sigma == MAP_BLUR_SIGMA == 2.0
    folder = shutil.copytree(trained_model, tmp_path / "sharp")
    raw = json.loads((folder / "model.json").read_text())
    del raw["map_blur_sigma"]  # a folder from before the field
    (folder / "model.json").write_text(json.dumps(raw))
    assert ModelMeta.load(folder).map_blur_sigma == 0.0
    img = ok_images[2]
    sharp = Detector(load_backend("onnxruntime", folder), overlap=0.25).predict(img)
    smooth = Detector(load_backend("onnxruntime", trained_model), overlap=0.25).predict(img)
    np.testing.assert_allclose(smooth.anomaly_map, cv2.GaussianBlur(sharp.anomaly_map, (0, 0), 2.0), atol=1e-6)
    assert np.abs(smooth.anomaly_map - sharp.anomaly_map).max() > 1e-4  # it did smooth
    assert smooth.score == pytest.approx(sharp.score, abs=1e-6)


def test_split_scores_reads_the_column_of_each_pass():
    two = np.array([[0.1, 0.9], [0.2, 0.8], [0.7, 0.3]], np.float32)
    fine, coarse = split_scores(two, 2)
    assert fine.tolist() == pytest.approx([0.1, 0.2]) and coarse.tolist() == pytest.approx([0.3])
    fine, coarse = split_scores(np.array([0.4, 0.5], np.float32), 2)
    assert coarse is None and fine.tolist() == pytest.approx([0.4, 0.5])


def test_export_refits_memory_from_other_images(trained_model, mini_data, tmp_path):
    out = export_model(trained_model.parent / "last.pt", tmp_path / "m", memory_data=mini_data, progress=False)
    meta = ModelMeta.load(out)
    assert len(meta.extra["memory_data_hash"]) == 64 and meta.both_scales_map_share == BOTH_SCALES_MAP_SHARE


def test_export_fits_memory_on_the_line_canonical_views_too(trained_model, mini_data, tmp_path):
    """--memory-canonical adds each OK image as the line will rectify it to the images as they are:
    the memories hold more tiles, and model.json records the line and its canonical size."""
    from pipeline.config import LineConfig, PreprocessConfig, dump_config

    line = dump_config(LineConfig(preprocess=PreprocessConfig(canonical_size=[200, 264])), tmp_path / "line.yaml")
    plain = ModelMeta.load(export_model(trained_model.parent / "last.pt", tmp_path / "plain", memory_data=mini_data,
                                        progress=False))
    both = ModelMeta.load(export_model(trained_model.parent / "last.pt", tmp_path / "both", memory_data=mini_data,
                                       progress=False, memory_canonical=line))
    assert both.extra["memory_canonical_size"] == [200, 264] and both.extra["memory_canonical"] == str(line)
    assert both.extra["memory_tiles"] > plain.extra["memory_tiles"]
    assert both.extra["memory_data_hash"] == plain.extra["memory_data_hash"]  # the same OK images
    with pytest.raises(ValueError, match="--memory-canonical needs --memory-data"):
        export_model(trained_model.parent / "last.pt", tmp_path / "x", memory_canonical=line, progress=False)
    with pytest.raises(ValueError, match="cannot be combined with --memory-line"):
        export_model(trained_model.parent / "last.pt", tmp_path / "x", memory_data=mini_data, memory_line=line,
                     memory_canonical=line, progress=False)


def test_two_views_of_one_part_calibrate_against_other_parts_only(ok_images):
    """Each image given twice: with one part id per pair the calibration is the single set's (a
    tile's twin is not "another OK part"); with an id per copy every tile finds its twin at distance
    0 and the scale of novelty collapses."""
    torch.manual_seed(0)
    model = TinyUNet(1, 8).eval()
    meta = ModelMeta("tiny_unet", 8, 1, mean=0.5, std=0.25)
    images = ok_images[:4]
    single = memory_from_images(model, images, meta, progress=False)
    paired = memory_from_images(model, images + images, meta, progress=False, part_ids=[0, 1, 2, 3] * 2)
    apart = memory_from_images(model, images + images, meta, progress=False)
    assert float(paired.center) == pytest.approx(float(single.center), rel=0.05)
    assert float(apart.center) < 0.5 * float(single.center)
    with pytest.raises(ValueError, match="part_ids has 3 entries for 4 images"):
        memory_from_images(model, images, meta, progress=False, part_ids=[0, 1, 2])


def test_memory_from_real_images_ranks_them_familiar(ok_images):
    torch.manual_seed(0)
    model = TinyUNet(1, 8).eval()
    memory = memory_from_images(model, ok_images, ModelMeta("tiny_unet", 8, 1, mean=0.5, std=0.25), progress=False)
    x = torch.from_numpy(((ok_images[0][:128, :128].astype(np.float32) / 255 - 0.5) / 0.25)[None, None])
    flat = torch.zeros_like(x) + 3.0
    with torch.no_grad():
        seen, blank = float(memory(model.embed(x))), float(memory(model.embed(flat)))
    assert seen < 0.5 < blank


def test_image_score_weight():
    amap = np.zeros((64, 64), np.float32)
    amap[20:40, 20:40] = 1.0
    tiles = np.array([0.1, 0.3], np.float32)
    assert image_score(amap, tiles, 0.0) == pytest.approx(0.3)
    assert image_score(amap, tiles, 0.5) > 0.5
    assert image_score(amap, np.zeros(0, np.float32), 0.0) == 0.0
    assert image_score(amap, tiles, 0.0, np.array([0.5, 0.9], np.float32)) == pytest.approx(0.6)


def test_int8_keeps_memory_and_map_head_in_float(trained_model):
    names = output_head_nodes(trained_model / "model.onnx")
    assert any("/memory/MatMul" in n for n in names) and any(n.endswith("Sigmoid") for n in names)
    assert any("/coarse_memory/MatMul" in n for n in names)
    kept = float_nodes(trained_model / "model.onnx")
    first_block = [n for n in kept if n.startswith(INPUT_BLOCK_SCOPE)]
    assert first_block and set(names) <= set(kept)
    assert float_nodes(trained_model / "model.onnx", input_block_float=False) == names  # --int8-input-block


def test_fp16_torch_backend_keeps_the_memories_fp32(trained_model):
    """fp16 serving (CUDA by default; asked for here on the CPU) runs the network in half precision but
    the nearest-neighbour distances in fp32, whose |z|^2 - 2 z.b + |b|^2 cancels badly in fp16."""
    engine = load_backend("torch", trained_model, device="cpu", fp16=True)
    net = engine.module.model
    assert net.out_conv.weight.dtype == torch.float16
    for name in MEMORY_NAMES:
        assert getattr(net, name).bank.dtype == torch.float32, name
    maps, scores = engine.infer(np.random.default_rng(0).normal(0, 1, (2, 1, 128, 128)).astype(np.float32))
    assert maps.shape == (2, 1, 128, 128) and scores.shape == (2, 2) and np.isfinite(scores).all()


def test_model_json_without_the_spread_fields_reads_as_before(trained_model, tmp_path):
    """Folders exported before fine_map_share / novelty_spread existed blend the fine share in the
    graph and spread the coarse one as the mean; a bad spread name is an error naming the field."""
    import json
    import shutil

    from engines.artifact import ArtifactError

    old = shutil.copytree(trained_model, tmp_path / "old")
    raw = json.loads((old / "model.json").read_text())
    del raw["fine_map_share"], raw["novelty_spread"]
    (old / "model.json").write_text(json.dumps(raw))
    raw["coarse_map_share"] = 0.01
    del raw["both_scales_map_share"]
    (old / "model.json").write_text(json.dumps(raw))
    share = ModelMeta.load(old).novelty_share()
    assert (share.fine, share.coarse, share.spread, share.both) == (0.0, 0.01, "mean", 0.0)
    for name in ("fine_map_share", "both_scales_map_share"):
        (old / "model.json").write_text(json.dumps({**raw, name: -0.01}))
        with pytest.raises(ArtifactError, match=f"{name} is -0.01; use a number of at least 0"):
            ModelMeta.load(old)
    del raw["both_scales_score_weight"], raw["fine_top_k"]
    (old / "model.json").write_text(json.dumps(raw))
    assert ModelMeta.load(old).novelty_share().score_weight == 0.0  # the tile scores alone, as before
    for bad in (-0.1, 1.5, True):
        (old / "model.json").write_text(json.dumps({**raw, "both_scales_score_weight": bad}))
        with pytest.raises(ArtifactError, match="both_scales_score_weight is .*; use a number from 0 to 1"):
            ModelMeta.load(old)
    raw["novelty_spread"] = "median"
    (old / "model.json").write_text(json.dumps(raw))
    with pytest.raises(ArtifactError, match="novelty_spread is 'median'; use one of"):
        ModelMeta.load(old)
    raw["novelty_spread"] = "min"
    for bad in (-1.0, 40, "2", True):
        (old / "model.json").write_text(json.dumps({**raw, "map_blur_sigma": bad}))
        with pytest.raises(ArtifactError, match="map_blur_sigma is .*; use a number of pixels from 0 to 32"):
            ModelMeta.load(old)
    (old / "model.json").write_text(json.dumps(raw))
    assert ModelMeta.load(old).line_grids == {} and ModelMeta.load(old).map_rule().positions is None
    for bad in ({"fine": {"height": 1}}, {"coarse": {}}):
        (old / "model.json").write_text(json.dumps({**raw, "line_grids": bad}))
        with pytest.raises(ArtifactError, match="line_grids is not a pair of tile grids"):
            ModelMeta.load(old)
    (old / "model.json").write_text(json.dumps(raw))
    assert ModelMeta.load(old).fine_top_k == 1  # folders from before the field read the strongest tile
    for bad in (0, 1.5, True):
        raw["fine_top_k"] = bad
        (old / "model.json").write_text(json.dumps(raw))
        with pytest.raises(ArtifactError, match="fine_top_k is .*; use a whole number of at least 1"):
            ModelMeta.load(old)


def test_memory_banks_are_stored_in_fp16_without_changing_a_single_output(trained_model, tmp_path):
    """The banks are fp16-rounded when fitted, so export stores them as fp16 initializers behind a
    Cast in the memory's scope: the same outputs to the bit, about half the bytes, the same MAC count."""
    import onnx
    import onnxruntime as ort
    import torch

    from engines.artifact import MEMORY_SCOPES
    from engines.benchmark import onnx_cost
    from engines.export import export_onnx, store_exact_fp16_constants
    from engines.inference_model import build_model, inference_module, load_weights

    meta = ModelMeta.load(trained_model)
    model = load_weights(build_model(meta.arch, meta.in_channels, meta.width),
                         torch.load(trained_model / "model.pt", weights_only=True))
    plain = export_onnx(inference_module(meta.arch, model), meta.in_channels, tmp_path / "plain.onnx")
    before = plain.read_bytes()
    x = np.random.default_rng(1).normal(0, 1, (4, meta.in_channels, 128, 128)).astype(np.float32)
    expect = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"tiles": x})
    saved = store_exact_fp16_constants(plain)
    got = ort.InferenceSession(str(plain), providers=["CPUExecutionProvider"]).run(None, {"tiles": x})
    for e, g in zip(expect, got):
        np.testing.assert_array_equal(e, g)
    assert saved > 0 and len(plain.read_bytes()) < len(before) - saved * 0.9
    graph = onnx.load(str(plain)).graph
    halves = [i.name for i in graph.initializer if i.data_type == onnx.TensorProto.FLOAT16]
    casts = [n for n in graph.node if n.op_type == "Cast" and n.input[0] in halves]
    assert len(halves) == len(casts) == 2 and all(n.name.startswith(MEMORY_SCOPES) for n in casts)  # both banks
    assert store_exact_fp16_constants(plain) == 0  # nothing left to convert
    tmp_plain = tmp_path / "again.onnx"
    tmp_plain.write_bytes(before)
    assert onnx_cost(plain) == onnx_cost(tmp_plain)
    # The shipped export path does it too: its model.onnx holds the banks in fp16.
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in onnx.load(str(trained_model / "model.onnx")).graph.initializer)


def test_fp16_storage_takes_only_exact_constants_read_in_the_memory_scope(tmp_path):
    """Left alone: a constant read outside the memories, one fp16 does not hold exactly, and one also
    listed as a graph input; converted: an exact one that only a memory node reads."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from engines.export import store_exact_fp16_constants

    exact = (np.arange(64 * 64, dtype=np.float32) % 1024).reshape(64, 64) / 4.0  # quarters below 256: exact
    inexact = exact + np.float32(1e-4)
    inits = [numpy_helper.from_array(a, n) for a, n in
             [(exact, "bank"), (exact.copy(), "outside"), (inexact, "inexact"), (exact.copy(), "listed")]]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 64])
    nodes = [helper.make_node("MatMul", ["x", "bank"], ["a"], name="/memory/MatMul"),
             helper.make_node("MatMul", ["a", "outside"], ["b"], name="/head/MatMul"),
             helper.make_node("MatMul", ["b", "inexact"], ["c"], name="/memory/MatMul_1"),
             helper.make_node("MatMul", ["c", "listed"], ["y"], name="/coarse_memory/MatMul")]
    graph = helper.make_graph(nodes, "g", [x, helper.make_tensor_value_info("listed", TensorProto.FLOAT, [64, 64])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 64])], inits)
    path = tmp_path / "g.onnx"
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    assert store_exact_fp16_constants(path) == exact.nbytes // 2
    g = onnx.load(str(path)).graph
    assert {i.name: i.data_type for i in g.initializer} == {
        "bank_fp16": TensorProto.FLOAT16, "outside": TensorProto.FLOAT, "inexact": TensorProto.FLOAT,
        "listed": TensorProto.FLOAT}
    assert g.node[0].op_type == "Cast" and g.node[0].name.startswith("/memory/") and list(g.node[0].output) == ["bank"]
    onnx.checker.check_model(onnx.load(str(path)), full_check=True)


def test_position_memory_tops_up_the_shared_rows_of_each_position_and_scores_against_them():
    """top_up_rows + PositionMemory: each position keeps the shared bank's rows from its tiles and adds
    its own up to ``rows`` (rows of images as they are belong to no position); column p is the
    calibrated nearest distance to position p's rows (numpy, computed here); a tile like position
    0's OK tiles is familiar at position 0 and novel at position 1."""
    from engines.tile_memory import PositionMemory, TileMemory, top_up_rows

    rng = np.random.default_rng(3)
    dim, rows = 6, 8
    centres = np.stack([np.zeros(dim), np.full(dim, 6.0), np.full(dim, -6.0)])  # positions 0, 1; -1: as they are
    z = np.concatenate([centres[p] + rng.normal(0, 0.5, (20, dim)) for p in (0, 1, 2)]).astype(np.float32)
    positions = np.repeat([0, 1, -1], 20)
    parts = np.tile(np.repeat(np.arange(10), 2), 3)
    kept = np.array([0, 1, 2, 20, 40, 41])  # the shared bank: 3 rows of position 0, 1 of position 1, 2 of neither
    bank = torch.from_numpy(z[kept]).half().float().numpy()
    tags, extra, extra_tags, centre, scale = top_up_rows(z, positions, parts, kept, bank, 2, rows)
    assert tags.tolist() == [0, 0, 0, 1, -1, -1]
    assert extra_tags.tolist() == [0.0] * 5 + [1.0] * 7  # each position up to 8 rows
    assert np.array_equal(extra, extra.astype(np.float16).astype(np.float32))
    shared = TileMemory(dim, len(kept))
    shared.bank.copy_(torch.from_numpy(bank))
    shared.bank_sq.copy_(shared.bank.pow(2).sum(1))
    memory = PositionMemory(dim, 2, 0, len(kept), 0, len(extra), 0)
    memory.fine_extra.copy_(torch.from_numpy(extra))
    memory.fine_extra_sq.copy_(memory.fine_extra.pow(2).sum(1))
    memory.fine_tags.copy_(torch.from_numpy(np.concatenate([tags, extra_tags])))
    memory.center.copy_(torch.from_numpy(centre))
    memory.scale.copy_(torch.from_numpy(scale))
    query = (centres[0] + rng.normal(0, 0.5, (4, dim))).astype(np.float32)
    q = torch.from_numpy(query)
    d2 = (q * q).sum(1, keepdim=True) - 2.0 * q @ shared.bank.t() + shared.bank_sq[None]  # as the shared memory gives it
    got = memory(q, d2, torch.zeros(4, dim), torch.zeros(4, 0)).numpy()
    every = np.concatenate([bank, extra])
    every_tag = np.concatenate([tags, extra_tags])
    for p in (0, 1):
        own = every[every_tag == p]
        d = np.sqrt(((query[:, None] - own[None]) ** 2).sum(-1).min(1))
        assert np.allclose(got[:, p], 1 / (1 + np.exp(-(d - centre[p]) / scale[p])), atol=1e-5)
    assert got[:, 0].max() < 0.9 and got[:, 1].min() > 0.99
    with pytest.raises(ValueError, match="grid position 1"):
        top_up_rows(z[:20], positions[:20], parts[:20], kept[:3], bank[:3], 2, rows)  # no OK tile at position 1
