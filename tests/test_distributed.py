"""Data-parallel training (vlm_policy.distributed) with 2 gloo processes on the CPU."""

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tests.helpers import preloaded_process_context
from vlm_policy import distributed

ROOT = Path(__file__).resolve().parents[1]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _run_two(worker, tmp_path, *args):
    """Runs ``worker(rank, out_dir, *args)`` in 2 gloo processes; returns each rank's JSON result."""
    port = _free_port()
    start_method = preloaded_process_context().get_start_method()  # forked from a server that imported torch
    mp.start_processes(_bootstrap, args=(2, port, worker, str(tmp_path), args), nprocs=2, join=True,
                       start_method=start_method)
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in range(2)]


def _bootstrap(rank, world, port, worker, out_dir, args):
    import datetime

    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK=str(rank), WORLD_SIZE=str(world),
                      LOCAL_RANK=str(rank))
    # A short timeout: a process left waiting in a collective fails the test instead of hanging it.
    dist.init_process_group("gloo", rank=rank, world_size=world, timeout=datetime.timedelta(seconds=120))
    try:
        result = worker(rank, *args)
        (Path(out_dir) / f"rank{rank}.json").write_text(json.dumps(result))
    finally:
        distributed.shutdown()


def _ppo(n_envs=2, n_steps=8, batch_size=4, n_epochs=2, same_envs=False, **kwargs):
    from stable_baselines3 import PPO

    from vlm_policy import VLMPolicy, make_vlm_vec_env

    rank = distributed.current().rank
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=n_envs, model="tiny", seed=0 if same_envs else 100 * rank,
                           max_new_tokens=12)
    # SB3 reseeds the envs with PPO's seed: per rank unless both processes must see the same episodes.
    return PPO(VLMPolicy, env, n_steps=n_steps, batch_size=batch_size, n_epochs=n_epochs, learning_rate=1e-3,
               seed=0 if same_envs else rank, device="cpu", policy_kwargs={"model": "tiny", "temperature": 1.0, "lora_r": 0,
                                                       "train_vision": True, "device": "cpu"}, **kwargs)


def _split_gradient_worker(rank):
    """The averaged gradient of each half of a batch against the gradient of the whole batch."""
    model = _ppo(same_envs=True)
    policy = model.policy
    distributed.broadcast_module(policy)
    policy.set_training_mode(True)
    torch.manual_seed(0)  # the same batch and answers in both processes
    obs = model.env.reset()
    obs = {key: torch.as_tensor(value).repeat(2, *[1] * (value.ndim - 1)) for key, value in obs.items()}
    with torch.no_grad():
        actions, _, _ = policy(obs)
    advantages = torch.tensor([1.0, -0.5, 0.25, 2.0])

    def loss_on(rows):
        values, log_prob, _ = policy.evaluate_actions({k: v[rows] for k, v in obs.items()}, actions[rows].float())
        return -(advantages[rows] * log_prob).mean() + 0.5 * values.flatten().pow(2).mean()

    policy.optimizer.zero_grad()
    loss_on(slice(0, 4)).backward()
    # (The CLIP tower's final layer norm gets no gradient: LLaVA reads the layer before it.)
    used = [p for p in policy.parameters() if p.requires_grad and p.grad is not None]
    whole = [p.grad.clone() for p in used]
    policy.optimizer.zero_grad()
    averager = distributed.GradientAverager(policy.parameters())
    loss_on(slice(2 * rank, 2 * rank + 2)).backward()
    averager.remove()
    averaged = [p.grad for p in used]
    scale = max(float(g.abs().max()) for g in whole)
    worst = max(float((a - w).abs().max()) for a, w in zip(averaged, whole))
    return {"worst": worst, "scale": scale, "tensors": len(whole), "actions_differ_per_half": bool(
        not torch.equal(actions[:2], actions[2:]))}


def _every_check_worker(rank, out_dir):
    """All the 2-process checks in one pair of processes (starting them costs more than the checks)."""
    return {"split_gradient": _split_gradient_worker(rank), "learn": _learn_worker(rank, 1e-9),
            "sft": _sft_worker(rank, out_dir), "diverged": _diverged_worker(rank), "stop": _stop_worker(rank, out_dir)}


@pytest.fixture(scope="module")
def two_processes(tmp_path_factory):
    """Each rank's results of :func:`_every_check_worker` (one spawn of 2 gloo processes)."""
    folder = tmp_path_factory.mktemp("two_processes")
    return folder, _run_two(_every_check_worker, folder, str(folder))


@pytest.mark.slow
def test_the_averaged_gradient_of_a_split_batch_is_the_whole_batch_gradient(two_processes):
    for result in (r["split_gradient"] for r in two_processes[1]):
        assert result["tensors"] > 50 and result["scale"] > 0
        assert result["worst"] <= 1e-5 * max(1.0, result["scale"]), result


