"""Reading the action out of a model's free-form answer.

The contract shared by every task (card tasks and ALFWorld alike):

* the action is the value of the ``"action"`` key of a JSON-like object, the key in any case;
* the object may sit inside a Markdown code fence or among other text, use single quotes, carry a
  trailing comma, or hold an unquoted number (``"action": 10``);
* when the answer holds several ``action`` keys, the last one wins (the final answer comes last);
* the action is valid when, lower-cased and with its white space collapsed, it equals one legal action of
  the task.

Everything here is linear in the length of the text (no nested quantifiers), so a 1 MB answer is
parsed in bounded time, and nothing is ever evaluated as code.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable, Mapping
from typing import NamedTuple

# A quoted key "action" / 'action' (any case), then a colon.
_QUOTED_KEY = re.compile(r"""["']action["']\s*:\s*""", re.IGNORECASE)
# A bare key: action: ... (YAML-ish or unquoted JSON5-ish answers).
_BARE_KEY = re.compile(r"""(?<![\w"'])action\s*:\s*""", re.IGNORECASE)
_DOUBLE_QUOTED = re.compile(r'"((?:[^"\\]|\\.)*)"')
# A double-quoted value may span lines (models write raw newlines in strings); a single-quoted one
# stops at the line's end, since apostrophes in the prose after it would otherwise close it.
_SINGLE_QUOTED = re.compile(r"'((?:[^'\\\n]|\\.)*)'")
_BARE_VALUE = re.compile(r"[^,}\n]*")


class ActionSpan(NamedTuple):
    """What the parser read: the action's raw value and where its key starts (both None if absent)."""

    value: str | None
    key_start: int | None


def read_action(text: str) -> ActionSpan:
    """The raw value of the ``"action"`` key in ``text`` and the index where that key starts.

    Both come from the one match the parser reads, so the thoughts/action split of an answer always
    agrees with the action it is scored for. The value is returned as written (not yet normalised);
    numbers come back as their text. ``key_start`` is None only when no action key was read.
    """
    if not isinstance(text, str):
        raise TypeError(f"the answer to parse must be a str, got {type(text).__name__}")
    fast = _from_strict_json(text)
    if fast is not None:
        return fast
    return _from_loose_text(text)


def extract_action(text: str) -> str | None:
    """The raw value of the ``"action"`` key in ``text``, or None when there is none."""
    return read_action(text).value


def normalize(value: str) -> str:
    """The form in which actions are compared: lower-cased, runs of white space as one space, stripped."""
    return " ".join(value.lower().split())


def match_action(value: str | None, legal: Iterable[str]) -> str | None:
    """The canonical legal action equal to ``value`` after normalisation, or None."""
    if value is None:
        return None
    wanted = normalize(value)
    for action in legal:
        if normalize(action) == wanted:
            return action
    return None


def parse_action(text: str, legal: Iterable[str] | Mapping[str, str]) -> str | None:
    """Extracts and matches in one call: the canonical legal action the text names, or None.

    ``legal`` may also be a mapping from normalised form to canonical action (faster for long lists).
    """
    value = extract_action(text)
    if value is None:
        return None
    if isinstance(legal, Mapping):
        return legal.get(normalize(value))
    return match_action(value, legal)


def action_key_start(text: str) -> int | None:
    """Index of the first character of the ``action`` key that :func:`extract_action` reads, or None.

    Everything before it is the chain of thought; policies use it to weight thought and action
    tokens differently without knowing any token ids.
    """
    return read_action(text).key_start


def _last_action_key(text: str) -> re.Match | None:
    """The last quoted ``action`` key, or failing that the last bare one."""
    for pattern in (_QUOTED_KEY, _BARE_KEY):
        matches = list(pattern.finditer(text))
        if matches:
            return matches[-1]
    return None


def _json_body_start(text: str) -> int | None:
    """Index of the ``{`` opening the answer when it is one (maybe fenced) object, else None."""
    start = len(text) - len(text.lstrip())
    if text.startswith("```", start):
        start += 3
        while start < len(text) and text[start] == "`":
            start += 1
        start += len(text[start:]) - len(text[start:].lstrip())
        if text[start : start + 4].lower() == "json":
            start += 4
    return start if text.startswith("{", start) else None


def _from_strict_json(text: str) -> ActionSpan | None:
    """Fast path: the whole answer (maybe fenced) is one valid JSON object."""
    start = _json_body_start(text)
    if start is None:
        return None
    body = text[start:].strip().rstrip("`").strip()
    try:
        # strict=False: a raw newline inside a string value is still that string (models write them).
        obj = json.loads(body, strict=False)
    except (ValueError, RecursionError):  # deep nesting exhausts json's recursion: use the tolerant path
        return None
    if not isinstance(obj, dict):
        return None
    found = None
    for key, value in obj.items():
        if isinstance(key, str) and key.strip().lower() == "action":
            found = value
    value = _scalar_to_text(found)
    if value is None:
        return None
    return ActionSpan(value, start + _last_top_level_action_key(body))


# In valid JSON every quote character belongs to a string token, so scanning string tokens and
# brackets left to right walks the document's structure without a parser that reports positions.
_JSON_TOKEN = re.compile(r'"(?:[^"\\]|\\.)*"|[{}\[\]]')
_COLON_AHEAD = re.compile(r"\s*:")


def _last_top_level_action_key(body: str) -> int:
    """Offset in ``body`` (a valid JSON object) of its last top-level key equal to "action"."""
    depth, found = 0, None
    for token in _JSON_TOKEN.finditer(body):
        text = token.group(0)
        if text in "{[":
            depth += 1
        elif text in "}]":
            depth -= 1
        elif depth == 1 and _COLON_AHEAD.match(body, token.end()):
            key = json.loads(text, strict=False)
            if key.strip().lower() == "action":
                found = token.start()
    if found is None:  # unreachable for a dict that holds the key; kept explicit rather than silent
        raise AssertionError("a JSON object read as holding an action key has no such key")
    return found


def _scalar_to_text(value: object) -> str | None:
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float) and value.is_integer():
        return str(int(value))
    return None


def _from_loose_text(text: str) -> ActionSpan:
    """Tolerant path: find the last ``action`` key anywhere and read the value after it."""
    last = _last_action_key(text)
    if last is None:
        return ActionSpan(None, None)
    start = last.end()
    for pattern in (_DOUBLE_QUOTED, _SINGLE_QUOTED):
        quoted = pattern.match(text, start)
        if quoted:
            return ActionSpan(_unescape(quoted.group(1)), last.start())
    bare = _BARE_VALUE.match(text, start)
    value = bare.group(0).strip() if bare else ""
    return ActionSpan(value or None, last.start() if value else None)


def _unescape(value: str) -> str:
    if "\\" not in value:
        return value
    try:
        return json.loads(f'"{value}"', strict=False)
    except ValueError:
        return value
