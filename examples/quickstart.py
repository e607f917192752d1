"""The main job in Python: demonstrations and SFT, then plain SB3 PPO with this package's callbacks.

    python examples/quickstart.py        # NumberLine with the tiny model on the CPU, a few minutes

It is the README's quick start (a test keeps the two the same) and prints the held-out success rate after
SFT and after PPO. ``Pipeline`` lends its stages one by one (``vlm_policy.training.stages``; each is skipped
when ``out_dir`` already holds it); PPO is SB3's own, with a greedy validation check
every second update that stops training once the agent wins every validation episode.
"""

from stable_baselines3 import PPO

from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.training.callbacks import GreedyValidationCallback, StopOnValidationSuccess
from vlm_policy.training.pipeline import Pipeline, TrainConfig


def main(**settings):
    # The README's quick start, with room for other settings (the test runs it with tiny budgets).
    config = TrainConfig.from_settings(**{"env_id": "gym_cards/NumberLine-v0", "model": "tiny",
                                          "out_dir": "runs/quickstart", **settings})
    run = Pipeline(config)                               # its stages: run.demos, .sft, .ppo, .evaluation
    demos = run.demos.make()                            # the oracle plays, frames and answers recorded
    budget = run.demos.answer_budget(demos)             # the longest answer, in tokens
    sft_dir = run.sft.make(demos, budget)               # supervised fine-tuning, stopped by its checks
    before = run.evaluation.checkpoint(sft_dir, budget)

    env = make_vlm_vec_env(config.task.env_id, n_envs=config.ppo.n_envs, model=sft_dir,  # settings: config.<group>.<name>
                           seed=config.common.seed + 1, max_new_tokens=budget, env_kwargs=config.task.env_kwargs())
    model = PPO(VLMPolicy, env, **run.ppo.arguments(), policy_kwargs=run.ppo.policy_kwargs(sft_dir))
    check = GreedyValidationCallback(run.ppo.validation(sft_dir, budget), run.out / "validation.jsonl",
                                     every=2, callback_after_check=StopOnValidationSuccess(1.0))
    model.learn(config.ppo.ppo_timesteps, callback=check)
    after = run.evaluation.evaluate(model.policy, sft_dir, budget, "after PPO")[0]
    print(f"success after SFT {before.success_rate:.1%}, after PPO {after.success_rate:.1%}")
    model.save(run.out / "agent")                       # PPO.load("runs/quickstart/agent", env=env)
    return before, after


if __name__ == "__main__":
    main()
