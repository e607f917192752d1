"""Finding ALFWorld games on disk, and building a game file where only the raw data is there.

A game folder (ALFWorld's ``json_2.1.1/<split>/<task>/<trial>/``) holds ``traj_data.json`` and
either ``game.tw-pddl`` (JSON: ``pddl_domain``, ``grammar``, ``pddl_problem``, ``solvable``,
``walkthrough``) or the ``initial_state.pddl`` it is built from. Built files go to a cache folder, so
read-only datasets work.
"""

from __future__ import annotations

import hashlib
import json
import os
import threading
from pathlib import Path

GAME_FILE = "game.tw-pddl"
TRAJ_FILE = "traj_data.json"
PROBLEM_FILE = "initial_state.pddl"
# ALFWorld's download has the first three; "valid_train" is a held-out part of the training games.
SPLITS = ("train", "valid_seen", "valid_unseen", "valid_train", "valid_unseen_train")
DOWNLOAD_HINT = (
    "get the dataset with `alfworld-download` on a machine with internet access (it fills $ALFWORLD_DATA, "
    "default ~/.cache/alfworld), then copy that folder here"
)


class GameDataError(FileNotFoundError):
    """No usable game was found where one was expected."""


def data_root(root: str | os.PathLike | None) -> Path:
    """``root``, else ``$ALFWORLD_DATA``, else ALFWorld's default ``~/.cache/alfworld``."""
    if root is not None:
        return Path(root).expanduser()
    return Path(os.environ.get("ALFWORLD_DATA", "~/.cache/alfworld")).expanduser()


def split_folder(root: Path, split: str | None) -> Path:
    """Where a split's games live: ``root/json_2.1.1/<split>``, ``root/<split>``, or ``root`` itself."""
    if split is None:
        return root
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS} or None, got {split!r}")
    for candidate in (root / "json_2.1.1" / split, root / split):
        if candidate.is_dir():
            return candidate
    return root / "json_2.1.1" / split


def cache_folder(cache_dir: str | os.PathLike | None) -> Path:
    if cache_dir is not None:
        return Path(cache_dir)
    return Path(os.environ.get("XDG_CACHE_HOME", "~/.cache")).expanduser() / "gym_vlm_cards" / "alfworld_games"


def find_games(root: str | os.PathLike | None = None, split: str | None = "train",
               cache_dir: str | os.PathLike | None = None) -> list[Path]:
    """Every playable game file under the split, sorted; builds missing ones from raw data."""
    base = data_root(root)
    folder = split_folder(base, split)
    if not folder.is_dir():
        raise GameDataError(f"no ALFWorld data at {folder} (looked for {GAME_FILE} / {PROBLEM_FILE} + {TRAJ_FILE} "
                            f"under it); {DOWNLOAD_HINT}")
    games = []
    for traj in sorted(folder.rglob(TRAJ_FILE)):
        game = traj.parent / GAME_FILE
        if game.is_file():
            games.append(game)
        elif (traj.parent / PROBLEM_FILE).is_file():
            games.append(build_game_file(traj.parent, cache_dir))
    if not games:
        raise GameDataError(f"no games under {folder}: found no folder with {TRAJ_FILE} and either {GAME_FILE} or "
                            f"{PROBLEM_FILE}; {DOWNLOAD_HINT}")
    return games


def build_game_file(folder: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """Writes ``game.tw-pddl`` for a folder holding ``initial_state.pddl`` + ``traj_data.json``.

    The file goes to the cache (named after the folder's contents, so it is built once) together with
    a copy of ``traj_data.json``; ``solvable``/``walkthrough`` are left unknown (None), as ALFWorld's own
    generator does before its expert runs.
    """
    from alfworld.info import ALFRED_PDDL_PATH, ALFRED_TWL2_PATH

    folder = Path(folder)
    problem = (folder / PROBLEM_FILE).read_text()
    traj_text = (folder / TRAJ_FILE).read_text()
    try:
        traj = json.loads(traj_text)
    except ValueError as error:
        raise GameDataError(f"{folder / TRAJ_FILE} is not valid JSON: {error}") from None
    digest = hashlib.sha256((problem + traj_text).encode()).hexdigest()[:16]
    out = cache_folder(cache_dir) / digest
    game = out / GAME_FILE
    if game.is_file():
        return game
    out.mkdir(parents=True, exist_ok=True)
    grammar = Path(ALFRED_TWL2_PATH).read_text().replace("UNKNOWN GOAL", goal_sentence(traj, digest))
    data = {"pddl_domain": Path(ALFRED_PDDL_PATH).read_text(), "grammar": grammar, "pddl_problem": problem,
            "solvable": None, "walkthrough": None}
    # Written under names of this process's own, then renamed: envs in subprocesses may build the same
    # game at once (threads too), and none may read a half-written file (the game file last: it marks the build done).
    for path, text in ((out / TRAJ_FILE, traj_text), (game, json.dumps(data))):
        temporary = path.with_name(f"{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
        temporary.write_text(text)
        temporary.replace(path)
    return game


def goal_sentence(traj: dict, key: str) -> str:
    """ALFWorld's templated goal sentence for a task, the template chosen from ``key``.

    ALFWorld's own helper picks the template with the global ``random`` module, so the same data
    would give different games from run to run; here the choice is a function of the data.
    """
    from alfworld.gen import goal_library

    params = traj["pddl_params"]
    goal = traj["task_type"] + ("_slice" if params.get("object_sliced") else "")
    templates = goal_library.gdict[goal]["templates"]
    template = templates[int(key, 16) % len(templates)]
    return template.format(obj=params.get("object_target", "").lower(), recep=params.get("parent_target", "").lower(),
                           toggle=params.get("toggle_target", "").lower(), mrecep=params.get("mrecep_target", "").lower())


def read_traj_data(game_file: Path) -> dict:
    """The ``traj_data.json`` beside a game file (task type and targets)."""
    path = Path(game_file).parent / TRAJ_FILE
    if not path.is_file():
        raise GameDataError(f"{game_file} has no {TRAJ_FILE} beside it (needed for the task type and targets)")
    try:
        data = json.loads(path.read_text())
    except (ValueError, UnicodeDecodeError) as error:
        raise GameDataError(f"{path} is not valid JSON ({error}); the game's data is corrupted") from None
    if not isinstance(data, dict):
        raise GameDataError(f"{path} holds a JSON {type(data).__name__}, not an object; the game's data is corrupted")
    return data
