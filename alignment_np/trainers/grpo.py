"""GRPO on the tiny GPT (Shao et al. 2024, "DeepSeekMath", Sec. 4): PPO without a value model.

One iteration (TRL's ``GRPOTrainer``, whose config and metric names this follows)::

    rows      = each of the batch_size prompts repeated G = num_generations times
    rollout   = collect_rollout(policy, reference, rows, reward_fn)        no values
    A_i       = group_advantages(scores, G, scale)                          (r - mean_group) / std_group
    repeat num_iterations times, over num_mini_batches shuffled minibatches:
        logps  = policy forward at the sampling temperature
        loss   = grpo_loss(logps, old_logps, ref_logps, A, loss_type)       clipped surrogate + beta * k3
        backward, clip the global gradient norm, NaN guard, AdamW step

The group replaces the critic: the baseline of a response is the mean score
of the other responses to the same prompt, so there is nothing to train but
the policy (half the memory of PPO with a separate value model, no value
loss to tune). The KL to the reference is a loss term, not a reward
penalty (``losses/grpo.py``), so the advantages are those of the score alone.

``loss_type`` ("grpo", "dapo", "dr_grpo") and ``scale_rewards`` choose the
aggregation and the advantage scaling; ``losses/grpo.py`` documents the
length bias of "grpo" and the difficulty bias of dividing by the group's std.
Dr. GRPO is ``loss_type="dr_grpo"`` with ``scale_rewards=False`` (its default
when left None).

Metrics (TRL's GRPO names): reward, reward_std, frac_reward_zero_std,
kl (mean k3 per token, from the loss), clip_ratio/region_mean,
clip_ratio/low_mean, clip_ratio/high_mean, entropy (mean per-token entropy),
completions/mean_length, completions/clipped_ratio (fraction without <eos>),
loss, grad_norm, learning_rate; and, to compare with PPO and RLOO on one axis,
objective/scores and objective/kl (mean over responses of the summed k1 KL
estimate at rollout time).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_bool, check_choice, check_float, check_int, check_nonneg_int, check_positive_int
from ..losses.grpo import LOSS_TYPES, grpo_loss
from ..losses.ppo import entropy_from_logits
from ..rl.advantages import group_advantages
from ..rl.rollout import collect_rollout
from .lm_logprobs import response_backward, response_forward
from .on_policy import OnPolicyTrainer

__all__ = ["GRPOConfig", "GRPOTrainer"]


@dataclass
class GRPOConfig:
    """Hyper-parameters of GRPO (TRL's ``GRPOConfig`` names where TRL has the concept)."""

    steps: int = 100
    """Iterations (rollout + update) that ``train()`` runs by default."""

    batch_size: int = 16
    """Prompts per iteration; each is sampled ``num_generations`` times (B = batch_size * G rows)."""

    num_generations: int = 4
    """G: completions per prompt, the group that provides the baseline (>= 2)."""

    num_iterations: int = 1
    """mu: passes over each rollout (DeepSeekMath's mu; 1 = on-policy, the ratio is then 1)."""

    num_mini_batches: int = 1
    """Minibatches per pass over the B rows (B must be divisible by it)."""

    learning_rate: float = 3e-4
    """AdamW's learning rate (constant), as PPO's; at 1e-3 the sentiment policy reached a KL of
    48 nats in 30 iterations of 64 prompts, repeating "good good good"."""

    weight_decay: float = 0.0
    """AdamW's decoupled weight decay on matrices."""

    max_grad_norm: float | None = 1.0
    """Clip the global gradient L2 norm to this; None (or 0) never clips."""

    beta: float = 0.04
    """Weight of the k3 KL to the reference in the loss (DeepSeekMath: 0.04; 0 drops the term)."""

    epsilon: float = 0.2
    """The clip range of the surrogate."""

    loss_type: str = "grpo"
    """How token losses are averaged: "grpo" (per response, then over responses), "dapo" (over all
    tokens), "dr_grpo" (divided by batch rows * max_completion_length)."""

    scale_rewards: bool | None = None
    """Divide advantages by the group's std. None: True, except for loss_type "dr_grpo" (False)."""

    missing_eos_penalty: float | None = None
    """None: no rule; a number p >= 0: a response without <eos> scores -p instead of its score."""

    temperature: float = 1.0
    """Sampling temperature; every log-prob (policy and reference) is computed at it."""

    max_completion_length: int = 40
    """max_new_tokens of each response; also Dr. GRPO's constant normaliser."""

    seed: int = 0
    """Seeds the prompt order, the sampling noise and the minibatch order."""

    log_every: int = 10
    """Print a metrics line every this many iterations (0: never)."""

    def __post_init__(self):
        self.steps = check_nonneg_int("steps", self.steps)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        self.num_generations = check_int("num_generations", self.num_generations, low=2)
        self.num_iterations = check_positive_int("num_iterations", self.num_iterations)
        self.num_mini_batches = check_positive_int("num_mini_batches", self.num_mini_batches)
        rows = self.batch_size * self.num_generations
        if rows % self.num_mini_batches:
            raise ValueError(f"num_mini_batches: expected a divisor of batch_size * num_generations={rows}, "
                             f"got {self.num_mini_batches}")
        self.learning_rate = check_float("learning_rate", self.learning_rate, 0.0)
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0)
        if self.max_grad_norm is not None:
            self.max_grad_norm = check_float("max_grad_norm", self.max_grad_norm, 0.0)
        self.beta = check_float("beta", self.beta, 0.0)
        self.epsilon = check_float("epsilon", self.epsilon, 0.0, 1.0, low_open=True, high_open=True)
        check_choice("loss_type", self.loss_type, LOSS_TYPES)
        if self.scale_rewards is not None:
            self.scale_rewards = check_bool("scale_rewards", self.scale_rewards)
        if self.missing_eos_penalty is not None:
            self.missing_eos_penalty = check_float("missing_eos_penalty", self.missing_eos_penalty, 0.0)
        self.temperature = check_float("temperature", self.temperature, 0.0, low_open=True)
        self.max_completion_length = check_positive_int("max_completion_length", self.max_completion_length)
        self.seed = check_int("seed", self.seed, low=0)
        self.log_every = check_nonneg_int("log_every", self.log_every)

    @property
    def scale(self) -> bool:
        """Whether the advantages are divided by the group's std (resolves ``scale_rewards=None``)."""
        return self.loss_type != "dr_grpo" if self.scale_rewards is None else self.scale_rewards


