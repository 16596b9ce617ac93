"""The shipped model trained with the flow_matching library: it loads with torch alone and is a checkerboard."""
import math

import pytest
import torch

import fastflow as ff
from benchmarks.peer_model import DEFAULT_PEER, checkerboard, load_peer, occupied_fraction, sliced_w1


def test_shipped_peer_model_samples_land_on_the_checkerboard():
    model = load_peer(DEFAULT_PEER)
    x = ff.EulerSampler(50).sample(model, torch.randn(2000, 2, generator=torch.Generator().manual_seed(3))).x
    assert x.shape == (2000, 2)
    assert occupied_fraction(x) > 0.85  # measured 0.91 with Euler-100 on 10,000 samples (PEER_CARD.md)
    assert occupied_fraction(torch.randn(2000, 2, generator=torch.Generator().manual_seed(3)) * 2) < 0.6


def test_a_file_of_another_format_is_refused_naming_it(tmp_path):
    bad = tmp_path / "bad.pt"
    torch.save({"format": "something else"}, bad)
    with pytest.raises(ValueError, match="bad.pt"):
        load_peer(str(bad))
    bad.write_bytes(b"garbage")
    with pytest.raises(ValueError, match="bad.pt"):
        load_peer(str(bad))


def test_sliced_w1_is_zero_on_identical_sets_and_mean_abs_cos_for_a_shift():
    g = torch.Generator().manual_seed(0)
    a = checkerboard(500, g).double()
    assert sliced_w1(a, a, torch.Generator().manual_seed(1)) == 0.0
    shift = 0.7  # shifting by (a, 0) moves every projection by a cos(theta): W1 = mean |a cos theta| = 2a / pi
    got = sliced_w1(a + torch.tensor([shift, 0.0], dtype=torch.float64), a, torch.Generator().manual_seed(1), 4096)
    assert got == pytest.approx(2 * shift / math.pi, rel=0.03)
