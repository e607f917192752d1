"""What each stage of the main job depends on, recorded so that a stage is reused only when it matches.

Every stage writes a record of its settings into ``out_dir/stages/<stage>.json`` *before* it starts;
each record nests the records of the stages it builds on, so a change anywhere upstream shows
downstream too. A later run with the same ``--out-dir`` compares its own settings with the records
before touching anything: a stage whose record differs (or whose outputs exist with no record, as
written by an older version) stops the run with the differing settings named, unless ``--overwrite``
asks to redo it and every stage after it.
"""

from __future__ import annotations

import json
import shutil
from collections.abc import Callable
from dataclasses import fields
from pathlib import Path
from typing import Any

from vlm_policy.checkpoints import atomic_write_text, remove_path
from vlm_policy.training.configs import (
    ModelConfig,
    TrainConfig,
    is_alfworld,
    ppo_check_every_rule,
    step_limit_rule,
    warmup_steps_rule,
)
from vlm_policy.training.run_folder import RunRefused

STAGES = ("demos", "sft", "relabel", "after SFT", "ppo", "after PPO")
#: The stages each stage is made from (``relabel`` only where ``--relabel-rounds`` asks for it).
UPSTREAM = {"demos": (), "sft": ("demos",), "relabel": ("sft",), "after SFT": ("sft", "relabel"),
            "ppo": ("sft", "relabel"), "after PPO": ("ppo",)}


def downstream(stage: str) -> list[str]:
    """``stage`` and every stage made from it, in run order."""
    found = {stage}
    for later in STAGES:
        if any(up in found for up in UPSTREAM[later]):
            found.add(later)
    return [s for s in STAGES if s in found]


#: Settings that change how a stage runs but not what it produces (``eval_batch``: how many episodes
#: step together; each episode's greedy answers do not depend on it, the same results measured at 8 and 64).
NOT_RESULT_SETTINGS = {"keep_checkpoints", "progress", "device", "eval_batch"}

#: Settings added to a stage after run folders had recorded it, with the value that leaves it as it was.
SETTINGS_ADDED_LATER = {"max_episode_steps": 0, "sft_stop_success": 0.0, "sft_stop_reach": 0.0,
                        "ppo_stop_success": 0.0, "constrain_actions": False, "history_length": 0}


#: Settings whose rule a record holds as this word (-1, ``auto``, 0) where the run names the value the rule gives
#: (earlier versions recorded the first three so; the answer length is measured only once the demonstrations
#: exist): such a record matches a run that gives the setting its rule's value.
SETTINGS_RECORDED_AS_RULES = {"vision_warmup_steps": -1, "ppo_check_every": -1, "gradient_checkpointing": "auto",
                              "max_new_tokens": 0}


def settings_as_before(config: TrainConfig) -> dict[str, Any]:
    """:data:`SETTINGS_ADDED_LATER` for ``config``'s task: the step limit that leaves a record as it was is the
    one the task had before the setting existed (its registered limit, or the fallback)."""
    return {**SETTINGS_ADDED_LATER, "max_episode_steps": step_limit_rule(config.task.env_id, warn=False)}


#: Settings that stage records of earlier versions hold and this version no longer has, with the value
#: this version runs as (a record holding that value still matches; one holding another does not).
SETTINGS_REMOVED = {"normalize_advantage": True, "lora_alpha": 0, "sft_lora_alpha": 0, "rollout_logprobs": "auto",
                    "warmup_labels": "auto", "sft_train_vision": False}


class SettingsChanged(RunRefused):
    """An output directory holds stages made with other settings than this run's."""


#: Settings of other groups that a stage's outputs depend on besides its own group's (:data:`STAGE_GROUPS`).
BORROWED_SETTINGS = {
    "demos": ("seed", "model"),  # the oracle's draws and the model whose image size the frames take
    "sft": ("dtype", "gradient_checkpointing"),
    "relabel": ("max_new_tokens", "constrain_actions"),  # the model plays the rounds as evaluations play
    "evaluation": ("max_new_tokens", "constrain_actions"),
    "ppo": ("max_new_tokens", "micro_batch_size"),
}
#: The group of :class:`TrainConfig` whose every setting a stage depends on (one added to it joins the record).
STAGE_GROUPS = {"demos": "task", "sft": "sft", "relabel": "relabel", "evaluation": "evaluation", "ppo": "ppo"}


