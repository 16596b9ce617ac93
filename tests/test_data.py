"""Dataset loaders, each fed a few fake records written in the dataset's real on-disk format."""

import gzip
import os
import pickle

import numpy as np
import pytest
import torch

from models.data import build_dataset, default_root, read_idx

rng = np.random.default_rng(0)


def as_uint8(x: torch.Tensor) -> np.ndarray:
    """Invert the [-1, 1] normalisation."""
    return np.rint((x.numpy() + 1) * 127.5).astype(np.uint8)


# ---------------------------------------------------------------- MNIST idx


def write_idx(path, array: np.ndarray, compress=True):
    magic = {3: 2051, 1: 2049}[array.ndim]
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with (gzip.open if compress else open)(path, "wb") as f:  # closed (flushed) before anyone reads it
        f.write(header + array.astype(np.uint8).tobytes())


def fake_mnist(root, prefix="train", n=5, compress=True):
    os.makedirs(root, exist_ok=True)
    images = rng.integers(0, 256, size=(n, 28, 28), dtype=np.uint8)
    images[0, 0, 0], images[0, 0, 1] = 0, 255
    labels = np.arange(n) % 10
    ext = ".gz" if compress else ""
    write_idx(os.path.join(root, f"{prefix}-images-idx3-ubyte{ext}"), images, compress)
    write_idx(os.path.join(root, f"{prefix}-labels-idx1-ubyte{ext}"), labels, compress)
    return images, labels


@pytest.mark.parametrize("compress", [True, False])
def test_mnist_raw_idx(tmp_path, compress):
    images, labels = fake_mnist(tmp_path, "train", compress=compress)
    ds, info = build_dataset("mnist", tmp_path, train=True)
    assert (info.channels, info.image_size, info.num_classes, len(ds)) == (1, 28, 10, 5)
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32
    assert x[0, 0, 0] == -1.0 and x[0, 0, 1] == 1.0 and x.min() >= -1 and x.max() <= 1
    assert [ds[i][1] for i in range(5)] == labels.tolist()
    for i in range(5):
        np.testing.assert_array_equal(as_uint8(ds[i][0][0]), images[i])


def test_mnist_torchvision_layout_and_split(tmp_path):
    images, labels = fake_mnist(tmp_path / "MNIST" / "raw", "t10k", n=3)
    ds, _ = build_dataset("mnist", tmp_path, train=False)
    assert len(ds) == 3 and [ds[i][1] for i in range(3)] == labels.tolist()
    with pytest.raises(FileNotFoundError, match="no MNIST train split"):
        build_dataset("mnist", tmp_path, train=True)


def test_mnist_resize(tmp_path):
    fake_mnist(tmp_path)
    ds, info = build_dataset("mnist", tmp_path, image_size=32)
    assert ds[0][0].shape == (1, 32, 32) and info.image_size == 32 and ds[0][0].abs().max() <= 1


def test_idx_rejects_bad_magic(tmp_path):
    path = tmp_path / "bad.gz"
    with gzip.open(path, "wb") as f:
        f.write((1234).to_bytes(4, "big") + bytes(8))
    with pytest.raises(ValueError, match="magic"):
        read_idx(str(path))


def test_real_mnist_test_digits():
    root = default_root("mnist")
    if not os.path.isfile(os.path.join(root, "t10k-images-idx3-ubyte.gz")):
        pytest.skip(f"real MNIST not found in {root}")
    ds, info = build_dataset("mnist", train=False)
    assert len(ds) == 10_000 and info.num_examples == 10_000
    assert np.bincount(ds.labels.numpy(), minlength=10).min() > 800  # all ten digits present
    x, y = ds[0]
    assert x.shape == (1, 28, 28) and y == 7 and x.min() == -1 and x.max() == 1  # the first test digit is a 7


# ---------------------------------------------------------------- CIFAR-10 pickles


