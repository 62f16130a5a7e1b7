import numpy as np
import pytest

from engines.data import DataError, read_image, to_channels, training_images


def test_empty_file(tmp_path):
    f = tmp_path / "a.png"
    f.write_bytes(b"")
    with pytest.raises(DataError, match="a.png: file is empty"):
        read_image(f)


def test_channel_conversion():
    bgra = np.zeros((4, 5, 4), np.uint8)
    assert to_channels(bgra, 1).shape == (4, 5)
    assert to_channels(np.zeros((4, 5), np.uint8), 3).shape == (4, 5, 3)
    with pytest.raises(DataError, match="2 channels"):
        to_channels(np.zeros((4, 5, 2), np.uint8), 1)
    with pytest.raises(DataError, match="float32"):
        to_channels(np.zeros((4, 5), np.float32), 1)


def test_mvtec_folder_uses_train_good_only(mini_data):
    files = training_images(mini_data)
    assert files and all(f.parent.name == "good" and f.parent.parent.name == "train" for f in files)


def test_missing_folder(tmp_path):
    with pytest.raises(DataError, match="no such folder"):
        training_images(tmp_path / "nope")
