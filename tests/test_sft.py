import json

import numpy as np
import pytest
import torch

from vlm_policy.loading import load_vlm
from vlm_policy.training.demos import Example
from vlm_policy.training.sft import BatchDrawer, WarmupLabels, state_slots, vision_warmup


def test_state_slots_name_each_field_and_list_position():
    state = json.dumps({"Player Card": ["H2", "CK"], "Dealer Card": ["S7"], "current": 3})
    assert state_slots(state) == {"Dealer Card[0]": '"S7"', "Player Card[0]": '"H2"', "Player Card[1]": '"CK"',
                                  "current": "3"}


def test_warmup_labels_use_whole_states_when_they_repeat_and_slots_when_they_do_not():
    repeating = [json.dumps({"current": i % 3}) for i in range(12)]
    assert WarmupLabels(repeating).mode == "state"
    hands = [json.dumps({"Player Card": [f"H{r}", f"S{s}"] + (["DA"] if r == "9" else [])})
             for r in "23456789" for s in "2345"]
    labels = WarmupLabels(hands)
    assert labels.mode == "slots"
    assert labels.names == ["Player Card[0]", "Player Card[1]", "Player Card[2]"]
    first, second, third = labels.targets(hands[:2] + hands[-1:], "cpu")
    assert first[0] == first[1] != first[2]  # H2, H2, H9
    assert second[0] != second[1]  # S2, S3
    # A card not dealt is a class of its own, distinct from the ace the 9-hands hold.
    assert third[0] == third[1] != third[2]


def test_warmup_labels_reject_a_single_state_and_unknown_modes():
    with pytest.raises(ValueError, match="two different states"):
        WarmupLabels([json.dumps({"current": 1})] * 3)
    with pytest.raises(ValueError, match="'auto', 'state' or 'slots'"):
        WarmupLabels([json.dumps({"current": 1}), json.dumps({"current": 2})], mode="cards")


def _examples(states: list[str]) -> list[Example]:
    return [Example(image=np.zeros((4, 4, 3), dtype=np.uint8), prompt="p", answer=s, state=s) for s in states]


def test_balanced_batches_draw_each_state_equally_often():
    # A goal-side state demonstrated 30 times, two edge states once and three times (NumberLine's skew).
    examples = _examples(["near"] * 30 + ["edge"] + ["middle"] * 3)
    for mode in ("on", "auto"):  # auto: 34 demonstrations of 3 states repeat
        balanced = [e.state for e in BatchDrawer(examples, seed=0, balance_states=mode).draw(30_000)]
        for state in ("near", "edge", "middle"):
            assert balanced.count(state) / len(balanced) == pytest.approx(1 / 3, abs=0.02)
    plain = [e.state for e in BatchDrawer(examples, seed=0, balance_states="off").draw(30_000)]
    assert plain.count("edge") / len(plain) == pytest.approx(1 / 34, abs=0.005)


def test_auto_balancing_leaves_the_draw_alone_where_states_do_not_repeat():
    # Card hands: nearly every state new (one of them twice), so auto makes the plain draw, draw for draw.
    examples = _examples([f"hand {i}" for i in range(50)] + ["hand 0"])
    auto = BatchDrawer(examples, seed=3, balance_states="auto").draw(200)
    plain = BatchDrawer(examples, seed=3, balance_states="off").draw(200)
    assert [e.state for e in auto] == [e.state for e in plain]
    # The plain draw is the one SFT made before the option existed (earlier results reproduce).
    expected = np.random.default_rng(3).integers(51, size=200)
    assert [e.state for e in plain] == [examples[i].state for i in expected]
    with pytest.raises(ValueError, match="'auto', 'on' or 'off'"):
        BatchDrawer(examples, seed=3, balance_states="yes")


def test_slot_warmup_teaches_the_tiny_vision_tower_to_read_a_card_position():
    # Two cards drawn as colour blocks, and a slot that is not drawn; states rarely repeat.
    rng = np.random.default_rng(0)
    examples = []
    for i in range(32):
        left, right = int(rng.integers(2)), int(rng.integers(2))
        image = np.zeros((64, 64, 3), dtype=np.uint8)
        image[:, :32, 0] = 255 * left
        image[:, 32:, 2] = 255 * right
        state = json.dumps({"cards": [f"L{left}", f"R{right}"], "step": i % 8})
        examples.append(Example(image=image, prompt="p", answer="a", state=state))
    torch.manual_seed(0)
    bundle = load_vlm("tiny", seed=0)
    accuracy = vision_warmup(bundle, examples, steps=30, learning_rate=1e-3, batch_size=16, seed=0,
                             progress=False, labels="slots", balance_states="off")
    # The step is not drawn at all (chance: 1/8), so reading both cards gives at least (1 + 1 + 1/8) / 3.
    assert accuracy > 0.65


