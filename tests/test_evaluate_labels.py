"""evaluate with image-level labels only (OK/NG folders, no masks): what a user without masks has."""
import json
import shutil

from tools import evaluate as evaluate_cli


def test_evaluate_with_ok_and_ng_folders_only(trained_model, mini_data, tmp_path, capsys):
    data = tmp_path / "labels_only"
    shutil.copytree(mini_data / "test", data / "test")  # no ground_truth/ folder
    out = tmp_path / "ev"
    assert evaluate_cli.main(["--model", str(trained_model), "--data", str(data), "--out", str(out)]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["pixel_labels"] is False
    assert 0.0 <= metrics["image_auroc"] <= 1.0 and metrics["n_defective"] > 0
    assert 0.0 <= metrics["image_recall_at_fa_0.05"] <= 1.0
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    text = capsys.readouterr().out
    assert "image-level metrics only" in text and "Traceback" not in text
    # with the masks, the same call gives the pixel metrics too
    assert evaluate_cli.main(["--model", str(trained_model), "--data", str(mini_data), "--out", str(tmp_path / "ev2")]) == 0
    full = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert full["pixel_labels"] is True and full["pixel_auroc"] is not None
    assert full["image_auroc"] == metrics["image_auroc"]


def test_val_and_test_sides_of_the_fixed_split(trained_model, mini_data, tmp_path):
    """The development test images fall on one side each of a fixed split (a hash of type and
    name); --split test reports on that side only; --set-thresholds chooses on val alone, so it
    sets the same thresholds from --split all as from --split val, and refuses --split test."""
    import pytest

    from engines.artifact import ModelMeta
    from engines.data import mvtec_test_set, split_of
    from engines.export import copy_model

    every = mvtec_test_set(mini_data, require_masks=False)
    val = mvtec_test_set(mini_data, require_masks=False, split="val")
    test = mvtec_test_set(mini_data, require_masks=False, split="test")
    assert val and test and len(val) + len(test) == len(every)
    assert {s.image_path for s in val}.isdisjoint(s.image_path for s in test)
    assert split_of("crack", "a.jpg") == split_of("crack", "a.jpg")  # a fixed rule, not a draw
    out = tmp_path / "ev_test"
    assert evaluate_cli.main(["--model", str(trained_model), "--data", str(mini_data), "--out", str(out),
                              "--split", "test"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["split"] == "test" and metrics["n_images"] == len(test)
    thresholds = {}
    for split in ("all", "val"):
        model = copy_model(trained_model, tmp_path / f"m_{split}")
        assert evaluate_cli.main(["--model", str(model), "--data", str(mini_data), "--out", str(tmp_path / split),
                                  "--split", split, "--set-thresholds"]) == 0
        meta = ModelMeta.load(model)
        thresholds[split] = (meta.pixel_threshold, meta.image_threshold)
    assert thresholds["all"] == pytest.approx(thresholds["val"])
    assert evaluate_cli.main(["--model", str(tmp_path / "m_val"), "--data", str(mini_data),
                              "--out", str(tmp_path / "x"), "--split", "test", "--set-thresholds"]) == 2