def _learn_worker(rank, target_kl):
    model = _ppo(target_kl=None, rollout_buffer_class=distributed.AgreedStopRolloutBuffer)
    with distributed.data_parallel(model, target_kl) as early_stop:
        model.learn(32)
    digest = distributed.check_same_weights(model.policy)
    return {"digest": digest, "stops": early_stop.stops if early_stop else 0, "updates": model._n_updates,
            "rollout": distributed.weights_digest([torch.as_tensor(model.rollout_buffer.actions)]),
            "num_timesteps": model.num_timesteps}


@pytest.mark.slow
def test_after_a_short_learn_both_processes_hold_the_same_weights_from_different_rollouts(two_processes):
    first, second = (r["learn"] for r in two_processes[1])
    assert first["digest"] == second["digest"]
    assert first["rollout"] != second["rollout"]  # each process played its own episodes
    assert first["num_timesteps"] == second["num_timesteps"] == 32


def _stop_worker(rank, out_dir):
    """PPO with a validation check that wins everything after the first update: rank 0 plays, both stop."""
    from vlm_policy.training.callbacks import GreedyValidationCallback, StopOnValidationSuccess

    scores = iter([0.5, 1.0, 0.0])
    main = distributed.current().is_main
    check = GreedyValidationCallback(lambda policy: next(scores), Path(out_dir) / "stop.jsonl" if main else None,
                                     every=1, callback_after_check=StopOnValidationSuccess(1.0))
    model = _ppo(target_kl=None)
    with distributed.data_parallel(model, None):
        model.learn(48, callback=check)
    return {"num_timesteps": model.num_timesteps, "stopped_at": check.stopped_at,
            "digest": distributed.check_same_weights(model.policy)}


@pytest.mark.slow
def test_a_ppo_stop_on_rank_0_s_check_is_taken_by_every_process(two_processes):
    first, second = (r["stop"] for r in two_processes[1])
    # 2 envs x 8 steps per update: the check after the first update (16 env steps) stops both processes at the
    # next rollout's first env step; the second update, whose all-reduce rank 0 would wait on, never starts.
    assert first["stopped_at"] == second["stopped_at"] == {"timesteps": 16, "success_rate": 1.0}
    assert first["num_timesteps"] == second["num_timesteps"] == 18
    assert first["digest"] == second["digest"]


@pytest.mark.slow
def test_an_early_stop_is_taken_by_both_processes_or_neither(two_processes):
    # A tiny target KL: after the first step every minibatch exceeds it, on the mean of both processes.
    first, second = (r["learn"] for r in two_processes[1])
    assert first["stops"] == second["stops"] == 2  # one per update (2 rollouts of 16 env steps)
    assert first["updates"] == second["updates"]


def _sft(out_dir):
    from vlm_policy.training.configs import CommonConfig, SFTConfig
    from vlm_policy.training.demos import read_demonstrations, write_demonstrations
    from vlm_policy.training.sft import run_sft

    demos = Path(out_dir) / "demos"
    if distributed.current().is_main and not demos.exists():
        write_demonstrations("gym_cards/NumberLine-v0", 12, demos, seed=0, env_kwargs={"image_size": 64})
    distributed.barrier()
    sft = SFTConfig(sft_steps=3, sft_batch_size=6, vision_warmup_steps=2)
    return run_sft(read_demonstrations(demos), Path(out_dir) / f"sft_{distributed.current().world_size}", sft=sft,
                   common=CommonConfig(progress=False))


def _sft_worker(rank, out_dir):
    _sft(out_dir)
    return {}


@pytest.mark.slow
def test_data_parallel_sft_takes_the_one_process_steps(two_processes):
    from safetensors.torch import load_file

    from vlm_policy.models.tiny import build_tiny_model

    folder = two_processes[0]
    torch.set_num_threads(1)
    _sft(folder)
    two = load_file(folder / "sft_2" / "model.safetensors")
    one = load_file(folder / "sft_1" / "model.safetensors")
    assert two.keys() == one.keys()
    worst = max(float((two[k] - one[k]).abs().max()) for k in one)
    assert worst < 1e-5, worst  # the same steps (up to the order of float sums)
    fresh = build_tiny_model(seed=0).get_input_embeddings().weight
    assert not torch.equal(fresh, one["language_model.model.embed_tokens.weight"])  # and SFT did move the weights


def _diverged_worker(rank):
    layer = torch.nn.Linear(3, 2)
    with torch.no_grad():
        layer.weight.fill_(float(rank))
    try:
        distributed.check_same_weights(layer)
    except RuntimeError as error:
        return {"error": str(error)}
    return {"error": None}


@pytest.mark.slow
def test_processes_with_different_weights_fail_loudly(two_processes):
    for result in (r["diverged"] for r in two_processes[1]):
        assert result["error"] and "processes [1] hold other trainable weights than rank 0" in result["error"]


def test_a_single_process_is_rank_0_of_1_and_every_collective_is_a_no_op():
    context = distributed.current()
    assert (context.rank, context.world_size, context.enabled) == (0, 1, False)
    assert distributed.any_process(True) and not distributed.any_process(False)
    assert distributed.sum_across([1.0, 2.0]) == [1.0, 2.0]
    assert distributed.broadcast_object("x") == "x" and distributed.gather_objects(3) == [3]
    distributed.shutdown()  # no process group: nothing to leave, no error


