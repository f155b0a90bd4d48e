"""Supervised fine-tuning (SFT): teach a language model to continue text like its data.

The first stage of RLHF (Ouyang et al. 2022, Sec. 3.5 "Supervised fine-tuning";
Stiennon et al. 2020): maximise the likelihood of demonstration responses,
i.e. minimise the token-level cross-entropy

    loss = - sum_{b,t} m[b,t] log pi(targets[b,t] | input_ids[b, :t+1]) / sum m

where the loss mask m covers the tokens to learn: every token of a plain text
(``collate_lm``) or only the response of a (prompt, response) pair
(``collate_sft``). One step::

    lr = cosine_schedule(step, ...)                   linear warmup, then cosine decay
    logits, cache = model.forward(input_ids, attention_mask)      (B, T, V)
    loss, ce_cache = cross_entropy_forward(logits, targets, loss_mask)
    model.backward({"logits": cross_entropy_backward(1, ce_cache)}, cache)
    grad_norm = clip_grad_norm(params, grad_clip)     global L2 norm, before clipping
    optimizer.step()                                  AdamW (Loshchilov & Hutter 2019)

Reproducible, and resumable exactly
-----------------------------------
The data order is a fresh permutation of the examples each epoch, drawn from
a ``numpy.random.Generator`` seeded with ``SFTConfig.seed`` (the model's
initial weights have their own seed). ``save`` writes the model, AdamW's
moments and step count, the step, that generator's state, the current epoch's
permutation and the position in it; ``SFTTrainer.resume`` restores all of it,
so k steps, save, resume, N - k steps gives bit for bit the parameters of N
steps straight. Nothing else is random: TinyGPT has no dropout.

Metrics follow TRL's SFT logs: ``loss``, ``grad_norm``, ``learning_rate``
(here ``lr``) and the number of tokens counted (``tokens``).
"""

from __future__ import annotations

import dataclasses
import math
import os
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import check_finite_metrics
from ..checkpoint import load_checkpoint, rng_from_state, save_checkpoint
from ..data.collate import BATCH_KEYS, collate_lm, collate_sft
from ..functional.cross_entropy import cross_entropy_backward, cross_entropy_forward
from ..nn.gpt import GPTConfig, TinyGPT
from ..optim import AdamW, clip_grad_norm, cosine_schedule
from ..progress import Progress

__all__ = ["SFTConfig", "SFTTrainer", "sft_loss", "load_model"]


def _positive_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _nonneg_int(name: str, value) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 0:
        raise ValueError(f"{name}: expected an int >= 0, got {value!r}")
    return int(value)


def _nonneg_float(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) or not 0 <= value < math.inf:
        raise ValueError(f"{name}: expected a finite number >= 0, got {value!r}")
    return float(value)


