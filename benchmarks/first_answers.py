"""What a run's SFT checkpoint and PPO agent answer first, on the same held-out deals (SFT alone when the run has no
PPO agent yet).

    python benchmarks/first_answers.py runs/points24 [--episodes 200] [--seed 100000]

Each held-out episode is reset with ``seed + i`` (as in the main job's evaluation) and both agents answer its
first frame greedily; the script prints how often each action was chosen, how often it was the oracle's move
and, for tasks whose ``info`` says whether a deal can be won (Points24, EZPoints), how often the agent ended
the game at once on a winnable deal. On NumberLine it also counts the answers whose written reading ("current
number", "target number") matches the frame: whether the thoughts stay faithful after PPO; with
chain-of-thought prompts, on every task, how many thoughts are the oracle's word for word (PPO can fix an
action and leave its thoughts wrong). For every task it prints how likely each agent is to write the oracle's
whole answer when it samples at PPO's temperature: PPO reinforces only what its sampling writes, so on deals
where that probability is near 0 its rollouts almost never try the right answer (``vlm-cards train
--sft-stop-reach`` stops SFT on the same measure, taken on validation episodes). The README's "PPO teaches the
model to give up" (Points24), thought-faithfulness (NumberLine) and "room for PPO" figures were measured with
it.

``--show-wrong N`` also prints each agent's N most frequent wrong first answers beside the oracle's, with how
many deals gave each and the oracle's probability there: a mistake whose probability stays under 1% after PPO
is one PPO's sampling never corrects (NumberLine's "4 is smaller than 3" in docs/results.md).
"""

from __future__ import annotations

import argparse
import json
import re
from collections import Counter
from pathlib import Path

import numpy as np

import gym_vlm_cards  # noqa: F401  (registers the tasks)


def first_answers(policy, envs, observations) -> list[tuple[str | None, str]]:
    """Greedy first answers of ``policy`` as (action parsed by each env, text); batches of 8 as in the evaluation."""
    from vlm_policy.training.evaluation import answer_tokens

    answers: list[tuple[str | None, str]] = []
    for start in range(0, len(envs), 8):
        tokens = answer_tokens(policy, observations[start : start + 8])
        for row, env in enumerate(envs[start : start + len(tokens)]):
            info = env.step(tokens[row])[4]
            answers.append((info["parsed_action"], info.get("generated_text", "")))
    return answers


def oracle_answer_probabilities(policy, observations, answers: list[str], temperature: float) -> list[float]:
    """The probability that ``policy``, sampling at ``temperature`` as PPO's rollouts do, writes exactly the
    oracle's answer (``answers``) to each observation (SFT's ``--sft-stop-reach`` measures the same)."""
    import copy

    import torch

    batch = {key: torch.as_tensor(np.stack([o[key] for o in observations])) for key in observations[0]}
    images, prompts = policy._unpack(policy.obs_to_tensor(batch)[0])
    distribution = copy.copy(policy.answer_distribution)  # the policy's own, at another temperature
    distribution.temperature = temperature
    return np.exp(distribution.answer_log_probs(images, prompts, answers, policy.device)).tolist()


def wrong_first_answers(answers: list[tuple[str | None, str]], oracle_actions: list, oracle_texts: list[str],
                        chances: np.ndarray) -> list[tuple[str, str, int, float]]:
    """The distinct (agent's answer, oracle's answer) pairs of the deals whose first move is not the oracle's,
    most frequent first: each with its number of deals and the highest probability the oracle's answer had
    on them."""
    groups: dict[tuple[str, str], list[float]] = {}
    for (action, text), oracle_action, oracle_text, chance in zip(answers, oracle_actions, oracle_texts, chances):
        if action != oracle_action:
            groups.setdefault((text, oracle_text), []).append(float(chance))
    rows = [(text, oracle_text, len(found), max(found)) for (text, oracle_text), found in groups.items()]
    return sorted(rows, key=lambda row: -row[2])


def reading_is_right(text: str, state: dict) -> bool | None:
    """Whether a NumberLine answer writes the frame's two numbers (None for other tasks)."""
    if not {"Current", "Target"} <= set(state):
        return None
    written = [re.search(rf'"{key} number"\s*:\s*"?(\d+)', text) for key in ("current", "target")]
    return all(written) and [int(m.group(1)) for m in written] == [state["Current"], state["Target"]]


