"""What PPO, GRPO and RLOO share (``alignment_np/trainers/on_policy.py``): the loop, the NaN guard,
exact resume, argument checks. Each trainer's own maths is tested in its own file."""

from __future__ import annotations

import numpy as np
import pytest

from alignment_np.checks import NonFiniteLossError
from alignment_np.data.tokenizer import CharTokenizer
from alignment_np.nn.gpt import GPTConfig, TinyGPT
from alignment_np.trainers.grpo import GRPOConfig, GRPOTrainer
from alignment_np.trainers.ppo import PPOConfig, PPOTrainer
from alignment_np.trainers.rloo import RLOOConfig, RLOOTrainer

TOK = CharTokenizer.from_text("ab c.")
PROMPTS = ["ab", "c", "a b", "b.", "ca", "bb c"]


def tiny(seed=0, dtype="float32"):
    config = GPTConfig(vocab_size=TOK.vocab_size, block_size=20, n_layer=1, n_head=2, d_model=8, dtype=dtype,
                       init_std=0.3)
    return TinyGPT(config, seed=seed)


def count_a(prompts, completions):
    return np.array([c.count("a") - 0.2 * c.count("b") for c in completions], dtype=np.float64)


# Each case builds a fresh trainer; all are float32 (training precision) with small, odd settings so
# that every saved piece of state matters (minibatch order, epochs of prompts, the KL controller).
CASES = {
    "ppo-shared": lambda: PPOTrainer(tiny(), tiny(), count_a, TOK, PPOConfig(
        steps=4, batch_size=4, num_mini_batches=2, num_ppo_epochs=2, response_length=6, seed=3,
        missing_eos_penalty=1.0, entropy_coef=0.01, shared_value_trunk=True, log_every=0)),
    "ppo-separate-adaptive": lambda: PPOTrainer(tiny(), tiny(), count_a, TOK, PPOConfig(
        steps=4, batch_size=4, num_mini_batches=2, num_ppo_epochs=2, response_length=6, seed=3,
        adaptive_kl=True, kl_target=0.01, kl_horizon=50, whiten_rewards=True, log_every=0), value_model=tiny(5)),
    "grpo": lambda: GRPOTrainer(tiny(), tiny(), count_a, TOK, GRPOConfig(
        steps=4, batch_size=2, num_generations=3, num_iterations=2, num_mini_batches=2, loss_type="dapo",
        max_completion_length=6, seed=3, log_every=0)),
    "rloo": lambda: RLOOTrainer(tiny(), tiny(), count_a, TOK, RLOOConfig(
        steps=4, batch_size=2, rloo_k=3, response_length=6, seed=3, normalize_advantage=True, log_every=0)),
}


def state_of(trainer):
    params = {name: p.data.copy() for name, p in trainer.models.named_parameters()}
    return params, trainer.optimizer.state_dict()


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("k", [1, 3])  # 6 prompts in batches of 4 (PPO): k = 1 stops mid-epoch
def test_k_iterations_save_resume_n_minus_k_equals_n_straight(tmp_path, case, k):
    straight = CASES[case]()
    history = straight.train(PROMPTS, progress=False)

    first = CASES[case]()
    first_history = first.train(PROMPTS, steps=k, progress=False)
    first.save(tmp_path / "ckpt.npz")
    reference = first.reference
    del first

    cls = type(straight)
    resumed = cls.resume(tmp_path / "ckpt.npz", reference=reference, reward_fn=count_a)
    assert resumed.step == k and resumed.config == straight.config
    assert (resumed.value_model is None) == (straight.value_model is None)
    rest = resumed.train(PROMPTS, progress=False)

    (p_straight, o_straight), (p_resumed, o_resumed) = state_of(straight), state_of(resumed)
    assert p_straight.keys() == p_resumed.keys()
    for name in p_straight:
        np.testing.assert_array_equal(p_resumed[name], p_straight[name], err_msg=name)  # bit for bit
    for key in o_straight:
        np.testing.assert_array_equal(o_resumed[key], o_straight[key], err_msg=key)
    assert resumed.rng.bit_generator.state == straight.rng.bit_generator.state
    assert resumed.order.state() == straight.order.state()
    for key in history:
        if key != "step":
            assert first_history[key] + rest[key] == history[key], key
    if isinstance(straight, PPOTrainer):
        assert resumed.kl_controller.value == straight.kl_controller.value
    if case == "ppo-separate-adaptive":
        assert straight.kl_controller.value != straight.config.kl_coef  # the controller moved: its state mattered


def test_resume_refuses_another_trainers_checkpoint_or_another_reference(tmp_path):
    trainer = CASES["rloo"]()
    trainer.save(tmp_path / "rloo.npz")
    with pytest.raises(ValueError, match="not a grpo checkpoint"):
        GRPOTrainer.resume(tmp_path / "rloo.npz", reference=tiny(), reward_fn=count_a)
    with pytest.raises(ValueError, match="reference: its weights differ"):
        RLOOTrainer.resume(tmp_path / "rloo.npz", reference=tiny(seed=9), reward_fn=count_a)
    RLOOTrainer.resume(tmp_path / "rloo.npz", reference=tiny(), reward_fn=count_a)  # the same weights: fine
    with pytest.raises(ValueError, match="has no separate value model"):
        PPOTrainer.resume(_saved_ppo(tmp_path), reference=tiny(), reward_fn=count_a, value_model=tiny())


def _saved_ppo(tmp_path):
    path = tmp_path / "ppo.npz"
    CASES["ppo-shared"]().save(path)
    return path


