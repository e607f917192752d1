"""ALFWorld household tasks as a Gymnasium env: an image observation and a text action."""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from alfworld_bridge.expert import expert_command
from alfworld_bridge.games import GameDataError, find_games, read_traj_data
from alfworld_bridge.goals import Targets, goal_condition_rate
from alfworld_bridge.render import draw_map_view, draw_text_view, floor_plan_of
from gym_vlm_cards.parsing import extract_action, normalize
from gym_vlm_cards.rendering import WHITE, Canvas
from gym_vlm_cards.text_env import MAX_ANSWER_CHARS, _image_shape

RENDER_STYLES = ("text", "map")
WIN_BONUS = 50.0
INADMISSIBLE_PENALTY = 1.0


def _prompt(task: str, observation: str, commands: Sequence[str], chain_of_thought: bool) -> str:
    listed = "\n".join(f"- {c}" for c in commands)
    head = (
        "You are an agent in a household. Your task is to: " + task + "\n"
        "What you see now: " + observation.strip() + "\n"
        "The commands you can use now are:\n" + listed + "\n"
    )
    if chain_of_thought:
        return head + ('Think about what to do next, then reply with a JSON object in exactly this format: '
                       '{"thoughts": "your reasoning", "action": "one command from the list"}')
    return head + 'Reply with a JSON object in exactly this format: {"action": "one command from the list"}'


def _words(type_name: str) -> str:
    """ALFRED's CamelCase type as words: 'DeskLamp' -> 'desk lamp'."""
    return "".join(" " + c.lower() if c.isupper() else c for c in type_name).strip() or "object"


