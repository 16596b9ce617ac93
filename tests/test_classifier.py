"""The shipped MNIST classifier, its checkpoint format, its feature statistics, and the idx reader."""

import gzip
import os
import struct
import sys

import numpy as np
import pytest
import torch

from fastflow.metrics import classifier_accuracy, feature_statistics, frechet_distance
from models.classifier import (
    ClassifierConfig,
    DigitClassifier,
    extract_features,
    load_classifier,
    load_feature_stats,
    save_classifier,
    save_feature_stats,
)
from models.data import read_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from train_classifier import load_digits  # noqa: E402

CKPT = os.path.join(ROOT, "checkpoints", "mnist_classifier.pt")
STATS = os.path.join(ROOT, "checkpoints", "mnist_feature_stats.pt")
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "mnist"))

needs_ckpt = pytest.mark.skipif(not os.path.isfile(CKPT), reason="shipped classifier absent")
needs_data = pytest.mark.skipif(
    not os.path.isfile(os.path.join(DATA, "t10k-images-idx3-ubyte.gz")), reason="MNIST t10k data absent"
)


@pytest.fixture(scope="module")
def digits():
    return load_digits(DATA)  # (10000, 1, 28, 28) in [-1, 1], (10000,)


@pytest.fixture(scope="module")
def shipped():
    return load_classifier(CKPT)


# --------------------------------------------------------------------- shipped weights
@needs_ckpt
@needs_data
def test_shipped_classifier_accuracy(shipped, digits):
    x, y = digits
    assert not shipped.training
    # 9,000 of these trained it; the last 1,000 were held out
    assert classifier_accuracy(shipped, x, y) >= 0.99
    assert classifier_accuracy(shipped, x[-1000:], y[-1000:]) >= 0.98


@needs_ckpt
@needs_data
def test_shipped_feature_stats_match_real_digits(shipped, digits):
    x, _ = digits
    mu, sigma = load_feature_stats(STATS, shipped)  # also checks the fingerprint
    d = shipped.config.feature_dim
    assert mu.shape == (d,) and sigma.shape == (d, d) and mu.dtype == sigma.dtype == torch.float64
    feats = extract_features(shipped, x)
    mu_r, sigma_r = feature_statistics(feats)
    assert frechet_distance(mu_r, sigma_r, mu, sigma) == pytest.approx(0.0, abs=1e-6)
    # half of the real digits are close to the full set; uniform noise is far away
    fd_half = frechet_distance(*feature_statistics(feats[:5000]), mu, sigma)
    noise = torch.rand(2000, 1, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    fd_noise = frechet_distance(*feature_statistics(extract_features(shipped, noise)), mu, sigma)
    assert fd_half < 0.05 * fd_noise, (fd_half, fd_noise)


@needs_ckpt
def test_shipped_files_are_small():
    assert os.path.getsize(CKPT) < 1_000_000
    assert os.path.getsize(STATS) < 1_000_000


# --------------------------------------------------------------------- model and format
def test_features_and_logits_shapes():
    model = DigitClassifier(ClassifierConfig(feature_dim=96)).eval()
    x = torch.rand(5, 1, 28, 28) * 2 - 1
    f = model.features(x)
    assert f.shape == (5, 96) and (f >= 0).all()  # post-ReLU
    assert model(x).shape == (5, 10)
    assert extract_features(model, x, batch_size=2).shape == (5, 96)
    with pytest.raises(ValueError, match=r"\(N, 1, 28, 28\)"):
        model.features(torch.zeros(5, 28, 28))


def test_round_trip_identical_logits(tmp_path):
    torch.manual_seed(0)
    model = DigitClassifier(ClassifierConfig(channels=(8, 16, 16), feature_dim=64))
    # make BatchNorm running statistics non-trivial
    model.train()
    model(torch.rand(32, 1, 28, 28) * 2 - 1)
    model.eval()
    path = tmp_path / "clf.pt"
    save_classifier(path, model, meta={"note": "test"})
    assert [p.name for p in tmp_path.iterdir()] == ["clf.pt"]  # no temp file left behind
    loaded = load_classifier(path)
    assert not loaded.training and loaded.config == model.config
    x = torch.rand(7, 1, 28, 28) * 2 - 1
    assert torch.equal(loaded(x), model(x))
    assert torch.equal(loaded.features(x), model.features(x))


def test_missing_file_raises(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_classifier(tmp_path / "nope.pt")


def test_corrupt_file_raises(tmp_path):
    model = DigitClassifier()
    path = tmp_path / "clf.pt"
    save_classifier(path, model)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])  # truncated
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier(path)
    path.write_bytes(b"definitely not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        load_classifier(path)


def test_wrong_format_and_mismatched_weights_raise(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"state_dict": {}}, path)
    with pytest.raises(ValueError, match="not a fastflow-mnist-classifier file"):
        load_classifier(path)
    # weights of a wider model under a narrower config
    save_classifier(path, DigitClassifier(ClassifierConfig(feature_dim=64)))
    ckpt = torch.load(path, weights_only=True)
    ckpt["config"]["feature_dim"] = 32
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match="do not match"):
        load_classifier(path)


def test_feature_stats_round_trip_and_fingerprint(tmp_path):
    torch.manual_seed(1)
    a, b = DigitClassifier().eval(), DigitClassifier().eval()
    feats = extract_features(a, torch.rand(200, 1, 28, 28) * 2 - 1)  # N > D = 128: feature_statistics needs it
    mu, sigma = feature_statistics(feats)
    path = tmp_path / "stats.pt"
    save_feature_stats(path, mu, sigma, 200, a, source="test")
    mu2, sigma2 = load_feature_stats(path, a)
    assert torch.equal(mu, mu2) and torch.equal(sigma, sigma2)
    with pytest.raises(ValueError, match="computed with classifier"):
        load_feature_stats(path, b)
    clf_path = tmp_path / "clf.pt"
    save_classifier(clf_path, a)
    with pytest.raises(ValueError, match="not a fastflow-mnist-feature-stats file"):
        load_feature_stats(clf_path)  # a classifier file is not a statistics file


# --------------------------------------------------------------------- idx reader
def _idx_bytes(arr: np.ndarray) -> bytes:
    header = bytes([0, 0, 0x08, arr.ndim]) + b"".join(struct.pack(">i", d) for d in arr.shape)
    return header + arr.astype(np.uint8).tobytes()


def test_read_idx_plain_and_gzip(tmp_path):
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    (tmp_path / "a-idx3-ubyte").write_bytes(_idx_bytes(arr))
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(_idx_bytes(arr)))
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a-idx3-ubyte")), arr)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "a-idx3-ubyte.gz")), arr)
    (tmp_path / "bad").write_bytes(_idx_bytes(arr)[:-1])
    with pytest.raises(ValueError, match="header says"):
        read_idx(str(tmp_path / "bad"))


@needs_data
def test_read_real_mnist(digits):
    x, y = digits
    assert x.shape == (10000, 1, 28, 28) and y.shape == (10000,)
    assert x.min() == -1 and x.max() == 1
    assert set(y.tolist()) == set(range(10))