@pytest.mark.parametrize("protocol", [2, pickle.HIGHEST_PROTOCOL])  # the real files are Python 2 pickles
@pytest.mark.parametrize("numpy_labels", [False, True])  # the real files hold ints; files users write may not
def test_cifar10_pickles(tmp_path, protocol, numpy_labels):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    batches = {}
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        data = rng.integers(0, 256, size=(2, 3072), dtype=np.uint8)
        labels = rng.integers(0, 10, size=2).tolist()
        batches[name] = (data, labels)
        stored = list(np.array(labels)) if numpy_labels else labels
        with open(base / name, "wb") as f:
            pickle.dump({b"batch_label": name.encode(), b"data": data, b"labels": stored, b"filenames": []}, f,
                        protocol=protocol)
    with open(base / "batches.meta", "wb") as f:
        pickle.dump({b"label_names": [f"c{i}".encode() for i in range(10)], b"num_vis": 3072}, f)

    ds, info = build_dataset("cifar10", tmp_path, train=True)
    assert (len(ds), info.channels, info.image_size, info.num_classes) == (10, 3, 32, 10)
    x, y = ds[3]  # second record of data_batch_2
    data, labels = batches["data_batch_2"]
    assert x.shape == (3, 32, 32) and y == labels[1]
    np.testing.assert_array_equal(as_uint8(x), data[1].reshape(3, 32, 32))  # CHW plane order

    test, _ = build_dataset("cifar10", base, train=False)  # root may also be the batches folder itself
    assert len(test) == 2 and [test[i][1] for i in range(2)] == batches["test_batch"][1]


class _Payload:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        import os
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_cifar_batch_is_refused_without_running_it(tmp_path):
    base = tmp_path / "cifar-10-batches-py"
    base.mkdir()
    marker = tmp_path / "pwned"
    with open(base / "test_batch", "wb") as f:
        pickle.dump({b"data": _Payload(marker), b"labels": [0]}, f)
    with pytest.raises(ValueError, match=r"test_batch: not a CIFAR-10 batch \(refusing to load (posix|nt)\.system"):
        build_dataset("cifar10", tmp_path, train=False)
    assert not marker.exists()


# ---------------------------------------------------------------- ImageNet 64x64 npz


def test_imagenet64_npz(tmp_path):
    def write(name, labels):
        data = rng.integers(0, 256, size=(len(labels), 3 * 64 * 64), dtype=np.uint8)
        np.savez(tmp_path / name, data=data, labels=np.array(labels), mean=np.zeros(3 * 64 * 64))
        return data

    d1 = write("train_data_batch_1.npz", [1, 1000, 5])
    d2 = write("train_data_batch_2.npz", [42])
    write("train_data_batch_10.npz", [7])
    dv = write("val_data.npz", [3, 4])

    ds, info = build_dataset("imagenet64", tmp_path, train=True)
    assert (len(ds), info.channels, info.image_size, info.num_classes) == (5, 3, 64, 1000)
    assert [ds[i][1] for i in range(5)] == [0, 999, 4, 41, 6]  # 1-based -> 0-based, batches in numeric order
    x, _ = ds[1]
    assert x.shape == (3, 64, 64) and -1 <= x.min() and x.max() <= 1
    np.testing.assert_array_equal(as_uint8(x), d1[1].reshape(3, 64, 64))
    np.testing.assert_array_equal(as_uint8(ds[3][0]), d2[0].reshape(3, 64, 64))

    val, _ = build_dataset("imagenet64", tmp_path, train=False)
    assert len(val) == 2 and val[1][1] == 3
    np.testing.assert_array_equal(as_uint8(val[0][0]), dv[0].reshape(3, 64, 64))


# ---------------------------------------------------------------- folder of images


def test_image_folder_with_classes_and_flat(tmp_path):
    from PIL import Image

    arrays = {}
    for cls in ["cat", "dog"]:
        (tmp_path / "classes" / cls).mkdir(parents=True)
        for i in range(2):
            a = rng.integers(0, 256, size=(16, 16, 3), dtype=np.uint8)
            Image.fromarray(a).save(tmp_path / "classes" / cls / f"{i}.png")
            arrays[(cls, i)] = a
    ds, info = build_dataset("folder", tmp_path / "classes")
    assert (len(ds), info.channels, info.image_size, info.num_classes) == (4, 3, 16, 2)
    assert [ds[i][1] for i in range(4)] == [0, 0, 1, 1]
    x, _ = ds[2]
    assert x.shape == (3, 16, 16)
    np.testing.assert_array_equal(as_uint8(x), arrays[("dog", 0)].transpose(2, 0, 1))

    (tmp_path / "flat").mkdir()
    gray = rng.integers(0, 256, size=(20, 20), dtype=np.uint8)
    for i in range(3):
        Image.fromarray(gray).save(tmp_path / "flat" / f"{i}.png")
    (tmp_path / "flat" / "notes.txt").write_text("not an image")
    flat, info = build_dataset("folder", tmp_path / "flat", image_size=8)
    assert (len(flat), info.channels, info.num_classes) == (3, 1, 1)
    x, y = flat[0]
    assert x.shape == (1, 8, 8) and y == 0 and -1 <= x.min() and x.max() <= 1


def test_unknown_dataset():
    with pytest.raises(KeyError, match="unknown dataset"):
        build_dataset("svhn", "/nowhere")