def test_sft_micro_batches_accumulate_to_the_same_step(tmp_path):
    from safetensors.torch import load_file

    from vlm_policy.training.configs import CommonConfig, ModelConfig, SFTConfig
    from vlm_policy.training.demos import read_demonstrations, write_demonstrations
    from vlm_policy.training.sft import run_sft

    write_demonstrations("gym_cards/NumberLine-v0", 8, tmp_path / "demos", env_kwargs={"image_size": 64})
    examples = read_demonstrations(tmp_path / "demos")
    sft = SFTConfig(sft_steps=2, sft_batch_size=4, vision_warmup_steps=0)
    common = CommonConfig(progress=False, device="cpu")
    for name, micro in (("whole", 0), ("micro", 1)):
        run_sft(examples, tmp_path / name, sft=sft, model=ModelConfig(micro_batch_size=micro), common=common)
    whole, micro = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("whole", "micro"))
    assert whole.keys() == micro.keys()
    for key in whole:
        torch.testing.assert_close(micro[key], whole[key], rtol=1e-4, atol=1e-5)


def test_sft_stops_at_the_first_check_that_meets_every_target_and_records_the_checks(tmp_path):
    from vlm_policy.training.configs import CommonConfig, SFTConfig
    from vlm_policy.training.demos import read_demonstrations, write_demonstrations
    from vlm_policy.training.sft import run_sft

    write_demonstrations("gym_cards/NumberLine-v0", 8, tmp_path / "demos", env_kwargs={"image_size": 64})
    examples = read_demonstrations(tmp_path / "demos")
    seen, asked = [], []
    # A scripted validation: success 20%, 70%, 70%, 90%; reach 50%, 60%, 95%, 99%.
    script = [{"success": 0.2, "reach": 0.5}, {"success": 0.7, "reach": 0.6}, {"success": 0.7, "reach": 0.95},
              {"success": 0.9, "reach": 0.99}]

    def check(bundle, names) -> dict[str, float]:
        seen.append(bundle.model.training)
        asked.append(sorted(names))
        return {name: script[len(seen) - 1][name] for name in names}

    common = CommonConfig(progress=False, device="cpu")

    def sft_steps_and_checks(**stops):
        sft = SFTConfig(sft_steps=20, sft_batch_size=2, vision_warmup_steps=0, sft_check_every=3, **stops)
        seen.clear(), asked.clear()
        folder = tmp_path / "_".join(f"{k}{v}" for k, v in stops.items())
        metadata = json.loads((run_sft(examples, folder, sft=sft, common=common, validation=check)
                               / "training.json").read_text())
        return metadata["steps_done"], metadata["validation"]

    # Both stops: the first check where success >= 0.6 AND reach >= 0.9 is the third.
    steps, checks = sft_steps_and_checks(sft_stop_success=0.6, sft_stop_reach=0.9)
    assert seen == [False, False, False]  # the model is checked in eval mode
    assert steps == 9 and asked[0] == ["reach", "success"]
    assert checks == [{"step": 3, **script[0]}, {"step": 6, **script[1]}, {"step": 9, **script[2]}]
    # Success alone: only success is measured, and it stops at the second check.
    steps, checks = sft_steps_and_checks(sft_stop_success=0.6, sft_stop_reach=0)
    assert steps == 6 and asked == [["success"], ["success"]] and checks[-1] == {"step": 6, "success": 0.7}
    # Reach alone: the third check.
    steps, checks = sft_steps_and_checks(sft_stop_reach=0.9)
    assert steps == 9 and asked == [["reach"]] * 3
    # A target never met: every step is made (checks at 3, 6, ..., 18; none at the last step).
    script[3:] = [{"success": 0.5, "reach": 0.5}] * 3
    steps, checks = sft_steps_and_checks(sft_stop_success=0.95, sft_stop_reach=0)
    assert steps == 20 and len(checks) == 6
    with pytest.raises(ValueError, match="--sft-stop-reach needs validation episodes to play"):
        run_sft(examples, tmp_path / "unchecked", sft=SFTConfig(sft_steps=2, sft_stop_reach=0.9), common=common)