def stage_settings(config: TrainConfig) -> dict[str, dict[str, Any]]:
    """Each stage's record: the settings its outputs depend on (its group's and :data:`BORROWED_SETTINGS`),
    upstream stages' records nested."""
    values = config.settings()

    # Settings added after run folders were first recorded are left out while they change nothing, so
    # that folders made before them still match; the SFT checks' own settings matter only with the stop on.
    unset = {name for name, off in settings_as_before(config).items() if values[name] == off}
    if not config.sft.stop_targets():  # SFT makes every step, as before the stops existed
        unset |= {"sft_check_every", "sft_check_episodes"}
    if not config.ppo.ppo_check_every:  # PPO hands over its last update's agent, as before the checks existed
        unset |= {"ppo_check_every", "ppo_check_episodes", "ppo_keep_best", "ppo_stop_success"}
    if not is_alfworld(config.task.env_id):  # ALFWorld's data settings: the card tasks' records stay as they were
        unset |= {name for group in STAGE_GROUPS.values() for name in getattr(getattr(config, group), "alfworld_settings", ())}

    def settings(stage: str) -> dict[str, Any]:
        names = [item.name for item in fields(getattr(config, STAGE_GROUPS[stage]))] + list(BORROWED_SETTINGS[stage])
        return {name: values[name] for name in names if name not in NOT_RESULT_SETTINGS and name not in unset}

    demos = settings("demos")
    sft = {"demos": demos, **settings("sft"),
           # The draw SFT now always makes, recorded so that folders made before it (with the plain draw, and
           # no such entry) are not taken for this version's.
           "balance_states": "auto"}
    if values["sft_stop_reach"]:  # the reach is measured at PPO's sampling temperature
        sft["temperature"] = values["temperature"]
    # DAgger's rounds continue SFT: what follows is made from their model, so it nests their record instead.
    relabel = {"sft": sft, **settings("relabel")}
    trained = relabel if values["relabel_rounds"] else sft
    evaluation = settings("evaluation")
    ppo = {"sft": trained, **settings("ppo")}
    return {"demos": demos, "sft": sft, "relabel": relabel,
            "after SFT": {"sft": trained, "temperature": values["temperature"], **evaluation},
            "ppo": ppo, "after PPO": {"ppo": ppo, **evaluation}}


def differences(recorded: Any, wanted: Any, prefix: str = "", by_rule: dict[str, Any] | None = None,
                as_before: dict[str, Any] | None = None) -> list[str]:
    """``name: old -> new`` for every setting that differs between two records; ``by_rule``: the values this
    run's rules give (:data:`SETTINGS_RECORDED_AS_RULES`); ``as_before``: :func:`settings_as_before`."""
    if isinstance(recorded, dict) and isinstance(wanted, dict):
        found: list[str] = []
        for key in sorted(set(recorded) | set(wanted)):
            if key in ("demos", "sft", "ppo") and prefix:
                continue  # an upstream record: reported at its own stage
            if key not in wanted and recorded[key] == {**SETTINGS_REMOVED, **(as_before or {})}.get(key, "<none>"):
                continue  # a removed setting at the value this version runs as, or an added one left out as it was
            if (key in wanted and recorded.get(key) == SETTINGS_RECORDED_AS_RULES.get(key, "<none>")
                    and by_rule is not None and wanted[key] == by_rule.get(key)):
                continue
            found += differences(recorded.get(key, "<unset>"), wanted.get(key, "<unset>"), key, by_rule, as_before)
        return found
    return [] if recorded == wanted else [f"{prefix}: {recorded!r} -> {wanted!r}"]