@pytest.mark.parametrize("case", list(CASES))
def test_a_nan_stops_the_step_before_the_optimiser_touches_the_weights(case):
    trainer = CASES[case]()
    trainer.train(PROMPTS, steps=1, progress=False)
    trainer.policy.ln_f.gamma.data[0] = np.nan  # a diverged model: every log-prob is NaN
    before, optim_before = state_of(trainer)
    with pytest.raises(NonFiniteLossError, match="step 2: loss is nan"):
        trainer.train(PROMPTS, steps=1, progress=False)
    after, optim_after = state_of(trainer)
    assert trainer.step == 1 and trainer.optimizer.t == optim_before["t"]
    for name in before:
        np.testing.assert_array_equal(after[name], before[name], err_msg=name)
    for key in optim_before:
        np.testing.assert_array_equal(optim_after[key], optim_before[key], err_msg=key)


@pytest.mark.parametrize("case", list(CASES))
def test_train_calls_back_after_every_iteration_and_stops_on_true(case):
    trainer = CASES[case]()
    seen = []

    def callback(step, metrics):
        seen.append((step, sorted(metrics)))
        return step == 2

    history = trainer.train(PROMPTS, progress=False, callback=callback)
    assert [s for s, _ in seen] == [1, 2] and trainer.step == 2 and history["step"] == [1, 2]
    keys = seen[0][1]
    assert "loss" in keys and "grad_norm" in keys
    assert all(len(history[k]) == 2 and all(np.isfinite(history[k])) for k in keys)


def _sharing(model):
    """A model whose token embedding IS the given model's Parameter (a shallow copy gone wrong)."""
    other = tiny(seed=1)
    other.wte = model.wte
    return other


def test_prompt_batches_cover_each_epoch_once():
    trainer = CASES["ppo-shared"]()  # batch_size 4 over 6 prompts
    batches = [trainer.next_prompts(PROMPTS) for _ in range(3)]  # 12 prompts = 2 epochs
    flat = [p for b in batches for p in b]
    assert sorted(flat[:6]) == sorted(PROMPTS) and sorted(flat[6:]) == sorted(PROMPTS)
    with pytest.raises(ValueError, match="epoch order covers 6 prompts, got 2"):
        trainer.next_prompts(PROMPTS[:2])


def test_a_batch_larger_than_the_prompt_list_wraps_into_the_next_epoch():
    trainer = CASES["grpo"]()
    trainer.config.batch_size = 8  # 8 prompts per iteration from a list of 6
    first, second = trainer.next_prompts(PROMPTS), trainer.next_prompts(PROMPTS)
    assert len(first) == len(second) == 8
    assert sorted(first[:6]) == sorted(PROMPTS) and sorted(first[6:] + second[:4]) == sorted(PROMPTS)


@pytest.mark.parametrize(
    "build, error, match",
    [
        (lambda m: PPOTrainer(m, m, count_a, TOK), ValueError, "reference: must be a separate, frozen model"),
        (lambda m: GRPOTrainer(m, _sharing(m), count_a, TOK), ValueError, "reference: its parameter 'wte' is"),
        (lambda m: PPOTrainer("gpt", tiny(), count_a, TOK), TypeError, "policy: expected a TinyGPT"),
        (lambda m: GRPOTrainer(m, tiny(), "rater", TOK), TypeError, "reward_fn: expected a callable"),
        (lambda m: RLOOTrainer(m, tiny(), count_a, TOK, GRPOConfig()), TypeError, "config: expected a RLOOConfig"),
        (lambda m: RLOOTrainer(m, tiny(), count_a, object()), TypeError, "tokenizer: expected a CharTokenizer"),
        (lambda m: PPOTrainer(m, tiny(), count_a, TOK, value_model=m), ValueError, "value_model: expected a separate"),
        (lambda m: PPOTrainer(m, tiny(), count_a, TOK, PPOConfig(shared_value_trunk=True), value_model=tiny()),
         ValueError, "value_model: expected None with config.shared_value_trunk=True"),
    ],
)
def test_bad_trainer_arguments_raise(build, error, match):
    with pytest.raises(error, match=match):
        build(tiny())


@pytest.mark.parametrize(
    "make, match",
    [
        (lambda: PPOConfig(batch_size=6, num_mini_batches=4), "num_mini_batches: expected a divisor of batch_size=6"),
        (lambda: PPOConfig(cliprange=1.5), "cliprange: expected a number in"),
        (lambda: PPOConfig(kl_estimator="k4"), "kl_estimator: expected one of"),
        (lambda: PPOConfig(adaptive_kl=True, kl_coef=0.0), "kl_coef: the adaptive controller"),
        (lambda: PPOConfig(gamma=1.1), r"gamma: expected a number in \[0, 1\]"),
        (lambda: PPOConfig(learning_rate=float("nan")), "learning_rate: expected a finite number"),
        (lambda: GRPOConfig(num_generations=1), "num_generations: expected an int >= 2"),
        (lambda: GRPOConfig(loss_type="bnpo"), "loss_type: expected one of"),
        (lambda: GRPOConfig(batch_size=3, num_generations=2, num_mini_batches=4),
         "num_mini_batches: expected a divisor"),
        (lambda: RLOOConfig(rloo_k=1), "rloo_k: expected an int >= 2"),
        (lambda: RLOOConfig(missing_eos_penalty=-1), "missing_eos_penalty: expected a finite number >= 0"),
        (lambda: RLOOConfig(steps=-1), "steps: expected an int >= 0"),
    ],
)
def test_bad_configs_raise_naming_the_field(make, match):
    with pytest.raises(ValueError, match=match):
        make()


def test_dr_grpo_does_not_scale_by_the_groups_std_unless_asked():
    assert GRPOConfig().scale and not GRPOConfig(loss_type="dr_grpo").scale
    assert GRPOConfig(loss_type="dr_grpo", scale_rewards=True).scale