class ALFWorldEnv(gym.Env):
    """ALFWorld (TextWorld with the ALFRED domain) with an image observation and text actions.

    ## Description
    A household task ("put a hot potato in sinkbasin") is played through ALFWorld's text engine,
    offline. Each reset picks a game from the data with ``self.np_random``.

    ## Action Space
    Text: a model's raw answer. The ``"action"`` value is read as in the card tasks and matched to the
    admissible commands after normalisation (lower case, single spaces, stripped): exact matches
    only, no fuzzy matching. ``info["parsed_action"]`` / ``info["action_is_valid"]`` as in gym_cards.

    ## Observation Space
    ``Box(0, 255, (300, 300, 3), uint8)``: ``render_style="text"`` (default) draws the task and the last
    observation; ``"map"`` a top-down sketch from the scene layouts. THOR's first-person frames (the
    paper's) are not offered: they need ALFWorld's THOR env (ai2thor, a display, a GPU), so scores
    with ``text``/``map`` are not comparable with the paper's 21.7%.

    ## Rewards
    As in the paper: ``50 * won + goal_condition_success_rate``, minus 1 for an inadmissible (or
    unreadable) action, which changes nothing (``invalid_action="penalize"``) or is replaced by a
    random admissible command (``"random"``).

    ## Episode End
    Terminated on a win; truncated by Gymnasium's ``TimeLimit`` (registered: 50 steps, the paper's).

    ## Arguments
    ``data_root`` (default ``$ALFWORLD_DATA``), ``split`` ("train", "valid_seen", "valid_unseen" or
    None for the root itself), ``game_files`` (explicit list instead), ``render_style``, ``image_size``,
    ``invalid_action``, ``cache_dir`` (for game files built from raw data); the step limit is
    ``gym.make``'s ``max_episode_steps``.
    ``reset(options={"game": path_or_index})`` plays a given game.
    """

    metadata = {"render_modes": ["rgb_array"], "render_fps": 2}

    def __init__(
        self,
        data_root: str | os.PathLike | None = None,
        split: str | None = "train",
        game_files: Sequence[str | os.PathLike] | None = None,
        render_style: str = "text",
        image_size: int | tuple[int, int] = 300,
        invalid_action: str = "penalize",
        render_mode: str | None = None,
        cache_dir: str | os.PathLike | None = None,
    ) -> None:
        if render_style == "thor":
            raise ValueError(
                "render_style='thor' is not offered: THOR's first-person frames come from ALFWorld's THOR env "
                "(ai2thor, a Unity build, an X display and a GPU), which this bridge does not drive; use 'text' or "
                "'map' (scores are then not comparable with the paper's THOR-based 21.7%)")
        if render_style not in RENDER_STYLES:
            raise ValueError(f"render_style must be one of {RENDER_STYLES}, got {render_style!r}")
        if invalid_action not in ("penalize", "random"):
            raise ValueError(f"invalid_action must be 'penalize' or 'random', got {invalid_action!r}")
        if render_mode not in (None, "rgb_array"):
            raise ValueError(f"render_mode must be None or 'rgb_array', got {render_mode!r}")
        self.games = [Path(g) for g in game_files] if game_files else find_games(data_root, split, cache_dir)
        for game in self.games:
            if not game.is_file():
                raise FileNotFoundError(f"game file {game} does not exist")
        self.render_style = render_style
        self.render_mode = render_mode
        self.height, self.width = _image_shape(image_size)
        self.invalid_action = invalid_action
        self.observation_space = spaces.Box(0, 255, (self.height, self.width, 3), dtype=np.uint8)
        import string

        self.action_space = spaces.Text(max_length=MAX_ANSWER_CHARS, charset=string.printable)
        self._engine = None
        self._loaded: Path | None = None
        self._episode_over = True  # until the first reset
        self.game_file: Path | None = None
        self.state: Any = None
        self.targets: Targets | None = None
        self.floor_plan: str | None = None
        self.task = ""
        self.observation_text = ""
        self.elapsed_steps = 0

    # ------------------------------------------------------------------ engine
    def _start(self, game: Path):
        import textworld
        from alfworld.agents.environment.alfred_tw_env import AlfredDemangler, AlfredInfos

        try:
            if self._engine is None:
                infos = textworld.EnvInfos(won=True, admissible_commands=True, facts=True, feedback=True,
                                           extras=["gamefile"])
                self._engine = textworld.start(str(game), request_infos=infos,
                                               wrappers=[AlfredDemangler(), AlfredInfos])
            elif self._loaded != game:
                self._engine.load(str(game))
            self._loaded = game
            return self._engine.reset()
        except (ValueError, KeyError, UnicodeDecodeError) as error:  # json errors are ValueErrors
            self._engine, self._loaded = None, None
            raise GameDataError(f"game file {game} could not be read ({type(error).__name__}: {error}); "
                                "it is corrupted: rebuild it or remove it from the data") from None

    def _pick_game(self, options: dict[str, Any] | None) -> Path:
        if options and set(options) - {"game"}:
            raise ValueError(f"ALFWorld options take only 'game', got {sorted(options)}")
        if options and "game" in options:
            choice = options["game"]
            if isinstance(choice, (int, np.integer)) and not isinstance(choice, bool):
                if not 0 <= choice < len(self.games):
                    raise ValueError(f"game index {choice} is out of range [0, {len(self.games)})")
                return self.games[int(choice)]
            path = Path(choice)
            if not path.is_file():
                raise ValueError(f"option 'game' must be an index or an existing game file, got {choice!r}")
            return path
        return self.games[int(self.np_random.integers(len(self.games)))]

    # ------------------------------------------------------------------ Gymnasium API
    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None):
        super().reset(seed=seed)
        self.game_file = self._pick_game(options)
        traj = read_traj_data(self.game_file)
        self.targets = Targets.from_traj_data(traj)
        self.floor_plan = floor_plan_of(traj)
        self.state = self._start(self.game_file)
        feedback = self.state["feedback"]
        self.task = feedback.split("Your task is to:", 1)[1].strip().rstrip(".") if "Your task is to:" in feedback else ""
        self.observation_text = feedback.split("-=", 1)[-1].split("=-", 1)[-1].strip()
        self.elapsed_steps = 0
        self._episode_over = False
        return self._frame(), self._info()

    def step(self, action: Any):
        if self._episode_over:
            raise RuntimeError("ALFWorldEnv: the episode has ended; call reset() before stepping again")
        if not isinstance(action, str):
            raise TypeError(f"the action must be the model's answer as a str, got {type(action).__name__}")
        if self.state is None:
            raise RuntimeError("call reset() before step()")
        commands = self.admissible_commands
        lookup = {" ".join(normalize(c).split()): c for c in commands}
        value = extract_action(action)
        parsed = None if value is None else lookup.get(" ".join(normalize(value).split()))
        executed = parsed
        if parsed is None and self.invalid_action == "random":
            executed = commands[int(self.np_random.integers(len(commands)))]
        if executed is not None:
            self.state, _, _ = self._engine.step(executed)
            self.observation_text = self.state["feedback"].strip()
        self.elapsed_steps += 1
        won = bool(self.state["won"])
        rate = self.goal_condition_success_rate
        reward = WIN_BONUS * won + rate - (INADMISSIBLE_PENALTY if parsed is None else 0.0)
        info = self._info(parsed_action=parsed, action_is_valid=parsed is not None, executed_action=executed)
        info["is_success"] = won  # in every step's info: the last one has it however the episode ends
        self._episode_over = won
        return self._frame(), float(reward), won, False, info

    def render(self) -> np.ndarray | None:
        if self.render_mode == "rgb_array":
            return self._frame()
        gym.logger.warn("render() needs render_mode='rgb_array'")
        return None

    def close(self) -> None:
        if self._engine is not None:
            self._engine.close()
            self._engine = None
            self._loaded = None

    # ------------------------------------------------------------------ the expert
    def oracle_action(self) -> str:
        """The expert's next admissible command from the current state (:mod:`alfworld_bridge.expert`:
        full information, replanned every step, so it recovers from any move before)."""
        if self.state is None or self._episode_over:
            raise RuntimeError("ALFWorldEnv.oracle_action: no episode in progress; call reset() first")
        return expert_command(self.state["facts"], self.targets, self.admissible_commands)

    def oracle_thoughts(self) -> dict[str, str]:
        """What the agent is after, where it goes next and why, for the expert's command."""
        return self._thoughts_for(self.oracle_action())

    def _thoughts_for(self, command: str) -> dict[str, str]:
        verb, _, rest = command.partition(" ")
        held = [args[1] for args in self._facts("holds")]
        thing = rest.split(" from ")[0].split(" in/on ")[0].split(" with ")[0].split(" to ")[0]
        # "put X in/on Y" in the released games, "move X to Y" in the current grammar.
        destination = rest.split(" in/on ")[-1] if verb == "put" else rest.split(" to ")[-1]
        wanted = _words(self.targets.object_type)
        putting = (f"I put {thing} in/on {destination}, as the task asks."
                   if thing.startswith(self.targets.object_type.lower()) else f"I do not need {thing}; I put it down.")
        why = {
            "go": (f"I carry {held[0]} to {rest.removeprefix('to ')}." if held
                   else f"The {wanted} I need is at {rest.removeprefix('to ')}, so I go there."),
            "open": f"{rest.capitalize()} is closed; I open it to reach what I need.",
            "take": f"I take {thing}, the {wanted} the task is about.",
            "put": putting,
            "move": putting,
            "clean": f"The task wants it clean, so I clean {thing} here.",
            "heat": f"The task wants it hot, so I heat {thing} here.",
            "cool": f"The task wants it cool, so I cool {thing} here.",
            "use": f"I hold the {wanted}; I switch on {rest} to look at it in the light.",
        }.get(verb, f"Next: {command}.")
        return {"thoughts": f"My task is to {self.task}. {why}"}

    def oracle_answer(self, chain_of_thought: bool = True) -> str:
        """The expert's answer in the prompt's JSON format (thoughts, then action), for SFT data."""
        action = self.oracle_action()  # planned once: the thoughts are about this very command
        if not chain_of_thought:
            return json.dumps({"action": action})
        return json.dumps({**self._thoughts_for(action), "action": action})

    def symbolic_state(self) -> dict[str, Any]:
        """The task type, where the agent is and what it holds (for demonstration records)."""
        location = self._facts("atlocation")
        return {"task_type": self.targets.task_type if self.targets else "",
                "location": location[0][1] if location else "", "holds": [args[1] for args in self._facts("holds")]}

    # ------------------------------------------------------------------ views
    @property
    def admissible_commands(self) -> list[str]:
        return list(self.state["admissible_commands"]) if self.state is not None else []

    @property
    def goal_condition_success_rate(self) -> float:
        return goal_condition_rate(self.state["facts"], self.targets)

    @property
    def prompt(self) -> str:
        return _prompt(self.task, self.observation_text, self.admissible_commands, chain_of_thought=True)

    def _info(self, **extra: Any) -> dict[str, Any]:
        info = {
            "observation_text": self.observation_text,
            "task": self.task,
            "task_type": self.targets.task_type,
            "admissible_commands": self.admissible_commands,
            "won": bool(self.state["won"]),
            "goal_condition_success_rate": self.goal_condition_success_rate,
            "game_file": str(self.game_file),
            "text_state": f"Task: {self.task}. {self.observation_text}",
            "prompt": self.prompt,
            "action_only_prompt": _prompt(self.task, self.observation_text, self.admissible_commands, False),
        }
        info.update(extra)
        return info

    def _facts(self, name: str) -> list[list[str]]:
        return [[a.name.strip() for a in f.arguments] for f in self.state["facts"] if f.name.lower() == name]

    def _frame(self) -> np.ndarray:
        canvas = Canvas(self.height, self.width, WHITE)
        if self.render_style == "text":
            draw_text_view(canvas, self.task, self.observation_text)
        else:
            entity_ids = {info.name: info.id for info in self.state["_entity_infos"].values() if info.name}
            receptacles = {args[0]: entity_ids.get(args[1], args[1]) for args in self._facts("receptacleatlocation")}
            agent = self._facts("atlocation")
            held = [args[1] for args in self._facts("holds")]
            draw_map_view(canvas, self.task, receptacles, entity_ids.get(agent[0][1]) if agent else None, held,
                          self.floor_plan)
        return canvas.pixels
