"""The Fashion-MNIST judge: the shipped classifier and statistics, the dataset a classifier belongs to
(and the refusal to judge another dataset's samples), the default judge of a dataset, and the
refusal of feature statistics from fewer samples than feature dimensions."""
import json
import os
import sys

import pytest
import torch

from fastflow.metrics import classifier_accuracy, feature_statistics
from models.classifier import (CHECKPOINTS, ClassifierConfig, DigitClassifier, check_judge, default_judge_files,
                               load_classifier, load_feature_stats, model_dataset, save_classifier)
from models.data import build_dataset
from models.evaluation import Judge
from problems import fake_digits, write_idx

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import train_classifier  # noqa: E402

CKPT, STATS = default_judge_files("fashion-mnist")
DATA = os.path.normpath(os.path.join(ROOT, "..", "shared", "data", "fashion-mnist"))
MNIST_META, FASHION_META = {"data": {"name": "mnist"}}, {"data": {"name": "fashion-mnist"}}

pytestmark = pytest.mark.usefixtures("one_thread")
needs_ckpt = pytest.mark.skipif(not os.path.isfile(CKPT), reason="shipped Fashion-MNIST classifier absent")
needs_data = pytest.mark.skipif(not os.path.isfile(os.path.join(DATA, "t10k-images-idx3-ubyte.gz")),
                                reason="Fashion-MNIST test data absent")


def tiny(dataset="mnist"):
    return DigitClassifier(ClassifierConfig(channels=(2, 2, 2), feature_dim=4), dataset).eval()


# --------------------------------------------------------------------- which classifier judges which model
def test_a_classifier_refuses_samples_of_the_other_dataset_both_ways():
    with pytest.raises(ValueError) as e:
        check_judge(tiny("fashion-mnist"), MNIST_META)
    assert str(e.value) == ("the fashion-mnist classifier cannot judge samples of a model trained on mnist: "
                            "use checkpoints/mnist_classifier.pt")
    with pytest.raises(ValueError) as e:
        check_judge(tiny("mnist"), FASHION_META)
    assert str(e.value) == ("the mnist classifier cannot judge samples of a model trained on fashion-mnist: "
                            "use checkpoints/fashion_classifier.pt")
    with pytest.raises(ValueError) as e:
        check_judge(tiny("mnist"), {"data": {"name": "cifar10"}})
    assert str(e.value) == ("the mnist classifier cannot judge samples of a model trained on cifar10: "
                            "classifiers exist for models of fashion-mnist, mnist, moving-mnist only")


def test_matching_pairs_pass_and_a_model_that_does_not_say_is_an_mnist_one():
    check_judge(tiny("mnist"), MNIST_META)
    check_judge(tiny("mnist"), {"data": {"name": "moving-mnist"}})  # clips of MNIST digits
    check_judge(tiny("fashion-mnist"), FASHION_META)
    for meta in (None, {}, {"step": 3}, {"data": {}}):
        assert model_dataset(meta) == "mnist"
        check_judge(tiny("mnist"), meta)
    with pytest.raises(ValueError, match="dataset must be one of"):
        DigitClassifier(dataset="cifar10")


def test_default_judge_files_of_each_dataset(tmp_path):
    assert default_judge_files("fashion-mnist") == (os.path.join(CHECKPOINTS, "fashion_classifier.pt"),
                                                    os.path.join(CHECKPOINTS, "fashion_feature_stats.pt"))
    assert default_judge_files("mnist") == default_judge_files("moving-mnist") == (
        os.path.join(CHECKPOINTS, "mnist_classifier.pt"), os.path.join(CHECKPOINTS, "mnist_feature_stats.pt"))
    assert default_judge_files("cifar10") is None
    assert default_judge_files("mnist", tmp_path)[0] == os.path.join(tmp_path, "mnist_classifier.pt")
    assert os.path.isfile(default_judge_files("mnist")[0])  # the shipped MNIST pair lives there


def test_the_dataset_is_stored_and_an_old_file_without_it_is_mnist(tmp_path):
    path = tmp_path / "clf.pt"
    save_classifier(path, tiny("fashion-mnist"))
    assert load_classifier(path).dataset == "fashion-mnist"
    ckpt = torch.load(path, weights_only=True)
    assert ckpt["dataset"] == "fashion-mnist" and ckpt["version"] == 1
    del ckpt["dataset"]  # as every file written before there were two datasets
    torch.save(ckpt, path)
    assert load_classifier(path).dataset == "mnist"
    ckpt["dataset"] = "svhn"
    torch.save(ckpt, path)
    with pytest.raises(ValueError, match=r"clf.pt: classifier of unknown dataset 'svhn' \(known: fashion-mnist, mnist\)"):
        load_classifier(path)
    assert "dataset" not in torch.load(default_judge_files("mnist")[0], weights_only=True)  # the shipped old one
    assert load_classifier(default_judge_files("mnist")[0]).dataset == "mnist"


