"""A reward model on the transformer: TinyGPT's trunk, a scalar head, the Bradley-Terry loss.

RLHF's second stage (Ouyang et al. 2022, Sec. 3.5 "Reward modeling";
Stiennon et al. 2020) turns preference pairs into a function r(x, y) that
scores any response: the SFT model with its language-model head replaced by a
linear head that reads the final hidden state at the response's LAST token
(the <eos>: by then the model has read the whole prompt and response). TinyGPT
carries that head already (``heads=("rewards",)``, ``reward_head`` (D, 1)).
The model starts from the SFT checkpoint's weights, so it begins knowing the
language it must judge.

One step, on the path of data of DESIGN.md::

    pairs -> rows s = <bos> prompt response <eos>, right padded   (once, in prepare)
    chosen rows 0..B-1 and rejected rows B..2B-1: ONE forward of 2B rows
    model.forward(ids, mask, heads=("rewards",)) -> r (2B,), read at each row's last real token
    loss = -mean log sigmoid(r_c - r_r)                           Ouyang et al. 2022, Eq. 1
           [+ alpha * mean((r_c + r_r)^2)]                        optional centring, Eisenstein et al. 2023
    d loss / d r (2B,) -> model.backward({"rewards": ...}) -> clip -> AdamW

The centring term (TRL's ``center_rewards_coefficient``) pins the rewards'
mean near 0: the Bradley-Terry loss only sees differences, so without it the
level of r drifts freely, which PPO later feels as a shifted reward.

Metrics follow TRL's ``RewardTrainer`` logs: ``loss``, ``accuracy`` (fraction
of pairs with r_c > r_r, a tie counts as wrong), ``margin`` (mean r_c - r_r),
``min_reward``, ``mean_reward``, ``max_reward`` (over all 2B rewards),
``num_tokens`` (real tokens seen by training so far), plus ``grad_norm``
(before clipping) and ``lr``.

Resumable exactly, like ``SFTTrainer``: ``save`` stores the model, AdamW's
state, the step, the data order (``EpochOrder``) and the config;
``RewardLMTrainer.resume`` restores them, so k steps, save, resume, N - k
steps equals N steps bit for bit.

Shapes: B pairs per batch (2B rows), N pairs in a dataset, T tokens per row,
D model width.
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checkpoint import load_checkpoint, save_checkpoint
from ..checks import (
    NonFiniteLossError,
    check_finite_metrics,
    check_float,
    check_nonneg_int,
    check_positive_int,
)
from ..data.collate import collate_preferences, collate_sft
from ..losses.bradley_terry import reward_model_loss
from ..nn.gpt import GPTConfig, TinyGPT
from ..optim import AdamW, clip_grad_norm, cosine_schedule
from ..progress import Progress
from .epoch_order import EpochOrder, begin_epochs

__all__ = ["RewardLMConfig", "RewardDataset", "RewardLMTrainer", "pairwise_reward_loss", "sequence_rows"]


@dataclass
class RewardLMConfig:
    """Hyper-parameters of the reward model on the transformer (TRL's ``RewardConfig`` names where shared)."""

    lr: float = 1e-3
    """Peak AdamW learning rate (tiny models take large rates; TRL's default 1e-5 is for billions of weights)."""

    min_lr: float = 1e-4
    """Learning rate at the end of the cosine decay."""

    warmup_steps: int = 10
    """Steps of linear warmup from 0 to ``lr``."""

    steps: int = 200
    """Total optimiser steps: the length of the schedule and where ``train()`` stops by default."""

    batch_size: int = 32
    """B: preference pairs per step; each step runs one forward of 2B rows."""

    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (matrices only)."""

    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value; None never clips (the norm is still logged)."""

    center_rewards_coefficient: float | None = None
    """alpha >= 0 in alpha * mean((r_c + r_r)^2), an auxiliary term that keeps the
    rewards centred on 0 (Eisenstein et al. 2023; TRL's name). None: no centring term."""

    eval_batch_size: int = 64
    """Rows per forward pass in ``evaluate`` and ``score`` (forward only)."""

    seed: int = 0
    """Seeds the data order (a fresh permutation of the pairs each epoch)."""

    def __post_init__(self):
        self.lr = check_float("lr", self.lr, 0.0)
        self.min_lr = check_float("min_lr", self.min_lr, 0.0)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: expected <= lr={self.lr}, got {self.min_lr}")
        self.steps = check_positive_int("steps", self.steps)
        self.warmup_steps = check_nonneg_int("warmup_steps", self.warmup_steps)
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps: expected <= steps={self.steps}, got {self.warmup_steps}")
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0)
        if self.grad_clip is not None:
            self.grad_clip = check_float("grad_clip", self.grad_clip, 0.0, low_open=True)
        if self.center_rewards_coefficient is not None:
            self.center_rewards_coefficient = check_float(
                "center_rewards_coefficient", self.center_rewards_coefficient, 0.0
            )
        self.eval_batch_size = check_positive_int("eval_batch_size", self.eval_batch_size)
        self.seed = check_nonneg_int("seed", self.seed)


