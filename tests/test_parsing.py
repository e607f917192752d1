import json

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from gym_vlm_cards.parsing import extract_action, match_action, parse_action

LEGAL = ("1", "2", "10", "+", "-", "*", "/", "(", ")", "=", "stand", "hit")


@pytest.mark.parametrize(
    "text, expected",
    [
        ('{"thoughts": "go right", "action": "+"}', "+"),
        ('{"Action": "hit"}', "hit"),
        ('{"ACTION": " Stand "}', "stand"),
        ('```json\n{"thoughts": "x", "action": "-"}\n```', "-"),
        ("```\n{'thoughts': 'x', 'action': '='}\n```", "="),
        ("Sure! Here is my answer: {\"thoughts\": \"...\", \"action\": \"hit\",} Good luck.", "hit"),
        ('{"thoughts": "use ten", "action": 10}', "10"),
        ("{'action': 2, }", "2"),
        ('{"thoughts": "the action: hit is risky", "action": "stand"}', "stand"),
        ("action: hit", "hit"),
        ('{"action": "+"} then later {"action": "-"}', "-"),
        ('{"thoughts": "I pick \\"hit\\"", "action": "hit"}', "hit"),
    ],
)
def test_extracts_the_action_value(text, expected):
    assert parse_action(text, LEGAL) == expected


@pytest.mark.parametrize(
    "text",
    [
        "",
        "hit",  # no action key at all
        '{"thoughts": "hmm"}',
        '{"action": "hit me"}',
        '{"action": "++"}',
        '{"action": "11"}',
        '{"action": null}',
        '{"action": true}',
        '{"action": ["hit"]}',
        '{"action": ""}',
        "{\"action\": 'unterminated",
    ],
)
def test_rejects_answers_without_exactly_one_legal_action(text):
    assert parse_action(text, LEGAL) is None


def test_non_string_answer_is_a_type_error():
    with pytest.raises(TypeError, match="str"):
        extract_action(b'{"action": "+"}')


HOSTILE_BODIES = ('"action": ' * 100_000, "action:" * 150_000, "{" * 1_000_000, "'" + "a" * 1_000_000)


def test_megabyte_answers_of_repeated_keys_and_brackets_name_no_action():
    # How fast they parse is measured by benchmarks/hostile_answers.py, not asserted here.
    for body in HOSTILE_BODIES:
        assert parse_action(body, LEGAL) is None


def test_match_action_returns_the_canonical_spelling():
    assert match_action("  HIT ", LEGAL) == "hit"
    assert match_action(None, LEGAL) is None


@settings(max_examples=300, deadline=None)
@given(thoughts=st.text(max_size=200), action=st.sampled_from(LEGAL), key=st.sampled_from(["action", "Action", "ACTION"]))
def test_any_json_answer_round_trips(thoughts, action, key):
    answer = json.dumps({"thoughts": thoughts, key: action})
    assert parse_action(answer, LEGAL) == action
    fenced = f"Here you go:\n```json\n{answer}\n```\nDone."
    assert parse_action(fenced, LEGAL) == action


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=500))
def test_arbitrary_text_never_raises_and_yields_legal_or_none(text):
    assert parse_action(text, LEGAL) in (None, *LEGAL)


@settings(max_examples=200, deadline=None)
@given(action=st.sampled_from(LEGAL), padding=st.text(alphabet=" \t", max_size=3), upper=st.booleans())
def test_whitespace_and_case_do_not_matter(action, padding, upper):
    value = padding + (action.upper() if upper else action) + padding
    assert parse_action(json.dumps({"action": value}), LEGAL) == action


@pytest.mark.parametrize(
    "text, key",
    [
        ('{"thoughts": "a", "action": "+"}', '"action"'),
        ('{"thoughts": "the \\"action\\": is +", "action": "+"}', '"action": "+"'),
        ("thoughts then action: hit", "action: hit"),
    ],
)
def test_action_key_start_points_at_the_key_that_is_read(text, key):
    from gym_vlm_cards.parsing import action_key_start

    start = action_key_start(text)
    assert text[start:].startswith(key)


def test_action_key_start_is_none_without_a_key():
    from gym_vlm_cards.parsing import action_key_start

    assert action_key_start("just thinking") is None


def test_deeply_nested_answers_parse_instead_of_raising():
    nested = '{"a":' + "[" * 1000 + "]" * 1000 + ', "action": "+"}'
    assert parse_action(nested, LEGAL) == "+"
    import gymnasium as gym

    import gym_vlm_cards  # noqa: F401

    env = gym.make("gym_cards/NumberLine-v0")
    env.reset(seed=0)
    assert env.step(nested)[-1]["parsed_action"] == "+"


STRUCTURE = "{}[]\\\"':, actionAOI\n+-"


@settings(max_examples=300, deadline=None)
@given(st.text(), st.text(alphabet=STRUCTURE, max_size=400))
def test_no_string_makes_the_parser_raise(noise, structure):
    for text in (noise, structure, structure + noise, '{"action": ' + structure):
        result = parse_action(text, LEGAL)
        assert result is None or result in LEGAL


@pytest.mark.parametrize(
    "text, value, key",
    [
        # a quoted 'action' inside another key's string is prose, not the key the parser reads
        ('{"action": "+", "note": "\'action\': \'-\'"}', "+", '"action": "+"'),
        # a key the strict reader accepts (case and padding) has its split
        ('{"ACTION ": "+"}', "+", '"ACTION "'),
        # a raw newline inside the value stays inside the string, quote not included
        ('{"action": "+\n"}', "+\n", '"action"'),
        ('```json\n{"thoughts": "x", "action": "-"}\n```', "-", '"action": "-"'),
        ('{"a": {"action": "-"}, "action": "+"}', "+", '"action": "+"'),
    ],
)
def test_the_split_comes_from_the_match_the_parser_reads(text, value, key):
    from gym_vlm_cards.parsing import read_action

    read = read_action(text)
    assert read.value == value
    assert text[read.key_start :].startswith(key)
    assert parse_action(text, LEGAL) == value.strip()


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=STRUCTURE, max_size=200))
def test_every_answer_the_parser_reads_has_its_split(structure):
    from gym_vlm_cards.parsing import read_action

    for text in (structure, '{"action": ' + structure, structure + '"action": "+"'):
        read = read_action(text)
        assert (read.value is None) == (read.key_start is None)
        if read.key_start is not None:
            assert text[read.key_start :].lower().lstrip("\"'").startswith("action")
