"""What a real checkpoint on a GPU needs, checked on the CPU with random models of the real families:
sampling exactly the scored distribution, fp32 optimised weights under bf16, micro-batched updates
whose memory follows the micro-batch and whose gradient is the unsplit one, and old log-probs
recomputed with the update's own forward."""

import json
from pathlib import Path

import pytest
import torch

from tests.helpers import preloaded_process_context
from tests.policy_helpers import batch_obs, make_policy
from vlm_policy.models.random_models import save_random_llava, save_random_qwen2_vl
from vlm_policy.models.tiny import TinyConfig

# generate() would apply each of these on top of the policy's own distribution if they leaked in.
KNOBS = {"no_repeat_ngram_size": 1, "repetition_penalty": 1.5, "top_k": 3, "top_p": 0.5, "do_sample": True}


def _with_generation_knobs(directory: Path) -> str:
    config_path = directory / "generation_config.json"
    config = json.loads(config_path.read_text())
    config.update(KNOBS)
    config_path.write_text(json.dumps(config))
    return str(directory)


@pytest.mark.parametrize("saver", [save_random_llava, save_random_qwen2_vl], ids=["llava", "qwen2_vl"])
def test_checkpoint_generation_settings_do_not_change_what_is_sampled(saver, tmp_path):
    plain = str(saver(tmp_path / "plain"))
    knobs = _with_generation_knobs(saver(tmp_path / "knobs"))
    answers = {}
    for name, path in (("plain", plain), ("knobs", knobs)):
        policy, _ = make_policy(path, max_new_tokens=32, temperature=1.0, lora_r=0)
        obs = batch_obs(policy, prompts=["p"] * 8)
        torch.manual_seed(0)
        with torch.no_grad():
            tokens, _, log_prob = policy(obs)
            _, scored, _ = policy.evaluate_actions(obs, tokens.float())
        answers[name] = tokens
        assert torch.allclose(log_prob, scored, atol=1e-4, rtol=0)
    # The same seed samples the same answers: nothing from generation_config.json joined in ...
    assert torch.equal(answers["plain"], answers["knobs"])
    # ... so tokens repeat within an answer, as they do at temperature 1 without n-gram blocking.
    repeats = sum(len(row) - len(set(row)) for row in answers["knobs"].tolist())
    assert repeats > 0


@pytest.mark.parametrize("lora_r", [0, 4])
def test_every_optimised_weight_is_float32_under_bfloat16(lora_r, tmp_path):
    path = str(save_random_llava(tmp_path / "llava"))
    policy, _ = make_policy(path, dtype="bfloat16", lora_r=lora_r, train_vision=True, max_new_tokens=8)
    optimised = [p for group in policy.optimizer.param_groups for p in group["params"]]
    assert optimised and all(p.dtype == torch.float32 for p in optimised)
    frozen = [p for p in policy.vlm.parameters() if not p.requires_grad]
    assert (lora_r == 0) == (not frozen)
    assert all(p.dtype == torch.bfloat16 for p in frozen)
    obs = batch_obs(policy, prompts=["p", "q"])
    policy.set_training_mode(True)
    with torch.no_grad():
        tokens = policy(obs)[0]
    values, log_prob, _ = policy.evaluate_actions(obs, tokens.float())
    (values.sum() + log_prob.sum()).backward()
    grads = [p.grad for p in optimised if p.grad is not None]
    assert grads and all(g.dtype == torch.float32 and torch.isfinite(g).all() for g in grads)


def test_real_checkpoints_use_gradient_checkpointing_by_default(tmp_path):
    path = str(save_random_llava(tmp_path / "llava"))
    assert make_policy(path, max_new_tokens=8)[0].gradient_checkpointing
    assert not make_policy("tiny", max_new_tokens=8)[0].gradient_checkpointing
    assert not make_policy(path, max_new_tokens=8, gradient_checkpointing=False)[0].gradient_checkpointing


# A language model wider and deeper than the tiny one (4 layers of width 256): its activations over
# 16 answers dominate the update's memory, as a real checkpoint's do (a 10M one gave the same ratio, 0.21).
MEMORY_TEST_MODEL = TinyConfig(text_hidden=256, text_layers=4)