# --------------------------------------------------------------------------
# rows: <bos> prompt response <eos>
# --------------------------------------------------------------------------


def sequence_rows(collated: dict) -> tuple:
    """Whole sequences from a collator's shifted layout: (input_ids, attention_mask), each (R, T + 1).

    The collators of ``data/collate.py`` hand the model s[:-1] and the targets
    s[1:]; a reward model reads all of s = <bos> prompt response <eos>, so the
    final target (the <eos>) is put back after each row's last input.
    """
    ids, att, tgt = collated["input_ids"], collated["attention_mask"], collated["targets"]
    xp = get_array_module(ids)
    r, t = ids.shape
    n = att.sum(axis=1).astype(np.int64)  # (R,) real inputs per row (right padded)
    rows = xp.arange(r)
    full = xp.zeros((r, t + 1), dtype=ids.dtype)  # pad id 0 (collate's pad) everywhere else
    full[:, :t] = ids
    full[rows, n] = tgt[rows, n - 1]  # the <eos>
    mask = xp.zeros((r, t + 1), dtype=att.dtype)
    mask[:, :t] = att
    mask[rows, n] = 1
    return full, mask


@dataclass
class RewardDataset:
    """Tokenised preference pairs for the reward model (built by ``RewardLMTrainer.prepare``).

    input_ids: (2N, T) rows ``<bos> prompt response <eos>``, right padded;
        rows 0..N-1 hold the chosen responses, rows N..2N-1 the rejected, pair i
        in rows i and N + i.
    attention_mask: (2N, T) of 0/1, 1 = real token.
    """

    input_ids: object
    attention_mask: object

    @property
    def n_pairs(self) -> int:
        """N, the number of pairs."""
        return self.input_ids.shape[0] // 2

    def __len__(self) -> int:
        return self.n_pairs

    def batch(self, indices) -> dict:
        """The pairs ``indices`` (B,) as {"input_ids", "attention_mask"} (2B, T_b), chosen rows first.

        T_b is the longest row of the batch: all-padding columns are dropped.
        """
        xp = get_array_module(self.input_ids)
        n = self.n_pairs
        idx = np.asarray(to_numpy(indices)).reshape(-1)
        if idx.size == 0 or idx.dtype.kind not in "iu" or int(idx.min()) < 0 or int(idx.max()) >= n:
            raise ValueError(f"indices: expected a non-empty array of ints in [0, {n}), got {idx!r}")
        rows = xp.asarray(np.concatenate([idx, idx + n]))
        attention = self.attention_mask[rows]
        t = int(to_numpy(attention.sum(axis=1)).max())
        return {"input_ids": self.input_ids[rows, :t], "attention_mask": attention[:, :t]}


# --------------------------------------------------------------------------
# the loss, as a function of the 2B rewards
# --------------------------------------------------------------------------