@dataclass
class SFTConfig:
    """Hyper-parameters of supervised fine-tuning (names as in TRL's ``SFTConfig`` where shared)."""

    lr: float = 3e-3
    """Peak learning rate of AdamW, reached at the end of the warmup (tiny models take large rates)."""

    min_lr: float = 3e-4
    """Learning rate at the end of the cosine decay (and after ``steps``)."""

    warmup_steps: int = 50
    """Steps of linear warmup from 0 to ``lr``: Adam's early moment estimates are noisy."""

    steps: int = 1000
    """Total optimizer steps: the length of the schedule, and where ``train()`` stops by default."""

    batch_size: int = 32
    """Examples per step (B). The last batch of an epoch is topped up from the next epoch."""

    grad_clip: float | None = 1.0
    """Clip the global gradient L2 norm to this value; None (or 0) never clips (the norm is still logged)."""

    weight_decay: float = 0.01
    """AdamW's decoupled weight decay, applied to matrices only (not biases or LayerNorm gains)."""

    betas: tuple[float, float] = (0.9, 0.95)
    """AdamW's (beta1, beta2); 0.95 as in GPT-3 and nanoGPT, steadier for small batches."""

    seed: int = 0
    """Seeds the data order (a fresh permutation each epoch). The model's weights have their own seed."""

    log_every: int = 50
    """Print the loss every this many steps when progress is shown (0: never)."""

    eval_every: int = 0
    """Evaluate on ``eval_data`` every this many steps during ``train`` (0: never)."""

    def __post_init__(self):
        self.lr = _nonneg_float("lr", self.lr)
        self.min_lr = _nonneg_float("min_lr", self.min_lr)
        if self.min_lr > self.lr:
            raise ValueError(f"min_lr: expected <= lr={self.lr}, got {self.min_lr}")
        self.steps = _positive_int("steps", self.steps)
        self.warmup_steps = _nonneg_int("warmup_steps", self.warmup_steps)
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps: expected <= steps={self.steps}, got {self.warmup_steps}")
        self.batch_size = _positive_int("batch_size", self.batch_size)
        if self.grad_clip is not None:
            self.grad_clip = _nonneg_float("grad_clip", self.grad_clip)
        self.weight_decay = _nonneg_float("weight_decay", self.weight_decay)
        betas = tuple(self.betas) if isinstance(self.betas, (list, tuple)) else None  # a list after JSON
        if betas is None or len(betas) != 2 or not all(
            isinstance(b, (int, float)) and not isinstance(b, bool) and 0 <= b < 1 for b in betas
        ):
            raise ValueError(f"betas: expected two numbers in [0, 1), got {self.betas!r}")
        self.betas = (float(betas[0]), float(betas[1]))
        self.seed = _nonneg_int("seed", self.seed)
        self.log_every = _nonneg_int("log_every", self.log_every)
        self.eval_every = _nonneg_int("eval_every", self.eval_every)


def _check_data(data, name: str = "data") -> str:
    """'lm' for a list of str, 'sft' for a list of (prompt, response) pairs."""
    if isinstance(data, (str, dict)) or not isinstance(data, Sequence) or len(data) == 0:
        raise ValueError(
            f"{name}: expected a non-empty list of texts or of (prompt, response) pairs, "
            f"got {type(data).__name__}" + (" of length 0" if isinstance(data, Sequence) else "")
        )
    kind = "lm" if isinstance(data[0], str) else "sft"
    for i, item in enumerate(data):
        ok = isinstance(item, str) if kind == "lm" else (
            isinstance(item, (tuple, list)) and len(item) == 2 and all(isinstance(s, str) for s in item)
        )
        if not ok:
            expected = "a str like data[0]" if kind == "lm" else "a (prompt, response) pair of str like data[0]"
            raise ValueError(f"{name}[{i}]: expected {expected}, got {item!r}")
    return kind


def sft_loss(model, batch: dict, backward: bool = True) -> float:
    """The masked next-token cross-entropy of ``model`` on ``batch``; with ``backward``, its gradients.

    model: a TinyGPT. batch: {"input_ids", "attention_mask", "targets",
    "loss_mask"}, each (B, T), from ``collate_lm`` / ``collate_sft``.
    Returns the loss, mean over the counted targets, as a float. With
    ``backward=True`` the gradients of that loss are ADDED to every parameter's
    ``.grad`` (call ``zero_grad()`` first for the gradient of this batch alone).
    """
    _check_batch(batch)
    outputs, cache = model.forward(batch["input_ids"], batch["attention_mask"])  # logits (B, T, V)
    loss, ce_cache = cross_entropy_forward(outputs["logits"], batch["targets"], batch["loss_mask"])
    if backward:
        model.backward({"logits": cross_entropy_backward(1.0, ce_cache)}, cache)
    return float(loss)


