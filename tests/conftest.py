import pytest
import torch


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest single-threaded, and the CPU is shared with other jobs."""
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
