import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded, and the CPU is shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def pytest_collection_modifyitems(config, items):
    """Tests marked ``cuda`` need a CUDA device; without one they are skipped, not failed."""
    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs a CUDA device")
    for item in items:
        if item.get_closest_marker("cuda") is not None:  # not item.keywords: a parameter id may say "cuda"
            item.add_marker(skip)


@pytest.fixture
def count_runs(monkeypatch):
    """Counts sampling runs: a refused run must not have started one."""
    import sample
    calls = []
    real = sample.run_batched
    monkeypatch.setattr(sample, "run_batched", lambda *a, **k: calls.append(1) or real(*a, **k))
    return calls


@pytest.fixture(scope="session")
def video_ckpt(tmp_path_factory):
    """A VideoDiT-MM-tiny after 2 steps on fake digits (raw weights exported: an EMA this young is
    the zero init), shared by the video tests."""
    import train
    from problems import fake_digits, write_idx
    d = tmp_path_factory.mktemp("video")
    root = write_idx(d / "mnist", "train", *fake_digits(20))
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        train.main(train.parse_args([
            "--dataset", "moving-mnist", "--data-root", str(root), "--model", "VideoDiT-MM-tiny", "--steps", "2",
            "--batch-size", "2", "--lr", "1e-2", "--warmup", "1", "--ema-decay", "0", "--out-dir", str(d / "run"),
            "--ckpt-every", "0", "--sample-every", "0", "--threads", "1", "--no-progress", "--export", str(d / "v.pt")]))
    finally:
        torch.set_num_threads(n)
    return str(d / "v.pt")