class SFTTrainer:
    """Supervised fine-tuning of a TinyGPT with AdamW and a warmup + cosine schedule.

    model: a ``TinyGPT`` (trained in place).
    tokenizer: the ``CharTokenizer`` that made the model's vocabulary.
    config: an ``SFTConfig`` (default ``SFTConfig()``).

    Attributes: ``step`` (optimizer steps taken), ``optimizer`` (AdamW),
    ``data_rng`` (the generator of the data order), ``epoch``, and
    ``metadata``: a JSON-ready dict the caller may fill (e.g. how the data was
    made); ``save`` stores it and ``resume`` gives it back.
    """

    def __init__(self, model, tokenizer, config: SFTConfig | None = None):
        if not isinstance(model, TinyGPT):
            raise TypeError(f"model: expected a TinyGPT, got {type(model).__name__}")
        for attr in ("encode", "vocab_size", "pad_id", "bos_id", "eos_id"):
            if not hasattr(tokenizer, attr):
                raise TypeError(
                    f"tokenizer: expected a CharTokenizer-like object, {type(tokenizer).__name__} has no {attr}"
                )
        if tokenizer.vocab_size > model.config.vocab_size:
            raise ValueError(
                f"tokenizer: its vocab_size {tokenizer.vocab_size} exceeds the model's "
                f"vocab_size={model.config.vocab_size}"
            )
        config = SFTConfig() if config is None else config
        if not isinstance(config, SFTConfig):
            raise TypeError(f"config: expected an SFTConfig, got {type(config).__name__}")
        self.model, self.tokenizer, self.config = model, tokenizer, config
        self.optimizer = AdamW(
            model.parameters(), lr=config.lr, betas=config.betas, weight_decay=config.weight_decay
        )
        self.step = 0
        self.epoch = 0
        self.data_rng = np.random.default_rng(config.seed)
        self._order: np.ndarray | None = None  # this epoch's permutation of the examples
        self._cursor = 0  # how many of them were used
        self.metadata: dict = {}

    # ------------------------------------------------------------------ batching
    def collate(self, data, indices) -> dict:
        """The batch of ``data[i] for i in indices``: texts via ``collate_lm``, pairs via ``collate_sft``."""
        return self._collate(data, indices, _check_data(data))

    def _collate(self, data, indices, kind: str) -> dict:
        items = [data[int(i)] for i in indices]
        block_size = self.model.config.block_size
        if kind == "lm":
            return collate_lm(items, self.tokenizer, block_size)
        return collate_sft(items, self.tokenizer, block_size)

    def next_indices(self, n: int) -> np.ndarray:
        """The next ``batch_size`` example indices in [0, n), one permutation per epoch."""
        b = self.config.batch_size
        if self._order is not None and len(self._order) != n:
            raise ValueError(
                f"data: this trainer's epoch order covers {len(self._order)} examples, got {n}; "
                "train on the same data throughout (or build a new trainer)"
            )
        out = []
        while len(out) < b:
            if self._order is None or self._cursor == n:
                self._order = self.data_rng.permutation(n)
                self._cursor = 0
                self.epoch += 1
            take = min(b - len(out), n - self._cursor)
            out.extend(self._order[self._cursor : self._cursor + take].tolist())
            self._cursor += take
        return np.asarray(out, dtype=np.int64)

    # ------------------------------------------------------------------ one step
    def learning_rate(self, step: int | None = None) -> float:
        """The scheduled learning rate at ``step`` (default: the next step)."""
        c = self.config
        step = self.step if step is None else step
        return cosine_schedule(step, c.lr, c.warmup_steps, c.steps, c.min_lr)

    def train_step(self, batch: dict) -> dict:
        """One optimizer step on ``batch`` (from ``collate_lm`` / ``collate_sft``).

        batch: {"input_ids", "attention_mask", "targets", "loss_mask"}, each (B, T).
        Returns {"loss": float (before the update), "grad_norm": float (before
        clipping), "lr": float (used by this step), "tokens": int (counted targets)}.
        Raises ``NonFiniteLossError`` (and takes no step) if the loss or the
        gradient norm is NaN or infinite.
        """
        c = self.config
        lr = self.learning_rate()
        self.optimizer.lr = lr
        self.optimizer.zero_grad()
        loss = sft_loss(self.model, batch, backward=True)
        max_norm = c.grad_clip if c.grad_clip else math.inf  # inf: measure the norm, never scale
        grad_norm = clip_grad_norm(self.optimizer.params, max_norm)
        # A NaN or infinite loss stops here, before the update: the weights stay those of the last good step.
        check_finite_metrics(self.step + 1, {"loss": loss, "grad_norm": grad_norm})
        self.optimizer.step()
        self.step += 1
        return {
            "loss": loss,
            "grad_norm": float(grad_norm),
            "lr": float(lr),
            "tokens": int(to_numpy(batch["loss_mask"]).sum()),
        }

    # ------------------------------------------------------------------ loops
    def train(
        self,
        data,
        steps: int | None = None,
        progress: bool = True,
        callback: Callable[[int, dict], object] | None = None,
        eval_data=None,
    ) -> dict:
        """Run ``steps`` optimizer steps (default: up to ``config.steps``) on ``data``.

        data: a list of texts (every token learned) or of (prompt, response)
            pairs (response tokens only).
        progress: show a progress bar and a loss line every ``config.log_every`` steps.
        callback: called as ``callback(step, metrics)`` after every step; if it
            returns True, training stops there.
        eval_data: held-out data like ``data``, evaluated every ``config.eval_every`` steps.
        Returns the history: {"step", "loss", "grad_norm", "lr", "tokens"} lists
        (one entry per step) and, with evaluation, "eval_step" and "eval_loss".
        """
        kind = _check_data(data)
        if eval_data is not None:
            _check_data(eval_data, "eval_data")
        steps = max(self.config.steps - self.step, 0) if steps is None else _nonneg_int("steps", steps)
        if callback is not None and not callable(callback):
            raise TypeError(f"callback: expected a callable(step, metrics), got {type(callback).__name__}")
        c = self.config
        history: dict[str, list] = {"step": [], "loss": [], "grad_norm": [], "lr": [], "tokens": []}
        if eval_data is not None and c.eval_every:
            history.update({"eval_step": [], "eval_loss": []})
        bar = Progress(total=steps, desc="sft", enabled=progress)
        try:
            for _ in range(steps):
                batch = self._collate(data, self.next_indices(len(data)), kind)
                metrics = self.train_step(batch)
                history["step"].append(self.step)
                for key in ("loss", "grad_norm", "lr", "tokens"):
                    history[key].append(metrics[key])
                bar.update(1, loss=metrics["loss"], lr=metrics["lr"])
                if c.log_every and self.step % c.log_every == 0:
                    bar.write(
                        f"step {self.step:5d}  loss {metrics['loss']:.4f}  "
                        f"grad_norm {metrics['grad_norm']:.3f}  lr {metrics['lr']:.2e}"
                    )
                if eval_data is not None and c.eval_every and self.step % c.eval_every == 0:
                    eval_loss = self.evaluate(eval_data)
                    history["eval_step"].append(self.step)
                    history["eval_loss"].append(eval_loss)
                    bar.write(f"step {self.step:5d}  eval_loss {eval_loss:.4f}")
                if callback is not None and callback(self.step, metrics) is True:
                    break
        finally:
            bar.close()
        return history

    def evaluate(self, data, batch_size: int | None = None) -> float:
        """Mean cross-entropy per counted token over ``data`` (in order; no gradients, no update).

        Every token weighs the same, whatever batch it falls in:
        sum over batches of (batch loss * batch tokens) / total tokens.
        """
        kind = _check_data(data)
        b = self.config.batch_size if batch_size is None else _positive_int("batch_size", batch_size)
        total, count = 0.0, 0
        for start in range(0, len(data), b):
            batch = self._collate(data, range(start, min(start + b, len(data))), kind)
            loss = sft_loss(self.model, batch, backward=False)
            n = int(to_numpy(batch["loss_mask"]).sum())
            total += loss * n
            count += n
        return total / max(count, 1)

    # ------------------------------------------------------------------ checkpoints
    def save(self, path: str | os.PathLike) -> None:
        """Write everything needed to continue exactly to ``path`` (one .npz, atomically)."""
        extra = {
            "sft_config": dataclasses.asdict(self.config),
            "epoch": self.epoch,
            "order": None if self._order is None else self._order.tolist(),
            "cursor": self._cursor,
            "metadata": self.metadata,
        }
        save_checkpoint(
            path,
            self.model,
            self.optimizer,
            tokenizer=self.tokenizer,
            step=self.step,
            rng_state=self.data_rng,
            extra=extra,
        )

    @classmethod
    def resume(cls, path: str | os.PathLike, model=None, tokenizer=None, config: SFTConfig | None = None):
        """A trainer that continues exactly where ``save(path)`` stopped.

        model: a TinyGPT to load the weights into (default: built from the
            checkpoint's config on the active backend).
        tokenizer: default the checkpoint's.
        config: default the checkpoint's SFTConfig; pass another (e.g. more
            ``steps``) to change the schedule from here on.
        """
        info = load_checkpoint(path)
        extra = info["extra"]
        if not isinstance(extra, dict) or "sft_config" not in extra:
            raise ValueError(f"{os.fspath(path)}: not an SFT checkpoint (no 'sft_config' in its extra entry)")
        if model is None:
            if info["config"] is None:
                raise ValueError(f"{os.fspath(path)}: the checkpoint stores no model config; pass model=")
            model = TinyGPT(GPTConfig(**info["config"]))
        tokenizer = info["tokenizer"] if tokenizer is None else tokenizer
        if tokenizer is None:
            raise ValueError(f"{os.fspath(path)}: the checkpoint stores no tokenizer; pass tokenizer=")
        config = SFTConfig(**extra["sft_config"]) if config is None else config
        trainer = cls(model, tokenizer, config)
        load_checkpoint(path, model=model, optimizer=trainer.optimizer)  # checks shapes, then restores
        trainer.step = info["step"]
        trainer.epoch = int(extra["epoch"])
        trainer.data_rng = rng_from_state(info["rng_state"])
        trainer._order = None if extra["order"] is None else np.asarray(extra["order"], dtype=np.int64)
        trainer._cursor = int(extra["cursor"])
        trainer.metadata = dict(extra.get("metadata") or {})
        return trainer


