import gymnasium as gym
import pytest

import gym_vlm_cards  # noqa: F401
from tests.helpers import answer


def make(**kwargs):
    return gym.make("gym_cards/NumberLine-v0", **kwargs)


@pytest.mark.parametrize(
    "current, target, action, reward, after, terminated",
    [
        (1, 3, "+", 0.0, 2, False),  # closer
        (2, 3, "+", 1.0, 3, True),  # reached
        (1, 3, "-", -1.0, 0, False),  # further away
        (0, 3, "-", -1.0, 0, False),  # pushing against the left end
        (5, 2, "+", -1.0, 5, False),  # pushing against the right end
        (4, 2, "-", 0.0, 3, False),
        (3, 2, "-", 1.0, 2, True),
    ],
)
def test_rules(current, target, action, reward, after, terminated):
    env = make()
    env.reset(options={"current": current, "target": target})
    _, r, term, trunc, info = env.step(answer(action))
    assert (r, info["Current"], term, trunc) == (reward, after, terminated, False)
    assert info["Target"] == target
    if terminated:
        assert info["is_success"] is True


def test_truncated_after_twice_max_position_steps():
    env = make(max_position=5)
    env.reset(options={"current": 0, "target": 5})
    for i in range(10):
        _, _, terminated, truncated, info = env.step(answer("-"))
        assert not terminated
        assert truncated == (i == 9)
    assert info["is_success"] is False


def test_random_starts_are_in_range_and_never_equal():
    env = make(max_position=3)
    seen = set()
    for seed in range(300):
        _, info = env.reset(seed=seed)
        assert 0 <= info["Current"] <= 3 and 0 <= info["Target"] <= 3
        assert info["Current"] != info["Target"]
        seen.add((info["Current"], info["Target"]))
    assert len(seen) == 12  # every ordered pair of distinct positions occurs


@pytest.mark.parametrize(
    "options, message",
    [
        ({"current": 1}, "exactly"),
        ({"current": 1, "target": 1}, "differ"),
        ({"current": 1, "target": 9}, "target"),
        ({"current": "1", "target": 2}, "current"),
        ({"current": 1, "target": 2, "extra": 0}, "exactly"),
    ],
)
def test_bad_options_raise_a_value_error(options, message):
    with pytest.raises(ValueError, match=message):
        make().reset(options=options)


def test_max_position_must_be_positive():
    with pytest.raises(ValueError, match="max_position"):
        make(max_position=0)
