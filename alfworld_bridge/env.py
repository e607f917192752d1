"""ALFWorld household tasks as a Gymnasium env: an image observation and a text action."""

from __future__ import annotations

import os
from collections import deque
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from alfworld_bridge.expert import expert_command
from alfworld_bridge.games import GameDataError, find_games, read_traj_data
from alfworld_bridge.goals import Facts, Targets, goal_condition_rate
from alfworld_bridge.render import draw_map_view, draw_text_view, floor_plan_of
from gym_vlm_cards.rendering import Canvas
from gym_vlm_cards.text_env import INVALID_ACTION_REWARD, Outcome, TextActionEnv

RENDER_STYLES = ("text", "map")
WIN_BONUS = 50.0


def _prompt(task: str, observation: str, commands: Sequence[str], chain_of_thought: bool,
            history: Sequence[tuple[str, str]] = ()) -> str:
    listed = "\n".join(f"- {c}" for c in commands)
    earlier = "".join(f"Before: {seen.strip()}\nYou did: {done}\n" for seen, done in history)
    head = (
        "You are an agent in a household. Your task is to: " + task + "\n"
        + (f"Your last {len(history)} steps, oldest first:\n" + earlier if history else "")
        + "What you see now: " + observation.strip() + "\n"
        "The commands you can use now are:\n" + listed + "\n"
    )
    if chain_of_thought:
        return head + ('Think about what to do next, then reply with a JSON object in exactly this format: '
                       '{"thoughts": "your reasoning", "action": "one command from the list"}')
    return head + 'Reply with a JSON object in exactly this format: {"action": "one command from the list"}'


def _words(type_name: str) -> str:
    """ALFRED's CamelCase type as words: 'DeskLamp' -> 'desk lamp', 'CD' -> 'cd'."""
    out = "".join(" " + c if c.isupper() and i and type_name[i - 1].islower() else c
                  for i, c in enumerate(type_name))
    return out.lower().strip() or "object"


