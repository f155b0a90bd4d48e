"""RLOO on the tiny GPT (Ahmadian et al. 2024, "Back to Basics"): REINFORCE with k samples per prompt.

One iteration::

    rows      = each of the batch_size prompts repeated k = rloo_k times
    rollout   = collect_rollout(policy, reference, rows, reward_fn)          no values
    R_i, KL_i = kl_penalised_rewards(scores, logprobs, ref_logprobs)        R = score - kl_coef * sum_t k1
    A_i       = leave_one_out_advantages(R, k)                               R_i - mean of the other k - 1
    logps     = policy forward at the sampling temperature (the same weights that sampled)
    loss      = rloo_loss(logps, A)                                          -mean_i A_i log pi(y_i | x)
    backward, clip the global gradient norm, NaN guard, AdamW step           ONE step per rollout

Ahmadian et al. argue that PPO's machinery (a critic, per-token credit,
clipping for off-policy reuse) is unnecessary when the policy starts from a
strong SFT model and the reward arrives once per response: the whole response
is one action, and a leave-one-out baseline from the other samples of the
same prompt reduces the variance without a value model. Each rollout is used
for exactly one gradient step, so the update is on-policy and needs no
importance ratio.

Metrics (TRL's RLOO names where they apply): objective/kl (mean summed k1 KL
per response), objective/entropy (TRL's proxy: mean of -sum_t log pi),
objective/non_score_reward (mean -kl_coef * KL), objective/rlhf_reward
(mean R), objective/scores, loss/policy_avg, policy/entropy_avg,
val/num_eos_tokens, completions/mean_length, completions/clipped_ratio,
loss, grad_norm, lr.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_bool, check_float, check_int, check_nonneg_int, check_positive_int
from ..losses.ppo import entropy_from_logits
from ..losses.rloo import kl_penalised_rewards, rloo_loss
from ..rl.advantages import leave_one_out_advantages
from ..rl.gae import whiten
from ..rl.rollout import collect_rollout
from .lm_logprobs import response_backward, response_forward
from .on_policy import OnPolicyTrainer

__all__ = ["RLOOConfig", "RLOOTrainer"]


@dataclass
class RLOOConfig:
    """Hyper-parameters of RLOO (TRL's ``RLOOConfig`` names where TRL has the concept)."""

    steps: int = 100
    """Iterations (rollout + one update) that ``train()`` runs by default."""

    batch_size: int = 16
    """Prompts per iteration; each is sampled ``rloo_k`` times (B = batch_size * k rows)."""

    rloo_k: int = 4
    """k: completions per prompt (>= 2: the baseline is the mean of the other k - 1)."""

    learning_rate: float = 3e-4
    """AdamW's learning rate (constant), as PPO's; at 1e-3 the sentiment policy reached a KL of
    28 nats in 30 iterations of 64 prompts, repeating "great great great"."""

    weight_decay: float = 0.0
    """AdamW's decoupled weight decay on matrices."""

    max_grad_norm: float | None = 1.0
    """Clip the global gradient L2 norm to this; None (or 0) never clips."""

    kl_coef: float = 0.05
    """beta of the KL penalty in the reward, R = score - beta * sum_t (log pi - log pi_ref) (TRL: 0.05)."""

    normalize_advantage: bool = False
    """Whiten the advantages over the batch (TRL's option; Ahmadian et al. do not)."""

    missing_eos_penalty: float | None = None
    """None: no rule; a number p >= 0: a response without <eos> scores -p instead of its score."""

    temperature: float = 1.0
    """Sampling temperature; every log-prob (policy and reference) is computed at it."""

    response_length: int = 40
    """max_new_tokens of each response."""

    seed: int = 0
    """Seeds the prompt order and the sampling noise."""

    log_every: int = 10
    """Print a metrics line every this many iterations (0: never)."""

    def __post_init__(self):
        self.steps = check_nonneg_int("steps", self.steps)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        self.rloo_k = check_int("rloo_k", self.rloo_k, low=2)
        self.learning_rate = check_float("learning_rate", self.learning_rate, 0.0)
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0)
        if self.max_grad_norm is not None:
            self.max_grad_norm = check_float("max_grad_norm", self.max_grad_norm, 0.0)
        self.kl_coef = check_float("kl_coef", self.kl_coef, 0.0)
        self.normalize_advantage = check_bool("normalize_advantage", self.normalize_advantage)
        if self.missing_eos_penalty is not None:
            self.missing_eos_penalty = check_float("missing_eos_penalty", self.missing_eos_penalty, 0.0)
        self.temperature = check_float("temperature", self.temperature, 0.0, low_open=True)
        self.response_length = check_positive_int("response_length", self.response_length)
        self.seed = check_int("seed", self.seed, low=0)
        self.log_every = check_nonneg_int("log_every", self.log_every)


