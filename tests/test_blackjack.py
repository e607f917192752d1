import gymnasium as gym
import pytest

import gym_vlm_cards  # noqa: F401
from gym_vlm_cards.cards import Card
from gym_vlm_cards.tasks.blackjack import basic_strategy, hand_total
from tests.helpers import answer


def cards(*codes):
    return [Card.parse(c) for c in codes]


@pytest.mark.parametrize(
    "codes, total",
    [(("HA", "SK"), 21), (("HA", "SA"), 12), (("HA", "S5", "D9"), 15), (("HK", "SQ", "D2"), 22), (("H9", "S7"), 16)],
)
def test_hand_totals(codes, total):
    assert hand_total(cards(*codes)) == total


@pytest.mark.parametrize(
    "player, dealer, reward",
    [
        (["HK", "SQ"], ["D9", "C8"], 1.0),  # 20 vs 17
        (["HK", "S7"], ["D9", "CT"], -1.0),  # 17 vs 19
        (["HK", "S8"], ["D9", "C9"], 0.0),  # 18 vs 18
        (["HK", "S8"], ["D9", "C3", "HK"], 1.0),  # dealer 12 draws the ten: bust
    ],
)
def test_stand_settles_against_the_dealer(player, dealer, reward):
    env = gym.make("gym_cards/Blackjack-v0")
    env.reset(options={"player": player, "dealer": dealer[:2]})
    task = env.unwrapped
    if len(dealer) > 2:
        # Stack the dealer's next draw by replacing the drawing function with a fixed card.
        task._draw_card = lambda: Card.parse(dealer[2])
    _, r, terminated, truncated, info = env.step(answer("stand"))
    assert (r, terminated, truncated) == (reward, True, False)
    assert info["is_success"] == (reward > 0)
    assert len(info["Dealer Card"]) >= 2  # the whole dealer hand is revealed at the end


def test_hitting_into_a_bust_loses():
    env = gym.make("gym_cards/Blackjack-v0")
    env.reset(options={"player": ["HK", "SQ"], "dealer": ["D9", "C8"]})
    env.unwrapped._draw_card = lambda: Card.parse("H5")
    _, r, terminated, _, info = env.step(answer("hit"))
    assert (r, terminated, info["is_success"]) == (-1.0, True, False)
    assert info["Player Card"] == ["HK", "SQ", "H5"]


def test_only_the_face_up_dealer_card_is_shown_while_playing():
    env = gym.make("gym_cards/Blackjack-v0")
    _, info = env.reset(options={"player": ["H2", "S3"], "dealer": ["D9", "C8"]})
    assert info["Dealer Card"] == ["D9"]
    assert "8" not in info["text_state"].split("dealer shows")[1]


@pytest.mark.parametrize(
    "natural, sab, dealer, reward",
    [(True, False, ["D9", "C8"], 1.5), (False, False, ["D9", "C8"], 1.0), (False, True, ["DA", "CK"], 0.0),
     (False, True, ["D9", "C8"], 1.0), (True, False, ["DA", "CK"], 0.0)],
)
def test_natural_and_sab_options(natural, sab, dealer, reward):
    env = gym.make("gym_cards/Blackjack-v0", natural=natural, sab=sab)
    env.reset(options={"player": ["HA", "SK"], "dealer": dealer})
    _, r, *_ = env.step(answer("stand"))
    assert r == reward


@pytest.mark.parametrize(
    "player, up, action",
    [(("HT", "S6"), "D7", "hit"), (("HT", "S6"), "D6", "stand"), (("HT", "S2"), "D4", "stand"), (("HT", "S2"), "D3", "hit"),
     (("HA", "S7"), "D9", "hit"), (("HA", "S7"), "D8", "stand"), (("HA", "S6"), "D5", "hit"), (("H9", "S2"), "DA", "hit"),
     (("HT", "S7"), "DA", "stand")],
)
def test_basic_strategy(player, up, action):
    assert basic_strategy(cards(*player), Card.parse(up)) == action


@pytest.mark.parametrize("options", [{"player": ["HA"], "dealer": ["D9", "C8"]}, {"player": ["HK", "SQ", "D5"], "dealer": ["D9", "C8"]},
                                     {"player": ["HK", "SQ"]}, {"player": ["HK", "ZZ"], "dealer": ["D9", "C8"]}])
def test_bad_blackjack_options(options):
    with pytest.raises(ValueError):
        gym.make("gym_cards/Blackjack-v0").reset(options=options)


def test_oracle_thoughts_read_the_cards_before_adding_them_up():
    env = gym.make("gym_cards/Blackjack-v0")
    env.reset(options={"player": ["HA", "S6"], "dealer": ["D9", "C8"]})
    thoughts = env.unwrapped.oracle_thoughts()["thoughts"]
    assert thoughts == "My cards are A 6, soft 17, against the dealer's 9; basic strategy says hit."
