import itertools

import gymnasium as gym
import numpy as np
import pytest

import gym_vlm_cards  # noqa: F401
from gym_vlm_cards.formula import evaluate
from gym_vlm_cards.solver import is_solvable, solve
from tests.helpers import answer


def play(env, actions):
    results = [env.step(answer(a)) for a in actions]
    return results[-1]


@pytest.mark.parametrize(
    "cards, actions, reward, terminated",
    [
        (["H5", "S7"], ["5", "+", "7", "="], 10.0, True),
        (["H3", "SK"], ["3", "+", "10"], 0.0, False),
        (["H2", "S6"], ["2", "*", "6", "="], 10.0, True),
        (["H2", "S6"], ["2", "+", "6", "="], -1.0, True),  # 8, not 12
        (["H6", "S6"], ["6", "+", "6", "="], 10.0, True),  # the same number twice, two cards
        (["H5", "S7"], ["5", "="], -1.0, True),  # not every card used
        (["H5", "S7"], ["5", "7", "="], -1.0, True),  # numbers are atoms: "5 7" is not 57 nor 12
        (["HA", "SA"], ["1", "+", "="], -1.0, True),  # malformed
    ],
)
def test_ezpoints_rules(cards, actions, reward, terminated):
    env = gym.make("gym_cards/EZPoints-v0")
    env.reset(options={"cards": cards})
    _, r, term, trunc, info = play(env, actions)
    assert (r, term, trunc) == (reward, terminated, False)
    if term:
        assert info["is_success"] == (reward == 10.0)


def test_ezpoints_number_not_in_hand_costs_one_and_is_not_written():
    env = gym.make("gym_cards/EZPoints-v0")
    env.reset(options={"cards": ["H5", "S7"]})
    _, r, _, _, info = env.step(answer("9"))
    assert r == -1.0 and info["Formula"] == []
    env.step(answer("5"))
    _, r, _, _, info = env.step(answer("5"))  # the only 5 is used already
    assert r == -1.0 and info["Formula"] == ["5"]


def test_ezpoints_truncates_when_the_formula_is_longer_than_five():
    env = gym.make("gym_cards/EZPoints-v0")
    env.reset(options={"cards": ["H5", "S7"]})
    for action in ["+", "+", "+", "+", "+", "+"]:
        _, r, term, trunc, _ = env.step(answer(action))
        assert (r, term, trunc) == (0.0, False, False)
    _, r, term, trunc, info = env.step(answer("+"))
    assert (r, term, trunc) == (-1.0, False, True)
    assert info["is_success"] is False


def test_ezpoints_deals_are_always_solvable_with_plus_or_times():
    env = gym.make("gym_cards/EZPoints-v0")
    for seed in range(300):
        _, info = env.reset(seed=seed)
        a, b = info["Numbers"]
        assert a + b == 12 or a * b == 12
        assert info["solvable"]


@pytest.mark.parametrize(
    "cards, formula, reward",
    [
        (["H8", "S3", "D8", "C3"], "8 / ( 3 - 8 / 3 )", 10.0),  # floats get this one wrong
        (["HA", "S2", "D3", "C4"], "1 * 2 * 3 * 4", 10.0),
        (["HA", "S2", "D3", "C4"], "( 1 + 2 + 3 ) * 4", 10.0),
        (["HA", "S2", "D3", "C4"], "1 + 2 + 3 + 4", -1.0),
        (["HA", "S2", "D3", "C4"], "4 / ( 2 - 1 - 1 ) + 3", -1.0),  # division by zero: -1, no exception
        (["HA", "S2", "D3", "C4"], "( 1 + 2 * 3 * 4", -1.0),
        (["HK", "SQ", "DJ", "CT"], "10 + 10 + 10 - 10", -1.0),
    ],
)
def test_points24_rules(cards, formula, reward):
    env = gym.make("gym_cards/Points24-v0")
    env.reset(options={"cards": cards})
    _, r, term, trunc, info = play(env, formula.split() + ["="])
    assert (r, term, trunc) == (reward, True, False)
    assert info["is_success"] == (reward == 10.0)


def test_points24_truncates_when_the_formula_is_longer_than_twenty():
    env = gym.make("gym_cards/Points24-v0")
    env.reset(options={"cards": ["H8", "S3", "D8", "C3"]})
    for _ in range(21):
        _, r, term, trunc, _ = env.step(answer("("))
        assert not trunc
    _, r, term, trunc, _ = env.step(answer("("))
    assert (r, term, trunc) == (-1.0, False, True)


def test_points24_face_cards_can_count_eleven_to_thirteen():
    env = gym.make("gym_cards/Points24-v0", face_cards_as_ten=False)
    # 13 numbers, six operators and brackets, and "=".
    assert gym.make("gym_cards/Points24-v0", face_cards_as_ten=False, action_mode="discrete").action_space.n == 20
    _, info = env.reset(options={"cards": ["HK", "SQ", "DJ", "CA"]})
    assert info["Numbers"] == [13, 12, 11, 1]
    assert "13" in env.unwrapped.legal_actions
    _, r, *_ = play(env, "13 + 12 - 1".split() + ["="])
    assert r == -1.0  # uses only three cards
    env.reset(options={"cards": ["HK", "SQ", "DJ", "CA"]})
    _, r, *_ = play(env, "( 13 - 11 ) * 12 * 1 =".split())
    assert r == 10.0


def test_points24_solvable_flag_matches_the_solver():
    env = gym.make("gym_cards/Points24-v0")
    for seed in range(100):
        _, info = env.reset(seed=seed)
        assert info["solvable"] == is_solvable(info["Numbers"], 24)


@pytest.mark.slow
def test_solver_counts_the_known_number_of_solvable_deals():
    deals = list(itertools.combinations_with_replacement(range(1, 14), 4))
    solvable = [d for d in deals if is_solvable(d, 24)]
    assert len(deals) == 1820 and len(solvable) == 1362  # the standard count for ranks 1-13
    for deal in solvable[::20]:
        tokens = solve(deal, 24)
        assert evaluate(tokens) == 24
        assert sorted(int(t) for t in tokens if t.isdigit()) == sorted(deal)


@pytest.mark.parametrize("env_id, bad", [("gym_cards/EZPoints-v0", ["H5"]), ("gym_cards/Points24-v0", ["H5", "S7", "D2"]),
                                          ("gym_cards/EZPoints-v0", ["X5", "S7"]), ("gym_cards/EZPoints-v0", ["H1", "S7"]),
                                          ("gym_cards/EZPoints-v0", "H5S7")])
def test_bad_card_options_raise_a_value_error(env_id, bad):
    with pytest.raises(ValueError, match="card|cards"):
        gym.make(env_id).reset(options={"cards": bad})


def test_action_mask_marks_numbers_not_in_hand():
    env = gym.make("gym_cards/EZPoints-v0", action_mode="discrete")
    env.reset(options={"cards": ["H5", "S7"]})
    task = env.unwrapped
    mask = task.action_masks()
    allowed = {a for a, m in zip(task.legal_actions, mask) if m}
    assert allowed == {"5", "7", "+", "*", "="}
    assert np.array_equal(mask, task.action_mask())
