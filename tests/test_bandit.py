import json

import pytest
import torch

import fastflow as ff

MEANS = [0.2, 0.5, 0.8, 0.45]


def play(bandit, rounds, seed=0):
    """Bernoulli arms with MEANS; returns the arms pulled."""
    g = torch.Generator().manual_seed(seed)
    pulls = []
    for _ in range(rounds):
        a = bandit.select(generator=g)
        bandit.update(a, float(torch.rand((), generator=g).item() < MEANS[a]))
        pulls.append(a)
    return pulls


def regret(pulls):
    return sum(max(MEANS) - MEANS[a] for a in pulls)


def test_ucb1_finds_the_best_arm_and_its_regret_is_sublinear():
    pulls = play(ff.bandit.UCB1(len(MEANS)), 4000)
    last = pulls[-1000:]
    assert last.count(2) / len(last) >= 0.9
    r1, r2 = regret(pulls[:2000]), regret(pulls)
    # the second half adds much less regret than the first: regret(T) ~ log T, not ~ T
    assert r2 - r1 < 0.5 * r1
    assert r2 < 0.1 * 4000 * (max(MEANS) - min(MEANS))


@pytest.mark.parametrize("kind", ["epsilon-greedy", "thompson"])
def test_other_bandits_also_learn(kind):
    pulls = play(ff.bandit.make_bandit(kind, len(MEANS)), 3000)
    assert pulls[-1000:].count(2) / 1000 >= 0.85


def test_every_arm_is_tried_first_and_available_arms_are_respected():
    b = ff.bandit.UCB1(5)
    assert [b.select() for _ in range(1)] == [0]
    for a in range(5):
        assert b.select() == a
        b.update(a, 0.0)
    for _ in range(20):
        a = b.select(available=[1, 3])
        assert a in (1, 3)
        b.update(a, 1.0 if a == 3 else 0.0)


def test_ucb1_bonus_formula():
    """select() follows argmax mean_a + sqrt(c ln n / n_a), as the bonus changes with the counts and c."""
    def play(c, pulls):
        b = ff.bandit.UCB1(2, c=c)
        for arm, reward in pulls:
            b.update(arm, reward)
        return b.select()

    few = [(0, 0.6), (0, 0.6), (1, 0.5)]
    # n = 3: arm 0: 0.6 + sqrt(2 ln 3 / 2) = 1.648; arm 1: 0.5 + sqrt(2 ln 3) = 1.982
    assert play(2.0, few) == 1
    # n = 6: arm 0: 0.6 + sqrt(2 ln 6 / 2) = 1.939; arm 1: 0.5 + sqrt(2 ln 6 / 4) = 1.447
    assert play(2.0, few + [(1, 0.5)] * 3) == 0
    # c = 0 is greedy: the better mean wins although arm 1 was pulled less
    assert play(0.0, few) == 0
    # c = 0.1: arm 0: 0.6 + sqrt(0.1 ln 3 / 2) = 0.834; arm 1: 0.5 + sqrt(0.1 ln 3) = 0.831
    assert play(0.1, few) == 0 and play(0.12, few) == 1


@pytest.mark.parametrize("kind", sorted(ff.bandit.BANDITS))
def test_state_dict_round_trips_exactly_through_json(kind):
    a = ff.bandit.make_bandit(kind, 4)
    play(a, 200, seed=1)
    b = ff.bandit.make_bandit(kind, 4)
    b.load_state_dict(json.loads(json.dumps(a.state_dict())))
    assert b.state_dict() == a.state_dict()
    # and behaves identically from there on
    assert play(a, 100, seed=7) == play(b, 100, seed=7)


def test_bad_bandit_input():
    with pytest.raises(ValueError, match="unknown bandit"):
        ff.bandit.make_bandit("softmax", 3)
    with pytest.raises(ValueError, match="at least one arm"):
        ff.bandit.UCB1(0)
    b = ff.bandit.UCB1(3)
    with pytest.raises(IndexError):
        b.update(3, 1.0)
    with pytest.raises(ValueError, match="finite"):
        b.update(0, float("nan"))
    with pytest.raises(ValueError, match="for ucb1 with 3 arms"):
        ff.bandit.UCB1(4).load_state_dict(b.state_dict())


@pytest.mark.parametrize("change, match", [
    ({"counts": [1, -1, 0]}, "'counts' must be ints >= 0"),
    ({"counts": [1, 1.5, 0]}, "'counts' must be ints >= 0"),
    ({"sums": [0.0, float("nan"), 0.0]}, "'sums' must be finite"),
    ({"sq_sums": [0.0, -1.0, 0.0]}, "'sq_sums' finite and >= 0"),
    ({"hyper": {"c": 5.0}}, r"learned with \{'c': 5.0\}, this bandit has \{'c': 2.0\}"),
    ({"hyper": {"__class__": "x"}}, "'hyper' may only hold \\['c'\\]"),
    ({"extra": 1}, "has keys"),
    ({"sums": None}, "'sums' must list 3 numbers"),
])
def test_bandit_state_is_validated_field_by_field_and_left_untouched_on_error(change, match):
    b = ff.bandit.UCB1(3, c=2.0)
    b.update(1, 0.5)
    before = b.state_dict()
    with pytest.raises(ValueError, match=match):
        b.load_state_dict({**before, **change})
    assert b.state_dict() == before
    b.load_state_dict(before)  # a valid state round-trips
    assert b.state_dict() == before


@pytest.mark.parametrize("arm", [-1, 5, 1.0, True])
def test_arm_indices_are_checked(arm):
    b = ff.bandit.UCB1(5)
    with pytest.raises(IndexError, match="out of range for 5 arms"):
        b.select([arm])
    with pytest.raises(IndexError, match="out of range for 5 arms"):
        b.mean(arm)
