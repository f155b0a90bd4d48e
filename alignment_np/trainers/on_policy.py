"""What PPO, GRPO and RLOO share: prompt batches, the loop, one optimiser step, checkpoints.

Each on-policy trainer is ``rollout -> advantages -> loss -> backward -> step``
(DESIGN.md); the three differ only in the middle. This base class holds the
rest, so that the three files show only what makes each method itself:

* ``next_prompts``: the prompts of the next iteration, ``batch_size`` of them, a
  fresh permutation of the training prompts each epoch (``EpochOrder``, as
  the offline trainers; a batch larger than the prompt list wraps into the
  next epoch);
* ``train(prompts, steps, progress, callback)``: the loop the run mechanism
  drives; ``callback(step, metrics)`` after every iteration, True stops;
* ``_optimizer_step(loss)``: global gradient clipping, the NaN guard
  (``check_finite_metrics`` after the backward pass and BEFORE the update,
  so a NaN never reaches the weights), then AdamW;
* ``save(path)`` / ``resume(path, ...)``: ONE ``.npz`` with the trained
  models, AdamW's moments, the step, both generators' states, the epoch order
  and whatever the subclass adds (PPO: the KL controller), so that k
  iterations, save, resume, N - k iterations gives bit for bit the parameters
  of N iterations straight. The frozen reference and the reward function are
  not stored: they are inputs (the SFT model and the reward model of the run
  folder), passed again to ``resume``, which checks that the reference has
  the weights the run was trained against (a fingerprint, as ``DPOLMTrainer``).

Randomness: ``order`` (an ``EpochOrder`` seeded with ``config.seed``) draws
the prompt order, ``rng`` everything else (the sampling noise, the minibatch
order); both are saved.
"""

from __future__ import annotations

import dataclasses
import math
import os
from typing import Callable

import numpy as np

from ..checkpoint import load_checkpoint, rng_from_state, save_checkpoint
from ..checks import check_finite_metrics, check_nonneg_int
from ..nn.gpt import GPTConfig, TinyGPT
from ..nn.module import Module
from ..optim import AdamW, clip_grad_norm
from ..progress import Progress
from ..rl.rollout import _check_prompts
from .dpo_lm import _check_separate, model_fingerprint
from .epoch_order import EpochOrder

__all__ = ["OnPolicyTrainer"]


class _Models(Module):
    """The trained models under one name each (``policy.wte``, ``value_model.wte``) for one checkpoint."""

    def __init__(self, **models):
        for name, model in models.items():
            setattr(self, name, model)


def _check_model(name: str, model) -> None:
    if not isinstance(model, TinyGPT):
        raise TypeError(f"{name}: expected a TinyGPT, got {type(model).__name__}")


