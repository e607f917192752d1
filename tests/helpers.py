import json


def answer(action: str) -> str:
    """A well-formed model answer naming ``action``."""
    return json.dumps({"thoughts": "test", "action": action})