class RLOOTrainer(OnPolicyTrainer):
    """RLOO: a policy TinyGPT, a frozen reference, a reward function; no value model.

    policy, reference, reward_fn, tokenizer: as ``PPOTrainer``.
    config: an ``RLOOConfig``.
    """

    name = "rloo"
    config_class = RLOOConfig
    progress_keys = ("objective/scores", "objective/kl")

    def __init__(self, policy, reference, reward_fn, tokenizer, config: RLOOConfig | None = None):
        super().__init__(policy, reference, reward_fn, tokenizer, config)

    def rollout(self, prompts):
        """One ``Rollout`` of every prompt repeated k times (rows [g*k, (g+1)*k) share prompt g)."""
        c = self.config
        rows = [p for p in prompts for _ in range(c.rloo_k)]
        return collect_rollout(self.policy, self.reference, self.tokenizer, rows, self.reward_fn,
                               c.response_length, c.temperature, c.missing_eos_penalty, self.rng)

    def train_step(self, prompts) -> dict:
        """One RLOO iteration on ``prompts`` (B / k strings); returns the metrics (module docstring)."""
        c = self.config
        rollout = self.rollout(prompts)
        xp = get_array_module(rollout.logprobs)
        mask = rollout.response_mask
        dtype = rollout.logprobs.dtype
        scores = xp.asarray(rollout.scores)  # float64: the reward's own precision
        rewards, seq_kl = kl_penalised_rewards(scores, rollout.logprobs.astype(np.float64),
                                               rollout.ref_logprobs.astype(np.float64), mask, c.kl_coef)
        advantages = leave_one_out_advantages(rewards, c.rloo_k)
        if c.normalize_advantage:
            advantages = whiten(advantages)
        advantages = advantages.astype(dtype)

        out, cache = response_forward(self.policy, rollout.tokens, rollout.attention_mask, rollout.prompt_length,
                                      rollout.temperature, ("logits",), mask)
        loss, d_logps, _ = rloo_loss(out["logps"], advantages, mask)
        entropy, _ = entropy_from_logits(out["logits"], mask=mask)  # logged, not optimised
        self.optimizer.zero_grad()
        response_backward(cache, d_logps=d_logps)
        grad_norm = self._optimizer_step(loss)
        self.step += 1

        seq_kl = to_numpy(seq_kl)
        non_score = -c.kl_coef * seq_kl
        return {
            "objective/kl": float(seq_kl.mean()),
            "objective/entropy": float(-to_numpy(rollout.logprobs).astype(np.float64).sum(axis=1).mean()),
            "objective/non_score_reward": float(non_score.mean()),
            "objective/rlhf_reward": float(to_numpy(rewards).mean()),
            "objective/scores": float(rollout.scores.mean()),
            "loss/policy_avg": loss,
            "policy/entropy_avg": float(entropy),
            "val/num_eos_tokens": int(rollout.contains_eos.sum()),
            "completions/mean_length": float(rollout.response_lengths.mean()),
            "completions/clipped_ratio": float(1.0 - rollout.contains_eos.mean()),
            "loss": loss,
            "grad_norm": grad_norm,
            "lr": float(self.optimizer.lr),
        }