class OnPolicyTrainer:
    """Base class of ``PPOTrainer``, ``GRPOTrainer`` and ``RLOOTrainer`` (not used alone).

    Subclasses set ``name`` (the checkpoint's kind and the progress label),
    ``config_class``, and implement ``train_step(prompts) -> metrics``.
    """

    name = "on_policy"
    config_class = None
    progress_keys: tuple = ()  # metrics shown on the progress bar

    def __init__(self, policy, reference, reward_fn: Callable, tokenizer, config, value_model=None):
        _check_model("policy", policy)
        _check_model("reference", reference)
        _check_separate(policy, reference)  # no shared Parameter, no shared memory
        if reference.config.vocab_size != policy.config.vocab_size:
            raise ValueError(f"reference: expected vocab_size={policy.config.vocab_size} like the policy, "
                             f"got {reference.config.vocab_size}")
        if value_model is not None:
            _check_model("value_model", value_model)
            for other in (policy, reference):
                try:
                    _check_separate(other, value_model)
                except ValueError as err:
                    raise ValueError(f"value_model: expected a separate TinyGPT (None puts the value head on "
                                     f"the policy); {err}") from None
        if not callable(reward_fn):
            raise TypeError(f"reward_fn: expected a callable(prompts, completions) -> (B,) array, "
                            f"got {type(reward_fn).__name__}")
        for attr in ("encode_batch", "decode", "vocab_size", "pad_id", "bos_id", "eos_id"):
            if not hasattr(tokenizer, attr):
                raise TypeError(f"tokenizer: expected a CharTokenizer-like object, {type(tokenizer).__name__} "
                                f"has no {attr}")
        if tokenizer.vocab_size > policy.config.vocab_size:
            raise ValueError(f"tokenizer: its vocab_size {tokenizer.vocab_size} exceeds the model's "
                             f"vocab_size={policy.config.vocab_size}")
        config = self.config_class() if config is None else config
        if not isinstance(config, self.config_class):
            raise TypeError(f"config: expected a {self.config_class.__name__}, got {type(config).__name__}")
        self.policy, self.reference, self.value_model = policy, reference, value_model
        self.reward_fn, self.tokenizer, self.config = reward_fn, tokenizer, config
        self.models = _Models(policy=policy) if value_model is None else _Models(policy=policy,
                                                                               value_model=value_model)
        # One AdamW over everything trained (TRL's PolicyAndValueWrapper has one optimiser too).
        # eps = 1e-5: "The 37 implementation details of PPO" (Huang et al. 2022), TRL's PPO.
        self.optimizer = AdamW(self.models.parameters(), lr=config.learning_rate, betas=(0.9, 0.999), eps=1e-5,
                               weight_decay=config.weight_decay)
        self.step = 0
        self.order: EpochOrder | None = None  # the prompt order, made on the first batch (it needs n)
        self.rng = np.random.default_rng([config.seed, 1])  # sampling noise, minibatch order
        self.metadata: dict = {}

    # ------------------------------------------------------------------ prompts
    def next_prompts(self, prompts) -> list:
        """The next ``config.batch_size`` prompts: a fresh permutation of ``prompts`` each epoch."""
        n = len(prompts)
        if self.order is None:
            # One index at a time, so that a batch larger than n wraps into the next epoch
            # (EpochOrder caps a batch at n).
            self.order = EpochOrder(n, 1, seed=self.config.seed)
        elif self.order.n != n:
            raise ValueError(f"prompts: this trainer's epoch order covers {self.order.n} prompts, got {n}; "
                             "train on the same prompts throughout (or build a new trainer)")
        return [prompts[int(self.order.next()[0])] for _ in range(self.config.batch_size)]

    # ------------------------------------------------------------------ one update
    def _optimizer_step(self, loss: float) -> float:
        """Clip the global gradient norm, refuse a non-finite loss or norm, step AdamW. Returns the norm."""
        max_norm = self.config.max_grad_norm if self.config.max_grad_norm else math.inf
        grad_norm = clip_grad_norm(self.optimizer.params, max_norm)  # the norm before clipping
        check_finite_metrics(self.step + 1, {"loss": loss, "grad_norm": grad_norm})
        self.optimizer.step()
        return float(grad_norm)

    def train_step(self, prompts) -> dict:  # pragma: no cover - interface
        raise NotImplementedError

    # ------------------------------------------------------------------ the loop
    def train(self, prompts, steps: int | None = None, progress: bool = True,
              callback: Callable[[int, dict], object] | None = None) -> dict:
        """Run ``steps`` iterations (default: up to ``config.steps``) on batches of ``prompts``.

        prompts: the training prompts (a list of str); each iteration takes
            ``config.batch_size`` of them (``next_prompts``).
        progress: show a progress bar and a metrics line every ``config.log_every`` iterations.
        callback: ``callback(step, metrics)`` after every iteration; True stops training there.
        Returns the history: {"step": [...], metric: [...]} with one entry per iteration.
        """
        prompts = _check_prompts(prompts)
        steps = max(self.config.steps - self.step, 0) if steps is None else check_nonneg_int("steps", steps)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable(step, metrics), got {type(callback).__name__}")
        history: dict[str, list] = {"step": []}
        bar = Progress(total=steps, desc=self.name, enabled=progress)
        try:
            for _ in range(steps):
                metrics = self.train_step(self.next_prompts(prompts))
                history["step"].append(self.step)
                for key, value in metrics.items():
                    history.setdefault(key, []).append(value)
                bar.update(1, **{k: metrics[k] for k in self.progress_keys if k in metrics})
                if self.config.log_every and self.step % self.config.log_every == 0:
                    bar.write(f"{self.name} step {self.step:5d}  " + "  ".join(
                        f"{k} {metrics[k]:.4g}" for k in self.progress_keys if k in metrics))
                if callback is not None and callback(self.step, metrics) is True:
                    break
        finally:
            bar.close()
        return history

    # ------------------------------------------------------------------ checkpoints
    def _extra_state(self) -> dict:
        """Subclass state to save (JSON-ready)."""
        return {}

    def _load_extra_state(self, state: dict) -> None:
        """Restore what ``_extra_state`` saved."""

    def save(self, path: str | os.PathLike) -> None:
        """Write everything needed to continue exactly to ``path`` (one .npz, atomically)."""
        extra = {
            "trainer": self.name,
            "config": dataclasses.asdict(self.config),
            "policy_config": dataclasses.asdict(self.policy.config),
            "value_config": None if self.value_model is None else dataclasses.asdict(self.value_model.config),
            "order": None if self.order is None else self.order.state(),
            "reference_fingerprint": model_fingerprint(self.reference),
            "metadata": self.metadata,
            "state": self._extra_state(),
        }
        save_checkpoint(path, self.models, self.optimizer, tokenizer=self.tokenizer, step=self.step,
                        rng_state=self.rng, extra=extra)

    @classmethod
    def resume(cls, path: str | os.PathLike, reference, reward_fn: Callable, tokenizer=None, policy=None,
               value_model=None, config=None):
        """A trainer that continues exactly where ``save(path)`` stopped.

        reference, reward_fn: the frozen reference (the same weights as before: its
            fingerprint is checked) and the reward function (neither is stored).
        tokenizer: default the checkpoint's.
        policy, value_model: TinyGPTs to load the weights into (default: built
            from the checkpoint's configs on the active backend).
        config: default the checkpoint's; pass another (e.g. more ``steps``) to change it from here on.
        """
        info = load_checkpoint(path)
        extra = info["extra"]
        if not isinstance(extra, dict) or extra.get("trainer") != cls.name:
            kind = extra.get("trainer") if isinstance(extra, dict) else None
            raise ValueError(f"{os.fspath(path)}: not a {cls.name} checkpoint (it holds {kind!r})")
        if policy is None:
            policy = TinyGPT(GPTConfig(**extra["policy_config"]))
        if extra["value_config"] is not None and value_model is None:
            value_model = TinyGPT(GPTConfig(**extra["value_config"]))
        if extra["value_config"] is None and value_model is not None:
            raise ValueError(f"value_model: {os.fspath(path)} has no separate value model "
                             "(its value head sits on the policy); pass value_model=None")
        tokenizer = info["tokenizer"] if tokenizer is None else tokenizer
        config = cls.config_class(**extra["config"]) if config is None else config
        _check_model("reference", reference)
        if model_fingerprint(reference) != extra["reference_fingerprint"]:
            raise ValueError(f"reference: its weights differ from those the run at {os.fspath(path)} was trained "
                             "against (fingerprints differ); resume with the same reference model")
        models = {} if value_model is None else {"value_model": value_model}  # only PPO has one
        trainer = cls(policy, reference, reward_fn, tokenizer, config, **models)
        load_checkpoint(path, model=trainer.models, optimizer=trainer.optimizer)  # checks names and shapes first
        trainer.step = info["step"]
        trainer.rng = rng_from_state(info["rng_state"])
        trainer.order = None if extra["order"] is None else EpochOrder.from_state(extra["order"])
        trainer.metadata = dict(extra.get("metadata") or {})
        trainer._load_extra_state(extra.get("state") or {})
        return trainer