def pairwise_reward_loss(rewards, center_rewards_coefficient: float | None = None):
    """The Bradley-Terry loss of 2B rewards (chosen first), its gradient and its metrics.

    rewards: (2B,) float, r_c = rewards[:B], r_r = rewards[B:].
    center_rewards_coefficient: alpha >= 0 or None; adds alpha * mean((r_c + r_r)^2).

    Returns (loss float, d_rewards (2B,) in the rewards' dtype, metrics dict):
        d loss / d r_c = -sigma(-(r_c - r_r)) / B + 2 alpha (r_c + r_r) / B
        d loss / d r_r = +sigma(-(r_c - r_r)) / B + 2 alpha (r_c + r_r) / B
    metrics: loss, accuracy, margin, min_reward, mean_reward, max_reward.
    """
    xp = get_array_module(rewards)
    b = rewards.shape[0] // 2
    r_c, r_r = rewards[:b], rewards[b:]
    loss, g_c, g_r = reward_model_loss(r_c, r_r)  # Bradley-Terry, Ouyang et al. 2022 Eq. 1
    if center_rewards_coefficient:
        alpha = center_rewards_coefficient
        s = r_c + r_r  # (B,)
        loss += alpha * float((s * s).mean())
        d_center = s * (2.0 * alpha / b)  # a Python float: the dtype stays the rewards'
        g_c = g_c + d_center
        g_r = g_r + d_center
    metrics = {
        "loss": float(loss),
        "accuracy": float((r_c > r_r).mean()),
        "margin": float((r_c - r_r).mean()),
        "min_reward": float(rewards.min()),
        "mean_reward": float(rewards.mean()),
        "max_reward": float(rewards.max()),
    }
    return float(loss), xp.concatenate([g_c, g_r]), metrics


# --------------------------------------------------------------------------
# the trainer
# --------------------------------------------------------------------------