class ALFWorldEnv(TextActionEnv):
    """ALFWorld (TextWorld with the ALFRED domain) with an image observation and text actions.

    Built on :class:`gym_vlm_cards.TextActionEnv` like the card tasks: the base class reads the answer,
    matches it to the commands admissible now, applies ``invalid_action`` and puts ``is_success`` in
    every step's info; this class plays the text engine, draws the frame and plans the expert's move.

    ## Description
    A household task ("put a hot potato in sinkbasin") is played through ALFWorld's text engine,
    offline. Each reset picks a game from the data with ``self.np_random``.

    ## Action Space
    Text: a model's raw answer. The ``"action"`` value is read as in the card tasks and matched to the
    admissible commands after normalisation (lower case, single spaces, stripped): exact matches
    only, no fuzzy matching. ``info["parsed_action"]`` / ``info["action_is_valid"]`` as in gym_cards.
    There is no discrete mode: the admissible commands change every step.

    ## Observation Space
    ``Box(0, 255, (300, 300, 3), uint8)``: ``render_style="text"`` (default) draws the task and the last
    observation; ``"map"`` a top-down sketch from the scene layouts. THOR's first-person frames (the
    paper's) are not offered: they need ALFWorld's THOR env (ai2thor, a display, a GPU), so scores
    with ``text``/``map`` are not comparable with the paper's 21.7%.

    ## Starting State
    The game's start: the agent in the middle of the room, the task stated in the first observation.

    ## Rewards
    As in the paper: ``50 * won + goal_condition_success_rate`` after an admissible command. An answer
    naming no admissible command scores ``goal_condition_success_rate - 1`` and changes nothing
    (``invalid_action="penalize"``), or is replaced by a random admissible command (``"random"``,
    scored as that command).

    ## Episode End
    Terminated on a win; truncated by Gymnasium's ``TimeLimit`` (registered: 50 steps, the paper's).

    ## Information
    As every task's (``prompt``, ``action_only_prompt``, ``text_state``, ``parsed_action`` ...), plus
    ``task``, ``task_type`` (one of ALFWorld's six), ``observation_text``, ``admissible_commands``,
    ``won``, ``goal_condition_success_rate`` and ``game_file``.

    ## Arguments
    ``data_root`` (default ``$ALFWORLD_DATA``), ``split`` (see :data:`alfworld_bridge.games.SPLITS`,
    or None for the root itself), ``game_files`` (explicit list instead), ``render_style``,
    ``image_size``, ``invalid_action``, ``render_mode``, ``cache_dir`` (for game files built from raw
    data), ``history_length`` (the last k observations and the commands played there go into the prompt:
    a memory of the episode; 0 none); the step limit is ``gym.make``'s ``max_episode_steps``.
    ``reset(options={"game": path_or_index})`` plays a given game.

    ## Version History
    * v0: the text engine with ``text`` and ``map`` views, the full-information expert.
    """

    metadata = {"render_modes": ["human", "rgb_array"], "render_fps": 2}

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
        history_length: int = 0,
    ) -> None:
        if history_length < 0:
            raise ValueError(f"history_length must be >= 0 (0: no memory of earlier steps), got {history_length}")
        if render_style == "thor":
            raise ValueError(
                "render_style='thor' is not offered: THOR's first-person frames come from ALFWorld's THOR env "
                "(ai2thor, a Unity build, an X display and a GPU), which this bridge does not drive; use 'text' or "
                "'map' (scores are then not comparable with the paper's THOR-based 21.7%)")
        if render_style not in RENDER_STYLES:
            raise ValueError(f"render_style must be one of {RENDER_STYLES}, got {render_style!r}")
        super().__init__(None, image_size=image_size, invalid_action=invalid_action, render_mode=render_mode)
        self.games = [Path(g) for g in game_files] if game_files else find_games(data_root, split, cache_dir)
        for game in self.games:
            if not game.is_file():
                raise FileNotFoundError(f"game file {game} does not exist")
        self.render_style = render_style
        self._engine = None
        self._loaded: Path | None = None
        # Per state of the engine (a new dict after every command): its facts indexed, the expert's command.
        self._indexed: tuple[Any, Facts] | None = None
        self._plan: tuple[Any, str] | None = None
        self.game_file: Path | None = None
        self.state: Any = None
        self.targets: Targets | None = None
        self.floor_plan: str | None = None
        self.task = ""
        self.observation_text = ""
        #: The last ``history_length`` (observation, command played there) pairs of the episode, oldest first.
        self.history: deque[tuple[str, str]] = deque(maxlen=history_length)

    # ------------------------------------------------------------------ engine
    def _load(self, game: Path):
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
        except (ValueError, KeyError, UnicodeDecodeError, AttributeError, TypeError) as error:
            # json errors are ValueErrors; a file of valid JSON that is not a game object (a list, a
            # string) fails inside TextWorld with AttributeError / TypeError.
            self._close_engine()
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
            if not isinstance(choice, (str, os.PathLike)):
                raise ValueError(f"option 'game' must be an index or a game file's path, got {choice!r}")
            path = Path(choice)
            if not path.is_file():
                raise ValueError(f"option 'game' must be an index or an existing game file, got {choice!r}")
            return path
        return self.games[int(self.np_random.integers(len(self.games)))]

    # ------------------------------------------------------------------ TextActionEnv hooks
    def _start_episode(self, options: dict[str, Any] | None) -> None:
        self.state = None  # no half-made episode survives a failed reset
        self.history.clear()
        self.game_file = self._pick_game(options)
        try:
            traj = read_traj_data(self.game_file)
            self.targets = Targets.from_traj_data(traj)
            self.floor_plan = floor_plan_of(traj)
            self.state = self._load(self.game_file)
        except Exception:
            self._close_engine()  # the engine may hold the previous game: nothing of it is played on
            raise
        feedback = self.state["feedback"]
        self.task = feedback.split("Your task is to:", 1)[1].strip().rstrip(".") if "Your task is to:" in feedback else ""
        self.observation_text = feedback.split("-=", 1)[-1].split("=-", 1)[-1].strip()

    def available_actions(self) -> list[str]:
        """The commands admissible now (TextWorld's ``admissible_commands``)."""
        return list(self.state["admissible_commands"]) if self.state is not None else []

    def _apply(self, action: str) -> Outcome:
        if self.history.maxlen:
            self.history.append((self.observation_text, action))
        self.state, _, _ = self._engine.step(action)
        self.observation_text = self.state["feedback"].strip()
        won = bool(self.state["won"])
        return Outcome(WIN_BONUS * won + self.goal_condition_success_rate, terminated=won, success=won)

    def _invalid_outcome(self) -> Outcome:
        return Outcome(self.goal_condition_success_rate + INVALID_ACTION_REWARD)

    def _draw(self, canvas: Canvas) -> None:
        if self.render_style == "text":
            draw_text_view(canvas, self.task, self.observation_text)
            return
        entity_ids = {info.name: info.id for info in self.state["_entity_infos"].values() if info.name}
        receptacles = {args[0]: entity_ids.get(args[1], args[1]) for args in self.facts.args("receptacleatlocation")}
        agent = self.facts.args("atlocation")
        draw_map_view(canvas, self.task, receptacles, entity_ids.get(agent[0][1]) if agent else None,
                      self.facts.holding(), self.floor_plan)

    def symbolic_state(self) -> dict[str, Any]:
        """The task type, where the agent is and what it holds (demonstration records, warm-up labels)."""
        location = self.facts.args("atlocation")
        return {"task_type": self.targets.task_type if self.targets else "",
                "location": location[0][1] if location else "", "holds": self.facts.holding()}

    def describe_state(self) -> str:
        return f"Task: {self.task}. {self.observation_text}"

    def _close_engine(self) -> None:
        if self._engine is not None:
            self._engine.close()
        self._engine, self._loaded, self.state = None, None, None

    def close(self) -> None:
        self._close_engine()
        super().close()

    # ------------------------------------------------------------------ the expert
    def oracle_action(self) -> str:
        """The expert's next admissible command from the current state (:mod:`alfworld_bridge.expert`:
        full information, replanned every step, so it recovers from any move before)."""
        if self.state is None or self._episode_over:
            raise RuntimeError("ALFWorldEnv.oracle_action: no episode in progress; call reset() first")
        if self._plan is None or self._plan[0] is not self.state:
            self._plan = (self.state, expert_command(self.facts, self.targets, self.available_actions()))
        return self._plan[1]

    def oracle_thoughts(self) -> dict[str, str]:
        """What the agent is after, where it goes next and why, for the expert's command."""
        command = self.oracle_action()
        verb, _, rest = command.partition(" ")
        held = self.facts.holding()
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

    # ------------------------------------------------------------------ views
    @property
    def admissible_commands(self) -> list[str]:
        return self.available_actions()

    @property
    def facts(self) -> Facts:
        """The current state's facts, indexed by predicate (once per state)."""
        if self._indexed is None or self._indexed[0] is not self.state:
            self._indexed = (self.state, Facts.of(self.state["facts"]))
        return self._indexed[1]

    @property
    def goal_condition_success_rate(self) -> float:
        return goal_condition_rate(self.facts, self.targets)

    @property
    def prompt(self) -> str:  # type: ignore[override]  (the base class's is a fixed string)
        return _prompt(self.task, self.observation_text, self.available_actions(), True, self.history)

    @property
    def action_only_prompt(self) -> str:  # type: ignore[override]
        return _prompt(self.task, self.observation_text, self.available_actions(), False, self.history)

    def _info(self, **extra: Any) -> dict[str, Any]:
        info = super()._info(**extra)
        info.update(observation_text=self.observation_text, task=self.task, admissible_commands=self.available_actions(),
                    won=bool(self.state["won"]), goal_condition_success_rate=self.goal_condition_success_rate,
                    game_file=str(self.game_file))
        return info