def thoughts_of(text: str) -> str | None:
    """The "thoughts" of a JSON answer, white space trimmed (None where the answer is no JSON object with them)."""
    try:
        answer = json.loads(text)
    except ValueError:
        return None
    thoughts = answer.get("thoughts") if isinstance(answer, dict) else None
    return thoughts.strip() if isinstance(thoughts, str) else None


def oracle_thoughts_count(answers: list[tuple[str | None, str]], oracle_texts: list[str]) -> int:
    """On how many deals the agent's thoughts are the oracle's word for word (NumberLine: the true comparison
    of the two numbers and the move it implies), whatever the action: PPO can fix an action without its
    thoughts."""
    return sum(1 for (_, text), oracle_text in zip(answers, oracle_texts)
               if (wanted := thoughts_of(oracle_text)) is not None and thoughts_of(text) == wanted)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a `vlm-cards train` output directory")
    parser.add_argument("--episodes", type=int, default=200)
    parser.add_argument("--seed", type=int, default=100_000)
    parser.add_argument("--show-wrong", type=int, default=0, metavar="N",
                        help="print each agent's N most frequent wrong first answers beside the oracle's")
    args = parser.parse_args()

    from vlm_policy.agents import agent_answer_length, agent_base, load_agent, read_agent_data
    from vlm_policy.training.evaluation import eval_env_factory, standalone_policy

    run = Path(args.run)
    from vlm_policy.training.configs import TrainConfig

    config = TrainConfig.from_dict(json.loads((run / "config.json").read_text()))
    sft = str((run / "sft").resolve())
    agent = run / "ppo" / "final.zip"
    if agent.is_file():
        data = read_agent_data(agent)
        make = eval_env_factory(config.task.env_id, agent_base(agent, data), agent_answer_length(data),
                                config.task.prompt_style)
    else:  # a run stopped after SFT (an SFT-budget probe): its answer budget is sized from its demonstrations
        from vlm_policy.training.pipeline import Pipeline

        budget = Pipeline(config).demos.answer_budget(run / "demos" / "demos.jsonl")
        make = eval_env_factory(config.task.env_id, sft, budget, config.task.prompt_style)
    agents = {"after SFT": standalone_policy(sft, make(), device="cpu")}
    if agent.is_file():
        agents["after PPO"] = load_agent(agent, make(), device="cpu").policy
        agents["after PPO"].set_training_mode(False)
    for name, policy in agents.items():
        envs, observations, winnable, oracle, states = [make() for _ in range(args.episodes)], [], [], [], []
        for i, env in enumerate(envs):
            observation, info = env.reset(seed=args.seed + i)
            observations.append(observation)
            winnable.append(info.get("solvable"))
            oracle.append(env.unwrapped.oracle_action())
            states.append(info)
        oracle_texts = [env.unwrapped.oracle_answer(config["prompt_style"] == "cot") for env in envs]
        chances = np.array(oracle_answer_probabilities(policy, observations, oracle_texts, config["temperature"]))
        answers = first_answers(policy, envs, observations)
        actions = [action for action, _ in answers]
        counts = ", ".join(f"{action!r}: {n}" for action, n in Counter(actions).most_common())
        print(f"{name}: first actions on {args.episodes} deals: {counts}")
        print(f"{name}: the oracle's move on {sum(a == o for a, o in zip(actions, oracle))} of {args.episodes}")
        print(f"{name}: sampling at PPO's temperature {config['temperature']}, the oracle's whole answer has a "
              f"probability of at least 1% on {int((chances >= 0.01).sum())} of {args.episodes} deals "
              f"(median {np.median(chances):.3g}; under 1e-4 on {int((chances < 1e-4).sum())}: confidently wrong)")
        for text, oracle_text, deals, chance in wrong_first_answers(answers, oracle, oracle_texts, chances)[:args.show_wrong]:
            print(f"  wrong on {deals} deal(s), the oracle's answer at most {chance:.2g} likely:\n"
                  f"    agent:  {text}\n    oracle: {oracle_text}")
        if config["prompt_style"] == "cot":
            print(f"{name}: thoughts word for word the oracle's on {oracle_thoughts_count(answers, oracle_texts)} "
                  f"of {args.episodes}")
        readings = [reading_is_right(text, state) for (_, text), state in zip(answers, states)]
        if readings[0] is not None:
            print(f"{name}: both numbers read right on {sum(readings)} of {args.episodes}")
        if winnable[0] is not None:
            ends = sum(1 for action, can_win in zip(actions, winnable) if action == "=" and can_win)
            print(f"{name}: ends the game at once on {ends} of the {sum(winnable)} winnable deals")


if __name__ == "__main__":
    main()