# --------------------------------------------------------------------- too few samples for an FD
def test_feature_statistics_need_more_samples_than_dimensions():
    f = torch.randn(129, 128, generator=torch.Generator().manual_seed(0))
    assert torch.linalg.matrix_rank(feature_statistics(f)[1]) == 128
    with pytest.raises(ValueError) as e:
        feature_statistics(f[:128])
    assert str(e.value) == ("128 samples of 128-dimensional features give a rank-deficient covariance: "
                            "feature statistics need more samples than dimensions (N > D = 128)")
    with pytest.raises(ValueError, match=r"got shape \(5, 0\)"):
        feature_statistics(torch.zeros(5, 0))


# --------------------------------------------------------------------- the shipped Fashion-MNIST judge
@needs_ckpt
def test_shipped_fashion_judge_files():
    clf = load_classifier(CKPT)
    assert clf.dataset == "fashion-mnist" and not clf.training and clf.config.feature_dim == 128
    meta = torch.load(CKPT, weights_only=True)["meta"]
    assert meta["test_accuracy"] >= 0.9 and meta["val_accuracy"] >= 0.9  # 10,000 test images never trained on
    mu, sigma = load_feature_stats(STATS, clf)  # also checks the classifier's fingerprint
    assert mu.shape == (128,) and sigma.shape == (128, 128) and sigma.dtype == torch.float64
    assert torch.linalg.matrix_rank(sigma) == 128
    assert torch.load(STATS, weights_only=True)["n"] == 10_000
    assert os.path.getsize(CKPT) < 500_000 and os.path.getsize(STATS) < 500_000


@needs_ckpt
def test_judge_picks_and_checks_the_files_of_the_models_dataset():
    judge = Judge.for_model(FASHION_META)
    assert judge.classifier.dataset == "fashion-mnist" and judge.min_fd_samples == 129
    with pytest.raises(ValueError, match="the mnist classifier cannot judge samples of a model trained on fashion-mnist"):
        Judge(*default_judge_files("mnist"), model_meta=FASHION_META)
    with pytest.raises(ValueError, match="no classifier judges samples of a model trained on cifar10"):
        Judge.for_model({"data": {"name": "cifar10"}})
    with pytest.raises(ValueError, match=r"50 samples of 128-dimensional features .* \(N > D = 128\)"):
        judge.fid(torch.zeros(50, 1, 28, 28))


@needs_ckpt
@needs_data
def test_shipped_fashion_classifier_reads_real_test_images():
    dataset, _ = build_dataset("fashion-mnist", DATA, train=False)
    x, y = dataset.images[:500].float() / 127.5 - 1, dataset.labels[:500]
    assert classifier_accuracy(load_classifier(CKPT), x, y) >= 0.85


# --------------------------------------------------------------------- training it, and sample.py's check
def test_train_classifier_on_fashion_idx_files(tmp_path):
    root = tmp_path / "data"
    write_idx(root, "train", *fake_digits(60))
    write_idx(root, "t10k", *fake_digits(20, seed=1))
    out, stats = tmp_path / "c.pt", tmp_path / "s.pt"
    meta = train_classifier.main(train_classifier.parse_args([
        "--dataset", "fashion-mnist", "--data-root", str(root), "--out", str(out), "--stats-out", str(stats),
        "--epochs", "1", "--val", "10", "--batch-size", "16", "--channels", "2", "2", "2", "--feature-dim", "8",
        "--threads", "1"]))
    clf = load_classifier(out)
    assert clf.dataset == "fashion-mnist" and "test_accuracy" in meta and "all_10k_accuracy" not in meta
    assert meta["data"] == "Fashion-MNIST train: first 50 train, last 10 validation; test: 20, [-1, 1]"
    assert torch.load(stats, weights_only=True)["n"] == 20  # the statistics are the test images'
    load_feature_stats(stats, clf)
    # MNIST keeps the defaults of its shipped files
    assert train_classifier.DATASETS["mnist"] == dict(
        data_root="../shared/data/mnist", out="checkpoints/mnist_classifier.pt",
        stats_out="checkpoints/mnist_feature_stats.pt", epochs=30, val=1000)
    assert train_classifier.parse_args([]).dataset == "mnist"


@needs_ckpt
def test_sample_py_refuses_the_judge_of_another_dataset(tmp_path, capsys):
    from sample import cli
    payload = torch.load(os.path.join(ROOT, "checkpoints", "dit_mnist.pt"), weights_only=True)
    payload["data"] = {**payload["data"], "name": "fashion-mnist"}
    ckpt = tmp_path / "fashion_dit.pt"
    torch.save(payload, ckpt)
    argv = ["--ckpt", str(ckpt), "--sampler", "euler", "--steps", "2", "--n", "2", "--batch-size", "2", "--quiet",
            "--out", str(tmp_path / "g.png")]
    assert cli([*argv, "--classifier", default_judge_files("mnist")[0]]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.endswith(
        "the mnist classifier cannot judge samples of a model trained on fashion-mnist: "
        "use checkpoints/fashion_classifier.pt")
    assert not (tmp_path / "g.png").exists()
    report = tmp_path / "r.json"
    assert cli([*argv, "--report-json", str(report)]) == 0  # the default judge is the model's dataset's
    assert "accuracy" in json.loads(report.read_text())["rows"][0]