def _update(path: str, micro_batch_size, answers: int = 16, tokens: int = 48):
    """One evaluate_actions + backward over ``answers`` answers of ``tokens`` tokens; returns the
    gradient and the peak resident memory the update added (bytes, from /proc's high-water mark)."""
    torch.manual_seed(0)
    policy, _ = make_policy(path, max_new_tokens=tokens, lora_r=0, temperature=1.0, micro_batch_size=micro_batch_size,
                            gradient_checkpointing=False, compute_entropy=False)
    policy.set_training_mode(True)
    obs = batch_obs(policy, prompts=[_numberline_prompt()] * answers)
    actions = torch.randint(5, 300, (answers, tokens)).float()
    # Warm up with one answer, backward included: one-time allocations (autograd's threads and
    # workspaces) are then outside what the update is charged for.
    values, log_prob, _ = policy.evaluate_actions({k: v[:1] for k, v in obs.items()}, actions[:1])
    (log_prob.mean() + values.mean()).backward()
    policy.zero_grad(set_to_none=True)
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak resident set size (VmHWM)
    before = _status("VmRSS")
    values, log_prob, _ = policy.evaluate_actions(obs, actions)
    (log_prob.mean() + values.mean()).backward()
    added = _status("VmHWM") - before
    gradient = torch.cat([p.grad.flatten() for p in policy.parameters() if p.grad is not None])
    return gradient, added


def _numberline_prompt() -> str:
    import gymnasium as gym

    import gym_vlm_cards  # noqa: F401

    return gym.make("gym_cards/NumberLine-v0").reset(seed=0)[1]["prompt"]


def _status(key: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) * 1024
    raise KeyError(key)


def _update_in_fresh_process(path: str, micro_batch_size, queue) -> None:
    torch.set_num_threads(1)
    gradient, added = _update(path, micro_batch_size)
    queue.put((gradient.numpy(), added))


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/clear_refs").exists(), reason="needs Linux's /proc to read peak memory")
def test_micro_batches_cut_update_memory_and_keep_the_gradient(tmp_path):
    path = str(save_random_llava(tmp_path / "llava", config=MEMORY_TEST_MODEL))

    context = preloaded_process_context()
    # Each in a process of its own, so one's allocations cannot hide the other's; side by side (one thread
    # each, peak memory is per process), which halves the test's time on two cores.
    started = {}
    for micro in (None, 2):
        queue = context.Queue()
        process = context.Process(target=_update_in_fresh_process, args=(path, micro, queue))
        process.start()
        started[micro] = (process, queue)
    results = {micro: queue.get(timeout=600) for micro, (_, queue) in started.items()}
    for process, _ in started.values():
        process.join()
    (whole, whole_memory), (split, split_memory) = results[None], results[2]
    print(f"update memory: unsplit {whole_memory / 2**20:.0f} MiB, micro-batches of 2 {split_memory / 2**20:.0f} MiB")
    assert split_memory <= 0.45 * whole_memory
    difference = torch.linalg.vector_norm(torch.tensor(whole - split)) / torch.linalg.vector_norm(torch.tensor(whole))
    assert difference < 1e-4


def test_recomputed_old_log_probs_equal_the_updates_first_ones_in_bfloat16(tmp_path):
    path = str(save_random_llava(tmp_path / "llava"))
    deviations = {}
    for mode in ("generate", "recompute"):
        policy, _ = make_policy(path, dtype="bfloat16", lora_r=4, max_new_tokens=24, temperature=1.0,
                                rollout_logprobs=mode)
        obs = batch_obs(policy, prompts=["p"] * 6)
        torch.manual_seed(0)
        with torch.no_grad():
            tokens, values, old = policy(obs)
            new_values, new, _ = policy.evaluate_actions(obs, tokens.float())
        deviations[mode] = float((new - old).exp().sub(1).abs().max())
        if mode == "recompute":
            assert torch.equal(old, new) and torch.equal(values, new_values)
    assert deviations["recompute"] == 0.0
    assert make_policy(path, dtype="bfloat16", max_new_tokens=8)[0].recomputes_rollout_logprobs  # auto in bf16
    assert not make_policy(path, dtype="float32", max_new_tokens=8)[0].recomputes_rollout_logprobs  # auto in fp32