def test_sft_stop_settings_are_checked():
    from vlm_policy.training.configs import SFTConfig, TrainConfig

    with pytest.raises(ValueError, match="--sft-stop-success must be between 0 and 1"):
        SFTConfig(sft_stop_success=1.5)
    with pytest.raises(ValueError, match="--sft-check-every must be > 0"):
        SFTConfig(sft_check_every=0)
    with pytest.raises(ValueError, match="--sft-stop-reach must be between 0 and 1"):
        SFTConfig(sft_stop_reach=2.0)
    off = {"sft_stop_reach": 0.0, "ppo_check_every": 0}
    for checks in ({"sft_stop_success": 0.7}, {"sft_stop_reach": 0.9}, {"ppo_check_every": 2}):
        with pytest.raises(ValueError, match="overlap the validation seeds"):
            TrainConfig.from_settings(eval_seed=199_990, eval_episodes=200, **{**off, **checks})
    TrainConfig.from_settings(eval_seed=199_990, eval_episodes=200, **off)  # without checks there are no validation episodes
    with pytest.raises(ValueError, match="overlap the validation seeds"):
        TrainConfig.from_settings(eval_seed=200_050, eval_episodes=10, sft_stop_reach=0.0, ppo_check_episodes=64)
    TrainConfig.from_settings(eval_seed=200_050, eval_episodes=10, sft_stop_reach=0.0, ppo_check_episodes=50)


def test_sft_checks_leave_training_exactly_as_without_them(tmp_path):
    import random

    from safetensors.torch import load_file

    from vlm_policy.training.configs import CommonConfig, SFTConfig
    from vlm_policy.training.demos import read_demonstrations, write_demonstrations
    from vlm_policy.training.sft import run_sft

    write_demonstrations("gym_cards/NumberLine-v0", 8, tmp_path / "demos", env_kwargs={"image_size": 64})
    examples = read_demonstrations(tmp_path / "demos")

    def reseeding_check(bundle, names) -> dict[str, float]:  # as loading a policy does: every generator reseeded
        torch.manual_seed(123), random.seed(123), np.random.seed(123)
        return {name: 0.0 for name in names}

    common = CommonConfig(progress=False, device="cpu")
    checked = SFTConfig(sft_steps=4, sft_batch_size=2, vision_warmup_steps=2, sft_stop_success=0.9, sft_check_every=1)
    run_sft(examples, tmp_path / "checked", sft=checked, common=common, validation=reseeding_check)
    run_sft(examples, tmp_path / "plain", sft=SFTConfig(sft_steps=4, sft_batch_size=2, vision_warmup_steps=2,
                                                         sft_stop_success=0), common=common)
    checked_weights, plain = (load_file(str(tmp_path / name / "model.safetensors")) for name in ("checked", "plain"))
    for key in plain:
        torch.testing.assert_close(checked_weights[key], plain[key], rtol=0, atol=0)


def test_train_sft_is_run_sft_with_settings_by_name(tmp_path):
    from vlm_policy.training.configs import CommonConfig, ModelConfig, SFTConfig
    from vlm_policy.training.demos import read_demonstrations, write_demonstrations
    from vlm_policy.training.sft import run_sft, train_sft

    write_demonstrations("gym_cards/NumberLine-v0", 8, tmp_path / "demos", env_kwargs={"image_size": 64})
    out = train_sft(tmp_path / "demos", tmp_path / "by_name", model="tiny", progress=False, device="cpu",
                    sft_steps=2, sft_batch_size=4, vision_warmup_steps=1, micro_batch_size=2)
    assert out == tmp_path / "by_name"
    run_sft(read_demonstrations(tmp_path / "demos"), tmp_path / "groups",
            sft=SFTConfig(sft_steps=2, sft_batch_size=4, vision_warmup_steps=1),
            model=ModelConfig(micro_batch_size=2), common=CommonConfig(progress=False, device="cpu"))
    for name in ("model.safetensors", "training.json"):
        assert (tmp_path / "by_name" / name).read_bytes() == (tmp_path / "groups" / name).read_bytes()
    with pytest.raises(TypeError, match="no setting sft_stop_reach"):
        train_sft(tmp_path / "demos", tmp_path / "x", sft_steps=2, sft_stop_reach=0.5)
