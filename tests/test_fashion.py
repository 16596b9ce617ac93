"""Fashion-MNIST from idx files in the real on-disk format, in either layout, and train.py on it."""
import numpy as np
import pytest

import train
from models.data import build_dataset
from problems import fake_digits, write_idx

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("layout", [".", "FashionMNIST/raw"])
def test_both_splits_load_from_the_flat_or_the_torchvision_layout(tmp_path, layout):
    (tr_x, tr_y), (te_x, te_y) = fake_digits(32), fake_digits(12, seed=1)
    write_idx(tmp_path / layout, "train", tr_x, tr_y)
    write_idx(tmp_path / layout, "t10k", te_x, te_y)
    train_set, info = build_dataset("fashion-mnist", str(tmp_path), train=True)
    test_set, _ = build_dataset("fashion-mnist", str(tmp_path), train=False)
    assert info.name == "fashion-mnist" and info.num_classes == 10 and len(train_set) == 32 and len(test_set) == 12
    x, y = test_set[5]
    assert tuple(x.shape) == (1, 28, 28) and y == 5
    np.testing.assert_allclose(x.numpy()[0], te_x[5] / 127.5 - 1, atol=1e-6)


def test_missing_or_mislabelled_files_name_what_is_wrong(tmp_path):
    with pytest.raises(FileNotFoundError, match="no FashionMNIST test split .* FashionMNIST/raw"):
        build_dataset("fashion-mnist", str(tmp_path / "none"), train=False)
    x, y = fake_digits(4)
    write_idx(tmp_path, "t10k", x, y + 10)
    with pytest.raises(ValueError, match="t10k-labels-idx1-ubyte.gz: Fashion-MNIST labels are clothing classes 0..9"):
        build_dataset("fashion-mnist", str(tmp_path), train=False)


def test_train_py_trains_on_fashion_mnist(tmp_path):
    write_idx(tmp_path / "data", "train", *fake_digits(64))
    result = train.main(train.parse_args([
        "--dataset", "fashion-mnist", "--data-root", str(tmp_path / "data"), "--model", "DiT-MNIST-tiny", "--steps", "3",
        "--batch-size", "8", "--out-dir", str(tmp_path / "run"), "--ckpt-every", "0", "--sample-every", "0",
        "--log-every", "1", "--threads", "1", "--no-progress"]))
    assert (tmp_path / "run" / "last.pt").exists() and result is not None