class RewardLMTrainer:
    """Train a TinyGPT's trunk and reward head on preference pairs (Bradley-Terry).

    model: a ``TinyGPT``, usually holding the SFT model's weights (trained in
        place: pass a copy if the SFT model is still needed, e.g.
        ``load_model(sft_path)[0]``).
    tokenizer: the ``CharTokenizer`` of the model's vocabulary.
    config: a ``RewardLMConfig``.

    Use: ``data = trainer.prepare(pairs)``, ``trainer.train(data)``,
    ``trainer.evaluate(held_out_pairs)``, ``trainer.score(prompts, completions)``.
    Attributes: ``step``, ``optimizer``, ``order`` (the ``EpochOrder``, made
    on the first ``train``), ``num_tokens``, ``metadata`` (a JSON-ready dict
    that ``save`` keeps).
    """

    def __init__(self, model, tokenizer, config: RewardLMConfig | None = None):
        if not isinstance(model, TinyGPT):
            raise TypeError(f"model: expected a TinyGPT, got {type(model).__name__}")
        for attr in ("encode", "vocab_size", "pad_id", "bos_id", "eos_id", "to_dict"):
            if not hasattr(tokenizer, attr):
                raise TypeError(f"tokenizer: expected a CharTokenizer-like object, {type(tokenizer).__name__} has no {attr}")
        if tokenizer.vocab_size != model.config.vocab_size:
            raise ValueError(
                f"tokenizer: vocab_size {tokenizer.vocab_size} differs from the model's vocab_size {model.config.vocab_size}"
            )
        config = RewardLMConfig() if config is None else config
        if not isinstance(config, RewardLMConfig):
            raise TypeError(f"config: expected a RewardLMConfig, got {type(config).__name__}")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.optimizer = AdamW(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.num_tokens = 0
        self.order: EpochOrder | None = None
        self.metadata: dict = {}

    # ------------------------------------------------------------------ data
    def prepare(self, pairs) -> RewardDataset:
        """Tokenise ``pairs`` (PreferencePairs, (prompt, chosen, rejected) tuples or dicts).

        A prompt too long for the model is cut from the left, the same cut for
        both responses of a pair; a response that alone does not fit raises
        ValueError naming the pair.
        """
        from .dpo_lm import _as_triples  # the one parser of the pair formats

        prompts, chosen, rejected = zip(*_as_triples(pairs))
        rows = collate_preferences(list(prompts), list(chosen), list(rejected), self.tokenizer,
                                   self.model.config.block_size - 1)  # the <eos> goes back in: T + 1
        ids, mask = sequence_rows(rows)
        return RewardDataset(ids, mask)

    def rewards(self, input_ids, attention_mask):
        """Forward only: the reward (R,) of each row, in chunks of ``eval_batch_size`` rows."""
        xp = get_array_module(self.model.wte.data)
        out = []
        for lo in range(0, input_ids.shape[0], self.config.eval_batch_size):
            att = attention_mask[lo : lo + self.config.eval_batch_size]
            t = int(to_numpy(att.sum(axis=1)).max())
            r, _ = self.model.forward(input_ids[lo : lo + len(att), :t], att[:, :t], heads=("rewards",),
                                      keep_cache=False)  # scoring only
            out.append(r["rewards"])
        return xp.concatenate(out)

    # ------------------------------------------------------------------ one step
    def learning_rate(self, step: int | None = None) -> float:
        """The scheduled learning rate at ``step`` (default: the next step)."""
        c = self.config
        return cosine_schedule(self.step if step is None else step, c.lr, c.warmup_steps, c.steps, c.min_lr)

    def compute_gradients(self, batch: dict) -> dict:
        """Zero the gradients, then ONE forward and ONE backward over the 2B rows of ``batch``.

        batch: {"input_ids", "attention_mask"} (2B, T) from ``RewardDataset.batch``.
        Leaves d loss / d parameter in every ``Parameter.grad`` and returns the metrics.
        Raises NonFiniteLossError if a reward is not finite (nothing is updated).
        """
        ids, mask = _check_batch(batch)
        self.optimizer.zero_grad()
        out, cache = self.model.forward(ids, mask, heads=("rewards",))
        rewards = out["rewards"]  # (2B,)
        xp = get_array_module(rewards)
        if not bool(xp.isfinite(rewards).all()):
            bad = float(to_numpy(rewards)[~np.isfinite(to_numpy(rewards))][0])
            raise NonFiniteLossError(self.step + 1, "rewards", bad)
        loss, d_rewards, metrics = pairwise_reward_loss(rewards, self.config.center_rewards_coefficient)
        self.model.backward({"rewards": d_rewards}, cache)
        metrics["num_tokens"] = self.num_tokens + int(to_numpy(mask).sum())
        return metrics

    def train_step(self, batch: dict) -> dict:
        """One optimiser step on ``batch``: gradients, clip, NaN guard, AdamW.

        Returns TRL's reward metrics (before the update) plus ``grad_norm``
        (before clipping) and ``lr``. Raises NonFiniteLossError, before the
        update, if the loss or the gradient norm is not finite.
        """
        lr = self.learning_rate()
        self.optimizer.lr = lr
        metrics = self.compute_gradients(batch)
        limit = math.inf if self.config.grad_clip is None else self.config.grad_clip
        metrics["grad_norm"] = float(clip_grad_norm(self.optimizer.params, limit))
        metrics["lr"] = float(lr)
        check_finite_metrics(self.step + 1, metrics)  # before the step: a NaN never reaches the weights
        self.optimizer.step()
        self.step += 1
        self.num_tokens = metrics["num_tokens"]
        return metrics

    def train(self, data, steps: int | None = None, progress: bool = True,
              callback: Callable[[int, dict], object] | None = None) -> dict:
        """Run ``steps`` steps (default: up to ``config.steps``) on ``data``.

        data: a ``RewardDataset`` (from ``prepare``) or pairs (prepared here).
        callback: ``callback(step, metrics)`` after every step; returning True stops.
        Returns the history: {"step": [...], and one list per metric}.
        """
        if not isinstance(data, RewardDataset):
            data = self.prepare(data)
        self.order, steps = begin_epochs(self.order, data.n_pairs, self.config.batch_size, self.config.seed,
                                         self.config.steps, self.step, steps, callback)
        history: dict[str, list] = {"step": []}
        bar = Progress(total=steps, desc="rm", enabled=progress)
        try:
            for _ in range(steps):
                metrics = self.train_step(data.batch(self.order.next()))
                history["step"].append(self.step)
                for key, value in metrics.items():
                    history.setdefault(key, []).append(value)
                bar.update(1, loss=metrics["loss"], accuracy=metrics["accuracy"])
                if callback is not None and callback(self.step, metrics) is True:
                    break
        finally:
            bar.close()
        return history

    # ------------------------------------------------------------------ evaluation
    def evaluate(self, data) -> dict:
        """TRL's reward metrics over a whole dataset (no gradients, no update).

        data: a ``RewardDataset`` or pairs. Returns loss, accuracy (with its
        standard error ``accuracy_se``; None for a single pair), margin,
        min/mean/max_reward.
        """
        from ..stats import mean_se

        if not isinstance(data, RewardDataset):
            data = self.prepare(data)
        rewards = self.rewards(data.input_ids, data.attention_mask)
        loss, _, metrics = pairwise_reward_loss(rewards, self.config.center_rewards_coefficient)
        n = data.n_pairs
        correct = to_numpy(rewards[:n] > rewards[n:]).astype(np.float64)
        metrics["accuracy_se"] = mean_se(correct).as_dict("accuracy")["accuracy_se"]  # None for one pair
        return metrics

    def score(self, prompts: Sequence[str], completions: Sequence[str], batch_size: int | None = None) -> np.ndarray:
        """The reward of each (prompt, completion): (N,) float64 on the host.

        Each is scored as ``<bos> prompt completion <eos>``, exactly as in
        training. batch_size: rows per forward (default ``eval_batch_size``).
        """
        if isinstance(prompts, str) or isinstance(completions, str):
            raise TypeError("prompts, completions: expected lists of str, got a single str")
        if len(prompts) != len(completions) or len(prompts) == 0:
            raise ValueError(
                f"prompts, completions: expected equal, non-zero lengths, got {len(prompts)} and {len(completions)}"
            )
        b = self.config.eval_batch_size if batch_size is None else check_positive_int("batch_size", batch_size)
        block = self.model.config.block_size - 1
        out = []
        for lo in range(0, len(prompts), b):
            rows = collate_sft(list(zip(prompts[lo : lo + b], completions[lo : lo + b])), self.tokenizer, block)
            ids, mask = sequence_rows(rows)
            r, _ = self.model.forward(ids, mask, heads=("rewards",), keep_cache=False)  # scoring only
            out.append(to_numpy(r["rewards"]).astype(np.float64))
        return np.concatenate(out)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Write everything needed to continue exactly to ``path`` (one .npz, atomically)."""
        extra = {
            "reward_config": dataclasses.asdict(self.config),
            "order": None if self.order is None else self.order.state(),
            "num_tokens": self.num_tokens,
            "metadata": self.metadata,
        }
        save_checkpoint(path, self.model, self.optimizer, tokenizer=self.tokenizer, step=self.step, extra=extra)

    @classmethod
    def resume(cls, path: str | os.PathLike, model=None, tokenizer=None, config: RewardLMConfig | None = None):
        """A trainer that continues exactly where ``save(path)`` stopped.

        model: a TinyGPT to load into (default: built from the checkpoint's config).
        tokenizer: default the checkpoint's. config: default the checkpoint's
        RewardLMConfig (pass another, e.g. with more ``steps``, to extend the schedule).
        """
        info = load_checkpoint(path)
        extra = info["extra"]
        if not isinstance(extra, dict) or "reward_config" not in extra:
            raise ValueError(f"{os.fspath(path)}: not a reward-model checkpoint (no 'reward_config' in its extra entry)")
        if model is None:
            if info["config"] is None:
                raise ValueError(f"{os.fspath(path)}: the checkpoint stores no model config; pass model=")
            model = TinyGPT(GPTConfig(**info["config"]))
        tokenizer = info["tokenizer"] if tokenizer is None else tokenizer
        if tokenizer is None:
            raise ValueError(f"{os.fspath(path)}: the checkpoint stores no tokenizer; pass tokenizer=")
        config = RewardLMConfig(**extra["reward_config"]) if config is None else config
        trainer = cls(model, tokenizer, config)
        load_checkpoint(path, model=model, optimizer=trainer.optimizer)
        trainer.step = info["step"]
        trainer.num_tokens = int(extra["num_tokens"])
        trainer.order = None if extra["order"] is None else EpochOrder.from_state(extra["order"])
        trainer.metadata = dict(extra.get("metadata") or {})
        return trainer

    def __repr__(self) -> str:
        return f"RewardLMTrainer(step={self.step}, config={self.config!r})"


def _check_batch(batch):
    if not isinstance(batch, dict):
        raise TypeError(f"batch: expected a dict from RewardDataset.batch, got {type(batch).__name__}")
    missing = [k for k in ("input_ids", "attention_mask") if k not in batch]
    if missing:
        raise ValueError(f"batch: missing keys {missing} (expected ['input_ids', 'attention_mask'])")
    ids, mask = batch["input_ids"], batch["attention_mask"]
    shape = tuple(getattr(ids, "shape", ()))
    if len(shape) != 2 or shape[0] < 2 or shape[0] % 2:
        raise ValueError(f"batch: input_ids must be (2B, T), chosen rows then rejected rows, got shape {shape}")
    if tuple(getattr(mask, "shape", ())) != shape:
        raise ValueError(f"batch: attention_mask must have input_ids' shape {shape}, got {getattr(mask, 'shape', None)}")
    return ids, mask
