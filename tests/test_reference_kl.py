"""The KL penalty that keeps PPO near the model it started from (VLMPolicy(kl_coef=...))."""

import pytest
import torch
from stable_baselines3 import PPO

from tests.policy_helpers import batch_obs, make_policy
from vlm_policy import VLMPolicy, make_vlm_vec_env
from vlm_policy.models.random_models import save_random_llava
from vlm_policy.reference import ReferenceCache, carrying_loss_term, kl_to_reference
from vlm_policy.training.callbacks import VLMRolloutLogger


def _perturb(policy, scale=0.05, seed=0):
    generator = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for parameter in policy.vlm.parameters():
            if parameter.requires_grad:
                parameter.add_(torch.randn(parameter.shape, generator=generator) * scale)


def _penalty_kl(policy, obs, tokens):
    policy.evaluate_actions(obs, tokens.float())
    return policy.kl_reference.recent_kl[-1]


def test_carrying_loss_term_keeps_the_value_and_adds_the_terms_gradient():
    x = torch.tensor([1.0, 2.0], requires_grad=True)
    w = torch.tensor(3.0, requires_grad=True)
    out = carrying_loss_term(x * 2, w**2)
    assert torch.equal(out, torch.tensor([2.0, 4.0]))
    (out.sum() * 0).backward()  # a loss in which `out` has no weight at all still differentiates the term
    assert torch.equal(x.grad, torch.zeros(2))
    assert w.grad.item() == pytest.approx(6.0)


def test_k2_estimate_counts_only_valid_tokens():
    log_probs = torch.tensor([[-1.0, -2.0, -5.0]])
    reference = torch.tensor([[-1.5, -1.0, 0.0]])
    valid = torch.tensor([[True, True, False]])
    assert kl_to_reference(log_probs, reference, valid).item() == pytest.approx(0.5 * (0.25 + 1.0))


@pytest.mark.parametrize("lora_r", [0, 4])
def test_penalty_is_zero_at_the_start_and_grows_when_the_policy_moves(lora_r):
    policy, _ = make_policy(max_new_tokens=12, temperature=1.0, kl_coef=0.1, lora_r=lora_r)
    obs = batch_obs(policy)
    with torch.no_grad():
        tokens = policy(obs)[0]
        assert _penalty_kl(policy, obs, tokens) == pytest.approx(0.0, abs=1e-8)
        if lora_r:  # LoRA's B matrices start at zero: move them so the adapter changes the output
            for name, parameter in policy.vlm.named_parameters():
                if "lora_B" in name:
                    parameter.normal_(0, 0.05)
        else:
            _perturb(policy)
        assert _penalty_kl(policy, obs, tokens) > 1e-3


def test_penalty_does_not_change_the_log_probs_ppo_sees():
    with_penalty, _ = make_policy(max_new_tokens=12, temperature=1.0, kl_coef=1.0, lora_r=0)
    without, _ = make_policy(max_new_tokens=12, temperature=1.0, kl_coef=0.0, lora_r=0)
    _perturb(with_penalty)
    _perturb(without)
    obs = batch_obs(with_penalty)
    with torch.no_grad():
        tokens = with_penalty(obs)[0].float()
    assert torch.equal(with_penalty.evaluate_actions(obs, tokens)[1], without.evaluate_actions(obs, tokens)[1])


def test_penalty_gradient_pulls_a_moved_policy_back_to_the_reference():
    policy, _ = make_policy(max_new_tokens=12, temperature=1.0, kl_coef=1.0, lora_r=0, lr=1e-3)
    obs = batch_obs(policy)
    _perturb(policy, scale=0.1)
    with torch.no_grad():
        tokens = policy(obs)[0].float()
    kls = []
    for _ in range(15):
        _, log_prob, _ = policy.evaluate_actions(obs, tokens)
        kls.append(policy.kl_reference.recent_kl[-1])
        policy.optimizer.zero_grad()
        (0.0 * log_prob.sum()).backward()  # the PPO loss contributes nothing: only the penalty's gradient
        policy.optimizer.step()
    assert kls[0] > 1e-2
    assert kls[-1] < 0.5 * kls[0]


def test_without_penalty_no_reference_is_built_and_nothing_is_logged():
    policy, _ = make_policy(max_new_tokens=12, lora_r=0, kl_coef=0.0)
    assert policy.kl_reference is None
    obs = batch_obs(policy)
    with torch.no_grad():
        policy.evaluate_actions(obs, policy(obs)[0].float())
    assert not any(name.startswith("kl_reference.") for name, _ in policy.named_parameters())