class StageRecords:
    """The stage records of one output directory, and the outputs each stage owns."""

    def __init__(self, out: Path, config: TrainConfig, answer_rule: Callable[[], int] | None = None) -> None:
        """``answer_rule``: what ``--max-new-tokens auto`` gives with the folder's demonstrations (records hold
        the rule as 0; a run that spells the measured length out, as a replayed ``config.json`` does, matches)."""
        self.out = out
        self.wanted = stage_settings(config)
        self.answer_rule = answer_rule
        # What this version's rules give for this task and model (an earlier version's -1 recorded the rule).
        self.by_rule = {"vision_warmup_steps": warmup_steps_rule(config.model.model),
                        "ppo_check_every": ppo_check_every_rule(config.task.env_id),
                        "gradient_checkpointing": ModelConfig.checkpointing_rule(config.model.model)}
        self.as_before = settings_as_before(config)

    def path(self, stage: str) -> Path:
        return self.out / "stages" / f"{stage.replace(' ', '_')}.json"

    def outputs(self, stage: str) -> list[Path]:
        return {
            "demos": [self.out / "demos"],
            "sft": [self.out / "sft", self.out / "tb" / "sft"],
            "relabel": [self.out / "relabel", *sorted((self.out / "tb").glob("relabel_*"))],
            # A row of results.json; for ALFWorld also the outcomes of each game, and of random and oracle on them.
            "after SFT": [self.out / "episodes" / f"{name}.jsonl" for name in ("after_SFT", "random", "oracle")],
            # TensorBoard's PPO runs (SB3 names them ppo_<n>); tb/ also holds SFT's and the evaluations' runs.
            "ppo": [self.out / "ppo", self.out / "curve.jsonl", *sorted((self.out / "tb").glob("ppo_*"))],
            "after PPO": [self.out / "learning_curve.png", self.out / "episode_strip.png",
                          self.out / "episodes" / "after_PPO.jsonl", self.out / "alfworld_table.md"],
        }[stage]

    def _has_output(self, stage: str, results: dict) -> bool:
        if stage in ("after SFT", "after PPO"):
            return stage in results
        return any(path.exists() for path in self.outputs(stage))

    def _measure_answer_rule(self, results: dict) -> bool:
        """Puts what ``--max-new-tokens auto`` gives with the folder's demonstrations into :attr:`by_rule` (only
        where a record holds the rule and this run a length: it reads the demonstrations and a tokenizer)."""
        if self.answer_rule is None or "max_new_tokens" in self.by_rule or not self._has_output("demos", results):
            return False
        self.by_rule["max_new_tokens"] = self.answer_rule()
        return True

    def recorded(self, stage: str) -> dict[str, Any]:
        """A stage's record; a one-line error naming the file when it is not one this package wrote."""
        path = self.path(stage)
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError) as error:
            raise SettingsChanged(f"{path} is not a stage record ({type(error).__name__}: {error}); remove it and "
                                  "rerun with --overwrite to redo that stage, or choose a fresh --out-dir") from None
        if not isinstance(record, dict):
            raise SettingsChanged(f"{path} is not a stage record (not a JSON object); remove it and rerun with "
                                  "--overwrite to redo that stage, or choose a fresh --out-dir")
        return record

    def _extends_ppo(self, changed: dict[str, list[str]]) -> bool:
        """Whether the only change is a larger ``--ppo-timesteps`` (a PPO stage that ``--resume`` continues)."""
        if not changed or set(changed) - {"ppo", "after PPO"}:
            return False
        old = {stage: self.recorded(stage) for stage in changed if self.path(stage).is_file()}
        if len(old) != len(changed) or "ppo" not in old:
            return False
        wanted = self.wanted["ppo"]

        def grown(record: Any) -> bool:
            return (isinstance(record, dict) and isinstance(record.get("ppo_timesteps"), int)
                    and record["ppo_timesteps"] < wanted["ppo_timesteps"]
                    and {**record, "ppo_timesteps": wanted["ppo_timesteps"]} == wanted)

        after = old.get("after PPO")
        return grown(old["ppo"]) and (after is None or grown(after.get("ppo")) and
                                      {**after, "ppo": wanted} == self.wanted["after PPO"])

    def check(self, results: dict, overwrite: bool, resume: bool = False) -> list[str]:
        """Stops (``SettingsChanged``, every difference named) if stages were made with other
        settings; with ``overwrite`` deletes them and the stages made from them instead, and returns
        the stages deleted. With ``resume`` a larger ``--ppo-timesteps`` alone continues PPO: its final
        agent and the stages after it are removed (its checkpoints and records stay)."""
        changed: dict[str, list[str]] = {}
        for stage in STAGES:
            path = self.path(stage)
            if not self._has_output(stage, results):
                continue  # nothing made: the record of a stage that failed before its output binds nothing
            if path.is_file():
                found = differences(self.recorded(stage), self.wanted[stage], by_rule=self.by_rule, as_before=self.as_before)
                if any(line.startswith("max_new_tokens: 0 ->") for line in found) and self._measure_answer_rule(results):
                    found = differences(self.recorded(stage), self.wanted[stage], by_rule=self.by_rule,
                                        as_before=self.as_before)
            else:
                found = ["no settings record: made by an older version of this package"]
            if found:
                changed[stage] = found
        if not changed:
            return []
        if resume and not overwrite and self._extends_ppo(changed):
            self.remove(["after PPO"], results)
            for output in (self.out / "ppo" / "final.zip", self.out / "ppo" / "adapter"):
                remove_path(output)
            return ["ppo", "after PPO"]
        if not overwrite:
            # An upstream change shows in every stage made from it: each difference is named once.
            seen: set[str] = set()
            for stage in list(changed):
                changed[stage] = [d for d in changed[stage] if d not in seen]
                seen.update(changed[stage])
                if not changed[stage]:
                    del changed[stage]
            listing = "; ".join(f"{stage}: {', '.join(found)}" for stage, found in changed.items())
            raise SettingsChanged(
                f"{self.out} holds stages made with other settings ({listing}); rerun with the same settings, "
                "pass --overwrite to redo those stages (and the ones made from them), or choose a fresh --out-dir")
        redo = [stage for stage in STAGES if any(stage in downstream(c) for c in changed)]
        self.remove(redo, results)
        return redo

    def remove(self, stages, results: dict) -> None:
        for stage in stages:
            self.path(stage).unlink(missing_ok=True)
            results.pop(stage, None)
            for output in self.outputs(stage):
                if output.is_dir():
                    shutil.rmtree(output)
                else:
                    output.unlink(missing_ok=True)

    def begin(self, stage: str) -> None:
        """Records the settings a stage is about to be made with."""
        atomic_write_text(self.path(stage), json.dumps(self.wanted[stage], indent=2))