class GRPOTrainer(OnPolicyTrainer):
    """GRPO: a policy TinyGPT, a frozen reference, a reward function; no value model.

    policy, reference, reward_fn, tokenizer: as ``PPOTrainer``.
    config: a ``GRPOConfig``.
    """

    name = "grpo"
    config_class = GRPOConfig
    progress_keys = ("reward", "objective/kl", "kl")

    def __init__(self, policy, reference, reward_fn, tokenizer, config: GRPOConfig | None = None):
        super().__init__(policy, reference, reward_fn, tokenizer, config)

    def rollout(self, prompts):
        """One ``Rollout`` of every prompt repeated G times (rows [g*G, (g+1)*G) share prompt g)."""
        c = self.config
        rows = [p for p in prompts for _ in range(c.num_generations)]
        return collect_rollout(self.policy, self.reference, self.tokenizer, rows, self.reward_fn,
                               c.max_completion_length, c.temperature, c.missing_eos_penalty, self.rng)

    def train_step(self, prompts) -> dict:
        """One GRPO iteration on ``prompts`` (B / G strings); returns the metrics (module docstring)."""
        c = self.config
        rollout = self.rollout(prompts)
        xp = get_array_module(rollout.logprobs)
        b = rollout.response_mask.shape[0]
        advantages = group_advantages(rollout.scores, c.num_generations, scale=c.scale)  # (B,) float64, host
        advantages = xp.asarray(advantages).astype(rollout.logprobs.dtype)

        stats = {k: [] for k in ("loss", "grad_norm", "kl", "clip_ratio/region_mean", "clip_ratio/low_mean",
                                 "clip_ratio/high_mean", "entropy")}
        mb = b // c.num_mini_batches
        for _ in range(c.num_iterations):
            order = self.rng.permutation(b)
            for start in range(0, b, mb):
                idx = xp.asarray(order[start : start + mb])
                self._minibatch_update(rollout, idx, advantages, stats)

        self.step += 1
        scores = rollout.scores
        groups = scores.reshape(-1, c.num_generations)
        seq_kl = to_numpy((rollout.logprobs - rollout.ref_logprobs).sum(axis=1)).astype(np.float64)
        metrics = {
            "reward": float(scores.mean()),
            "reward_std": float(scores.std(ddof=1)) if b > 1 else 0.0,
            "frac_reward_zero_std": float(np.mean(groups.max(axis=1) == groups.min(axis=1))),
            "objective/scores": float(scores.mean()),
            "objective/kl": float(seq_kl.mean()),
            "completions/mean_length": float(rollout.response_lengths.mean()),
            "completions/clipped_ratio": float(1.0 - rollout.contains_eos.mean()),
            "learning_rate": float(self.optimizer.lr),
        }
        for key, values in stats.items():
            metrics[key] = float(np.mean(values))
        return metrics

    def _minibatch_update(self, rollout, idx, advantages, stats) -> None:
        c = self.config
        mask = rollout.response_mask[idx]
        out, cache = response_forward(self.policy, rollout.tokens[idx], rollout.attention_mask[idx],
                                      rollout.prompt_length, rollout.temperature, ("logits",), mask)
        loss, d_logps, loss_stats = grpo_loss(out["logps"], rollout.logprobs[idx], rollout.ref_logprobs[idx],
                                              advantages[idx], mask, beta=c.beta, epsilon=c.epsilon,
                                              loss_type=c.loss_type, max_length=c.max_completion_length)
        entropy, _ = entropy_from_logits(out["logits"], mask=mask)  # logged, not optimised
        self.optimizer.zero_grad()
        response_backward(cache, d_logps=d_logps)
        grad_norm = self._optimizer_step(loss)
        stats["loss"].append(loss)
        stats["grad_norm"].append(grad_norm)
        stats["entropy"].append(float(entropy))
        for key, value in loss_stats.items():
            stats[key].append(value)
