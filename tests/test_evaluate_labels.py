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
    assert metrics["pixel_auroc"] is None and metrics["aupro"] is None
    text = capsys.readouterr().out
    assert "image-level metrics only" in text and "Traceback" not in text
    # with the masks, the same call gives the pixel metrics too
    assert evaluate_cli.main(["--model", str(trained_model), "--data", str(mini_data), "--out", str(tmp_path / "ev2")]) == 0
    full = json.loads((tmp_path / "ev2" / "metrics.json").read_text())
    assert full["pixel_labels"] is True and full["pixel_auroc"] is not None
    assert full["image_auroc"] == metrics["image_auroc"]
