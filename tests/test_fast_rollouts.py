"""Faster decoding that samples the same distribution: LoRA merged into a copy of the base weights for
rollouts, and a static KV cache with a compiled decoding step."""

import pytest
import torch

from tests.policy_helpers import batch_obs, make_policy
from vlm_policy.adapters import lora_merged
from vlm_policy.logprobs import valid_mask
from vlm_policy.models.random_models import save_random_llava


@pytest.fixture(scope="module")
def llava_dir(tmp_path_factory):
    return str(save_random_llava(tmp_path_factory.mktemp("llava") / "llava"))


def _trained_looking_policy(path, max_new_tokens=32, **kwargs):
    """A LoRA r=16 policy whose adapter is not zero (a fresh adapter's B is zero: merging would change nothing)."""
    torch.manual_seed(0)  # peft draws the A matrices from the global generator
    policy, _ = make_policy(path, lora_r=16, temperature=1.0, max_new_tokens=max_new_tokens, **kwargs)
    generator = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for name, parameter in policy.vlm.named_parameters():
            if "lora_B" in name:
                parameter.copy_(torch.randn(parameter.shape, generator=generator) * 0.05)
    return policy


def test_merged_rollouts_sample_the_same_tokens_and_leave_the_base_weights_bit_identical(llava_dir):
    rollouts = {}
    for merge in (False, True):
        policy = _trained_looking_policy(llava_dir, max_new_tokens=24, merge_for_rollouts=merge)
        obs = batch_obs(policy, prompts=["p", "a longer prompt", "q", "r"])
        frozen = {name: p.detach().clone() for name, p in policy.vlm.named_parameters() if not p.requires_grad}
        torch.manual_seed(0)
        with torch.no_grad():
            tokens, values, old_log_prob = policy(obs)  # fp32: the old log-probs are the generation's own
            scored = policy.answer_distribution.score(*policy._unpack(obs), tokens, policy.device, with_entropy=False)
            for _ in range(9):  # ten rollouts in all
                policy(obs)
        rollouts[merge] = tokens, scored.per_token
        after = dict(policy.vlm.named_parameters())
        assert all(torch.equal(after[name], before) for name, before in frozen.items())
        assert not any(p.grad is not None for p in policy.vlm.parameters())
        # The rollout's old log-probabilities against the unmerged model's teacher-forced ones, per answer.
        assert torch.allclose(old_log_prob, scored.log_prob(policy.cot_weight), atol=1e-4, rtol=0)
    (plain_tokens, plain_per_token), (merged_tokens, merged_per_token) = rollouts[False], rollouts[True]
    assert torch.equal(plain_tokens, merged_tokens)
    assert valid_mask(plain_tokens, policy.end_ids).sum() > 40  # long answers: many chances to differ
    # Scoring always runs the unmerged model: identical whether rollouts merged or not.
    assert torch.equal(plain_per_token, merged_per_token)


def test_merged_generation_log_probs_agree_with_the_unmerged_per_token_in_float32(llava_dir):
    policy = _trained_looking_policy(llava_dir)
    images, prompts = policy._unpack(batch_obs(policy, prompts=["p", "a longer prompt", "q"]))
    distribution = policy.answer_distribution
    sampled = {}
    for merge in (False, True):
        distribution.merge_adapter = merge
        torch.manual_seed(0)
        sampled[merge] = distribution.sample(images, prompts, policy.device)
    assert torch.equal(sampled[False].tokens, sampled[True].tokens)
    difference = (sampled[False].per_token - sampled[True].per_token).abs().max()
    assert 0 < difference <= 1e-5  # merged weights round differently, within float32's noise


def test_merging_is_refused_where_it_cannot_be_exact(llava_dir):
    from tests.policy_helpers import wrapped_env
    from vlm_policy import VLMPolicy

    env = wrapped_env(llava_dir, 8)
    with pytest.raises(ValueError, match="4-bit base cannot hold a merged"):
        VLMPolicy(env.observation_space, env.action_space, lambda _: 1e-4, model=llava_dir, lora_r=4,
                  load_in_4bit=True, merge_for_rollouts=True)


def test_lora_merged_puts_the_original_parameters_back_even_after_an_error(llava_dir):
    policy = _trained_looking_policy(llava_dir)
    originals = {name: p for name, p in policy.vlm.named_parameters()}
    with pytest.raises(RuntimeError, match="inside"):
        with lora_merged(policy.vlm):
            merged = dict(policy.vlm.named_parameters())
            changed = [n for n, p in merged.items() if n in originals and p is not originals[n]]
            assert changed and all(n.endswith("base_layer.weight") for n in changed)
            raise RuntimeError("inside")
    assert all(p is originals[name] for name, p in policy.vlm.named_parameters())


@pytest.mark.slow
def test_compiled_decoding_on_a_static_cache_gives_the_eager_tokens():
    policy, _ = make_policy("tiny", temperature=1.0, max_new_tokens=12)
    images, prompts = policy._unpack(batch_obs(policy, prompts=["p", "a longer prompt", "q", "r"]))
    distribution = policy.answer_distribution
    answers = {}
    for compiled in (False, True):
        distribution.compile_decoding = compiled
        for attempt in range(2):  # the second compiled call reuses the compiled step
            torch.manual_seed(attempt)
            answers[compiled, attempt] = distribution.generate(images, prompts, policy.device)
    for attempt in range(2):
        assert torch.equal(answers[False, attempt], answers[True, attempt])
    assert not torch.equal(answers[False, 0], answers[False, 1])  # the seed decides: the check has teeth