def test_negative_kl_coef_is_refused():
    with pytest.raises(ValueError, match="kl_coef"):
        make_policy(kl_coef=-0.1)


@pytest.mark.slow
def test_ppo_with_penalty_logs_it_and_saves_no_reference_weights(tmp_path):
    env = make_vlm_vec_env("gym_cards/NumberLine-v0", n_envs=2, model="tiny", seed=0, max_new_tokens=16)
    kwargs = {"model": "tiny", "lora_r": 0, "kl_coef": 0.5, "temperature": 1.0}
    model = PPO(VLMPolicy, env, n_steps=4, batch_size=8, n_epochs=2, learning_rate=1e-3, policy_kwargs=kwargs)
    model.learn(16, callback=VLMRolloutLogger())
    assert model.logger.name_to_value["train/kl_to_reference"] > 0
    assert not any(key.startswith("kl_reference.") for key in model.policy.state_dict())
    model.save(tmp_path / "agent")
    loaded = PPO.load(tmp_path / "agent", env=env)
    # The reference comes back from the model source, not from the trained weights.
    for (name, reference), (_, original) in zip(loaded.policy.kl_reference.frozen.named_parameters(),
                                                model.policy.kl_reference.frozen.named_parameters()):
        assert torch.equal(reference, original), name
    obs = batch_obs(model.policy, size=env.observation_space["image"].shape[0])
    with torch.no_grad():
        tokens = model.policy(obs)[0]
    assert _penalty_kl(loaded.policy, obs, tokens) == pytest.approx(_penalty_kl(model.policy, obs, tokens), rel=1e-5)
    assert _penalty_kl(loaded.policy, obs, tokens) > 0


def test_lora_reference_is_the_base_without_the_adapter(tmp_path):
    path = str(save_random_llava(tmp_path / "llava"))
    policy, _ = make_policy(path, max_new_tokens=8, temperature=1.0, kl_coef=0.1, lora_r=4)
    assert policy.kl_reference.frozen is None  # no second copy of the base in memory
    base, _ = make_policy(path, max_new_tokens=8, temperature=1.0, lora_r=0)
    obs = batch_obs(policy)
    with torch.no_grad():
        for name, parameter in policy.vlm.named_parameters():
            if "lora_B" in name:
                parameter.normal_(0, 0.05)
        tokens = policy(obs)[0]
        images, prompts = policy._unpack(obs)
        base_per_token = base.answer_distribution.score(images, prompts, tokens, base.device).per_token
        # The base model's own log-probs are exactly the reference's.
        reference = policy.kl_reference.log_probs(policy.answer_distribution, images, prompts, tokens, policy.device)
        assert torch.allclose(reference, base_per_token, atol=1e-6, rtol=0)
        assert _penalty_kl(policy, obs, tokens) > 1e-4


def test_reference_runs_once_per_sample_across_epochs(monkeypatch):
    policy, _ = make_policy(max_new_tokens=12, temperature=1.0, kl_coef=0.1, lora_r=0)
    _perturb(policy)
    obs = batch_obs(policy)
    with torch.no_grad():
        tokens = policy(obs)[0].float()
    calls = []
    original = policy.kl_reference.log_probs
    monkeypatch.setattr(policy.kl_reference, "log_probs", lambda *a: calls.append(1) or original(*a))
    first = policy.evaluate_actions(obs, tokens)[1]
    kl_first = policy.kl_reference.recent_kl[-1]
    order = torch.tensor([2, 0, 1])
    shuffled = policy.evaluate_actions({k: v[order] for k, v in obs.items()}, tokens[order])[1]  # a later epoch
    assert len(calls) == 1
    assert torch.allclose(shuffled, first[order]) and policy.kl_reference.recent_kl[-1] == pytest.approx(kl_first)
    policy.evaluate_actions(obs, tokens.flip(0))  # answers paired with other observations: new samples
    assert len(calls) == 2


def test_reference_cache_drops_the_oldest_entries():
    cache = ReferenceCache(max_entries=2)
    obs = {"image": torch.arange(3.0).reshape(3, 1)}
    tokens = torch.tensor([[1], [2], [3]])
    cache.put(obs, tokens, torch.tensor([[-1.0], [-2.0], [-3.0]]))
    assert len(cache) == 2
    assert cache.get(obs, tokens) is None  # the first row was dropped
    rows = cache.get({"image": obs["image"][1:]}, tokens[1:])
    assert torch.equal(rows, torch.tensor([[-2.0], [-3.0]]))
