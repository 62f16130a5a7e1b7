"""The second product (Fashion-MNIST, one class as the OK part): reading the data set, the folder
it becomes, and the benchmark end to end with a few training steps."""
import gzip
import json

import cv2
import numpy as np
import pytest

from engines.data import DataError, mvtec_test_set
from engines.fashion_mnist import CLASSES, DEFAULT_ROOT, IMAGE_SIZE, ProductSpec, load, read_idx, write_product
from tools import product_bench


def test_the_data_set_reads_as_ten_classes_of_28x28_images():
    images, labels = load(DEFAULT_ROOT, "test")
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert sorted(np.unique(labels)) == list(range(len(CLASSES)))
    assert images.max() > 200 and images[:, 0, 0].mean() < 10  # bright articles on black


def test_bad_idx_files_are_named_with_the_fix(tmp_path):
    with pytest.raises(DataError, match="apt-get install dataset-fashion-mnist"):
        read_idx(tmp_path / "missing-ubyte.gz")
    bad = tmp_path / "bad-ubyte.gz"
    bad.write_bytes(gzip.compress(b"PK\x03\x04 not an idx file"))
    with pytest.raises(DataError, match="bad magic"):
        read_idx(bad)
    good = (DEFAULT_ROOT / "t10k-labels-idx1-ubyte.gz").read_bytes()
    cut = tmp_path / "cut-ubyte.gz"
    cut.write_bytes(gzip.compress(gzip.decompress(good)[:500]))
    with pytest.raises(DataError, match="truncated"):
        read_idx(cut)


def test_product_folder_holds_the_ok_class_for_training_and_every_class_for_test(tmp_path):
    spec = ProductSpec(ok_class="bag", n_train=12, n_test_ok=10, n_test_ng=18)
    counts = write_product(DEFAULT_ROOT, tmp_path / "p", spec)
    assert counts["train/good"] == 12 and counts["test/good"] == 10
    assert sorted(k for k in counts if k.startswith("test/") and k != "test/good") == \
        sorted(f"test/{c}" for c in CLASSES if c != "bag")
    assert all(counts[f"test/{c}"] == 2 for c in CLASSES if c != "bag")
    img = cv2.imread(str(next((tmp_path / "p" / "train" / "good").glob("*.png"))), cv2.IMREAD_UNCHANGED)
    assert img.shape == (IMAGE_SIZE, IMAGE_SIZE) and img.dtype == np.uint8
    # the training images are bags: the training file's labels agree with what was written
    train_x, train_y = load(DEFAULT_ROOT, "train")
    for f in (tmp_path / "p" / "train" / "good").glob("*.png"):
        assert train_y[int(f.stem.split("_")[1])] == CLASSES.index("bag")
    # the same spec picks the same images; test images carry image-level labels only
    again = write_product(DEFAULT_ROOT, tmp_path / "q", spec)
    assert again == counts
    assert sorted(p.name for p in (tmp_path / "p" / "test" / "coat").iterdir()) == \
        sorted(p.name for p in (tmp_path / "q" / "test" / "coat").iterdir())
    samples = mvtec_test_set(tmp_path / "p", require_masks=False)
    assert all(s.mask_path is None for s in samples)
    with pytest.raises(ValueError, match="valid: t-shirt"):
        write_product(DEFAULT_ROOT, tmp_path / "r", ProductSpec(ok_class="hat"))


def test_product_bench_trains_exports_and_reports_image_auroc(tmp_path, capsys):
    out = tmp_path / "bench"
    assert product_bench.main(["--out", str(out), "--ok-class", "trouser", "--epochs", "1", "--steps-per-epoch", "3",
                               "--threads", "1"]) == 0
    r = json.loads((out / "product_bench.json").read_text())
    assert r["training_defaults"] is False and r["images"]["train/good"] == 300
    run = r["runs"][0]
    assert set(run["per_class"]) == {c for c in CLASSES if c != "trouser"}
    # Three steps of training leave the tile memories to tell trousers from the rest: far better
    # than chance, unless labels or scores were inverted somewhere on the way.
    assert run["image_auroc"] > 0.9
    assert (out / "seed0" / "model" / "model.onnx").is_file()
    text = capsys.readouterr().out
    assert "NOT the default training: 1 x 3 steps" in text and "trouser" in r["product"]


def test_a_memory_of_few_ok_images_still_tells_ok_from_defective(tmp_path):
    """40 OK images of one tile each: too few tiles to whiten the memory's embedding (256
    dimensions). Whitened, every part scored 1.0 (image AUROC 0.5); not whitened, the memory still
    ranks the other classes above the OK one."""
    from engines.product_bench import bench

    r = bench(tmp_path / "few", ProductSpec(ok_class="trouser", n_train=40), (0,), epochs=1, steps_per_epoch=3,
              threads=1, progress=False)
    assert r["runs"][0]["image_auroc"] > 0.9
    meta = json.loads((tmp_path / "few" / "seed0" / "model" / "model.json").read_text())
    assert meta["extra"]["memory_tiles"] == 40
