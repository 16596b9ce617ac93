"""benchmarks/train_overhead.py: fake data in the real formats, and a well-formed report."""
import json
import os
import sys

import pytest
import torch

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "benchmarks"))
import train_overhead  # noqa: E402
from models.data import build_dataset  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.mark.parametrize("name, shape, classes", [("mnist", (1, 28, 28), 10), ("cifar10", (3, 32, 32), 10),
                                                   ("imagenet64", (3, 64, 64), 1000)])
def test_fake_data_loads_through_the_real_readers(tmp_path, name, shape, classes):
    train_overhead.write_fake_data(name, str(tmp_path), 24)
    dataset, info = build_dataset(name, str(tmp_path), train=False)
    x, y = dataset[5]
    assert len(dataset) == 24 and x.shape == shape and info.num_classes == classes
    assert -1 <= x.min() < x.max() <= 1 and y == 5 % 10


def test_report_is_well_formed(tmp_path):
    out = tmp_path / "r.json"
    assert train_overhead.main(["--model", "DiT-MNIST-tiny", "--batch-size", "8", "--steps", "2", "--warmup", "1",
                                "--repeats", "1", "--images", "32", "--threads", "1", "--out", str(out)]) == 0
    with open(out) as f:
        record = json.load(f)
    (row,) = record["rows"]
    assert row["model"] == "DiT-MNIST-tiny" and row["batch"] == 8 and row["precision"] == "fp32"
    assert row["ratio_data_on_device"] == pytest.approx(row["train_data_on_device_ms"] / row["bare_ms"], rel=0.02)
    assert record["machine"]["device"] == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(SystemExit):
        train_overhead.main(["--images", "4"])  # fewer images than one batch