def load_model(path: str | os.PathLike):
    """(TinyGPT, CharTokenizer) from a checkpoint written by ``SFTTrainer.save`` (for sampling)."""
    info = load_checkpoint(path)
    if info["config"] is None or info["tokenizer"] is None:
        raise ValueError(f"{os.fspath(path)}: the checkpoint must store the model config and the tokenizer")
    model = TinyGPT(GPTConfig(**info["config"]))
    load_checkpoint(path, model=model)
    return model, info["tokenizer"]


def _check_batch(batch) -> None:
    if not isinstance(batch, dict):
        raise TypeError(f"batch: expected a dict with keys {BATCH_KEYS}, got {type(batch).__name__}")
    missing = [k for k in BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch: missing keys {missing}; expected {BATCH_KEYS} (from collate_lm / collate_sft)")
    shape = tuple(batch["input_ids"].shape)
    for key in BATCH_KEYS:
        if tuple(batch[key].shape) != shape or len(shape) != 2:
            raise ValueError(
                f"batch[{key!r}]: expected shape {shape} (B, T) like batch['input_ids'], "
                f"got {tuple(batch[key].shape)}"
            )
    xp = get_array_module(batch["input_ids"])
    if not bool(xp.all((batch["loss_mask"] == 0) | (batch["attention_mask"] == 1))):
        raise ValueError("batch['loss_mask']: counts a position where attention_mask is 0 (padding)")