def test_ppo_timesteps_must_be_whole_rollouts_of_all_processes():
    from vlm_policy.training.configs import TrainConfig
    from vlm_policy.training.pipeline import check_divides_across_processes

    check_divides_across_processes(TrainConfig.from_settings(ppo_timesteps=512, n_envs=8, n_steps=32), 2)
    with pytest.raises(ValueError, match="use 512 or 1024"):
        check_divides_across_processes(TrainConfig.from_settings(ppo_timesteps=600, n_envs=8, n_steps=32), 2)


def test_commands_that_run_in_one_process_refuse_torchrun(monkeypatch, capsys):
    from vlm_policy.training import cli

    monkeypatch.setenv("WORLD_SIZE", "2")
    assert cli.main(["demos", "--out", "x"]) == 2
    assert "runs in one process" in capsys.readouterr().err


@pytest.mark.slow
def test_torchrun_runs_the_main_job_on_two_processes_and_only_rank_0_writes(tmp_path):
    out = tmp_path / "run"
    # --standalone: torchrun picks a free port itself (no race with another process for a chosen one).
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node=2", "-m", "vlm_policy", "train", "--env", "gym_cards/NumberLine-v0", "--model", "tiny", "--out-dir", str(out),
               "--demos", "8", "--sft-steps", "2", "--vision-warmup-steps", "1", "--sft-batch-size", "4",
               "--ppo-timesteps", "32", "--n-envs", "2", "--n-steps", "4", "--batch-size", "8", "--n-epochs", "1",
               "--eval-episodes", "1", "--max-new-tokens", "24", "--ppo-check-episodes", "1", "--max-episode-steps", "2",
               "--progress", "false", "--ppo-stop-success", "0"]  # 1 validation episode can be won by chance
    environment = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    finished = subprocess.run(command, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=600)
    assert finished.returncode == 0, finished.stderr[-3000:]
    assert finished.stdout.count("held-out episodes") == 1  # one table, from rank 0
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert [p["timesteps"] for p in curve] == [16, 32]  # each point once, in env steps of both processes
    assert sorted(p.name for p in (out / "ppo" / "checkpoints").iterdir()) == ["rl_model_16_steps.zip",
                                                                              "rl_model_32_steps.zip"]
    assert json.loads((out / "results.json").read_text()).keys() == {"after SFT", "after PPO"}
    # One TensorBoard file per run of it (sft, ppo_1), from rank 0 alone; rank 1 writes none.
    for run in ("sft", "ppo_1"):
        assert len(list((out / "tb" / run).glob("events.out.tfevents.*"))) == 1, run
    assert json.loads((out / "sft" / "training.json").read_text())["processes"] == 2
    # Rank 0 alone plays PPO's greedy checks (the SFT model, the last update) and keeps the best agent.
    checks = [json.loads(line) for line in (out / "ppo" / "validation.jsonl").read_text().splitlines()]
    assert [c["timesteps"] for c in checks] == [0, 32] and (out / "ppo" / "best" / "agent.zip").is_file()
    # --resume: without its final agent and newest checkpoint the run continues from 16 env steps to 32.
    (out / "ppo" / "final.zip").unlink()
    (out / "ppo" / "checkpoints" / "rl_model_32_steps.zip").unlink()
    resumed = subprocess.run(command + ["--resume"], cwd=tmp_path, env=environment, capture_output=True, text=True,
                             timeout=600)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert resumed.stdout.count("resuming PPO from") == 1 and "rl_model_16_steps.zip" in resumed.stdout
    curve = [json.loads(line) for line in (out / "curve.jsonl").read_text().splitlines()]
    assert curve[-1]["timesteps"] == 32 and (out / "ppo" / "final.zip").is_file()


def test_the_agreed_early_stop_takes_sb3_s_own_decisions_in_one_process():
    """The buffer and optimizer-hook stop, on one process, trains exactly what SB3's ``target_kl`` trains."""
    torch.manual_seed(0)
    own = _ppo(target_kl=1e-4)
    own.learn(32)
    torch.manual_seed(0)
    agreed = _ppo(target_kl=None, rollout_buffer_class=distributed.AgreedStopRolloutBuffer)
    early_stop = distributed.AgreedEarlyStop(agreed, 1e-4)
    agreed.learn(32)
    early_stop.remove()
    assert early_stop.stops >= 1  # the rule fired, so the comparison below covers a stopped update
    weights = [p for p in own.policy.parameters() if p.requires_grad]
    assert distributed.weights_digest(weights) == distributed.weights_digest(
        p for p in agreed.policy.parameters() if p.requires_grad)
    with pytest.raises(ValueError, match="rollout_buffer_class=AgreedStopRolloutBuffer"):
        distributed.AgreedEarlyStop(_ppo(target_kl=None), 1e-4)
