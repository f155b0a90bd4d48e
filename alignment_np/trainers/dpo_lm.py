"""DPO on a language model: the full loop on TinyGPT.

Direct Preference Optimization (Rafailov et al. 2023) needs, per preference
pair (x, y_c, y_r), four numbers: the log-probs of the chosen and rejected
responses under the policy being trained and under a frozen reference. The
loss (Eq. 7, and its variants in ``losses/dpo.py``) is

    L = -log sigmoid( beta * [(pi_c - ref_c) - (pi_r - ref_r)] )

Everything expensive is arranged so that it happens once:

* the reference is frozen, so its log-probs are computed ONCE per dataset,
  in ``prepare`` (forward only, never per step);
* chosen and rejected travel together as one batch of 2B rows (chosen rows
  0..B-1, their rejected rows B..2B-1): ONE forward and ONE backward per step,
  twice the rows of a plain batch rather than two passes (TRL's
  ``concatenated_forward``).

One step, on the path of data of DESIGN.md::

    pairs -> collate_preferences -> input_ids, targets, masks (2B, T)     (once, in prepare)
    input_ids (2B, T) -> policy_logps_forward(targets=...) -> logps (2B,)
      -> DPOTrainer.compute_loss(logps[:B], logps[B:], ref_c, ref_r) -> loss, d logps
      -> policy_logps_backward -> Parameter.grad -> clip -> AdamW

The metrics use TRL's names: ``loss``, ``rewards/chosen`` (mean of
beta * (pi_c - ref_c), the implicit reward of Eq. 5), ``rewards/rejected``,
``rewards/margins``, ``rewards/accuracies`` (fraction of pairs whose chosen
reward is strictly higher), ``logps/chosen``, ``logps/rejected``, and
``grad_norm`` (before clipping).

Shapes: B pairs per batch (2B rows), N pairs in a dataset, T tokens per row.
"""

from __future__ import annotations

import math
import numbers
from dataclasses import dataclass

import numpy as np

from ..backend import get_array_module, to_numpy
from ..data.collate import collate_preferences
from ..losses.dpo import LOSS_TYPES, check_dpo_hyperparameters
from ..optim import AdamW, clip_grad_norm
from .dpo import DPOTrainer
from .lm_logprobs import policy_logps_backward, policy_logps_forward

__all__ = ["DPOConfig", "PreferenceDataset", "DPOLMTrainer"]


@dataclass
class DPOConfig:
    """Hyper-parameters of DPO on a language model (names follow TRL's ``DPOConfig``)."""

    beta: float = 0.1
    """> 0: strength of the implicit KL constraint to the reference; the
    implicit reward is beta * (log pi - log ref). Smaller beta lets the policy
    move further from the reference (TRL default 0.1)."""

    loss_type: str = "sigmoid"
    """'sigmoid' (DPO), 'ipo', 'hinge' (SLiC) or 'robust' (rDPO): see ``losses/dpo.py``."""

    label_smoothing: float = 0.0
    """In [0, 0.5): the assumed rate of flipped labels (conservative DPO, robust DPO)."""

    lr: float = 1e-3
    """AdamW learning rate. Large models use ~5e-7; a tiny GPT trained from a
    few hundred pairs needs ~1e-3 to move in a few dozen steps."""

    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (matrices only). 0: DPO's KL anchor is
    the reference, not the origin."""

    steps: int = 100
    """Optimiser steps that ``train`` takes."""

    batch_size: int = 16
    """B: preference pairs per step; each step runs 2B rows (chosen and rejected)."""

    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""

    average_logps: bool = False
    """Length-normalise the log-probs (divide by the number of response tokens)."""

    eval_batch_size: int = 64
    """Pairs per forward pass in ``prepare`` (reference log-probs) and ``evaluate``."""

    seed: int = 0
    """Seed of the batch order in ``train``: the same seed, the same run."""

    def __post_init__(self):
        self.beta = _positive_float("beta", self.beta)
        if not isinstance(self.loss_type, str) or self.loss_type not in LOSS_TYPES:
            raise ValueError(f"loss_type: expected one of {sorted(LOSS_TYPES)}, got {self.loss_type!r}")
        if not _is_real(self.label_smoothing) or not 0.0 <= self.label_smoothing < 0.5:
            raise ValueError(f"label_smoothing: expected a number in [0, 0.5), got {self.label_smoothing!r}")
        self.label_smoothing = float(self.label_smoothing)
        if not _is_real(self.lr) or not 0.0 <= self.lr < math.inf:
            raise ValueError(f"lr: expected a finite number >= 0, got {self.lr!r}")
        self.lr = float(self.lr)
        if not _is_real(self.weight_decay) or not 0.0 <= self.weight_decay < math.inf:
            raise ValueError(f"weight_decay: expected a finite number >= 0, got {self.weight_decay!r}")
        self.weight_decay = float(self.weight_decay)
        for name in ("steps", "batch_size", "eval_batch_size"):
            setattr(self, name, _positive_int(name, getattr(self, name)))
        if self.grad_clip is not None:
            self.grad_clip = _positive_float("grad_clip", self.grad_clip)
        if not isinstance(self.average_logps, (bool, np.bool_)):
            raise TypeError(f"average_logps: expected a bool, got {type(self.average_logps).__name__}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, numbers.Integral) or self.seed < 0:
            raise ValueError(f"seed: expected an int >= 0, got {self.seed!r}")
        # The rules that tie fields together (e.g. ipo and hinge ignore label_smoothing,
        # so a nonzero one is a mistake) live with the losses: check them here too, so
        # a bad config fails when it is written, not when a trainer is built from it.
        check_dpo_hyperparameters(self.beta, self.label_smoothing, self.loss_type)


@dataclass
class PreferenceDataset:
    """Tokenised preference pairs with the frozen reference's log-probs.

    Built by ``DPOLMTrainer.prepare`` from ``collate_preferences``' layout.
    Rows 0..N-1 are the chosen sequences, rows N..2N-1 the rejected ones, pair
    i in rows i and N + i. For a sequence s = ``<bos> prompt response <eos>``
    a row holds the model's inputs s[:-1] and the tokens they predict s[1:],
    right-padded to T.

    input_ids: (2N, T) token ids the model reads (pad id where attention_mask is 0).
    attention_mask: (2N, T) of 0/1, 1 = real input token.
    targets: (2N, T) the token that follows each input (already shifted).
    loss_mask: (2N, T) of 0/1 aligned with targets: 1 on the response tokens
        and <eos>, the tokens DPO scores.
    ref_logps: (2N,) log-probs of the responses under the reference, computed once.
    """

    input_ids: object
    attention_mask: object
    targets: object
    loss_mask: object
    ref_logps: object

    @property
    def n_pairs(self) -> int:
        """N, the number of preference pairs."""
        return self.input_ids.shape[0] // 2

    def __len__(self) -> int:
        return self.n_pairs

    def batch(self, indices) -> dict:
        """The training batch of the pairs ``indices`` (B,): 2B rows, chosen first.

        Returns {"input_ids", "attention_mask", "targets", "loss_mask"} (2B, T_b) and
        {"ref_chosen_logps", "ref_rejected_logps"} (B,). T_b is the longest row
        of the batch: columns that are padding in every row are dropped (with
        right padding and causal attention they change nothing but the cost).
        """
        xp = get_array_module(self.input_ids)
        n = self.n_pairs
        idx = np.asarray(to_numpy(indices)).reshape(-1)
        if idx.size == 0 or idx.dtype.kind not in "iu" or int(idx.min()) < 0 or int(idx.max()) >= n:
            raise ValueError(f"indices: expected a non-empty array of ints in [0, {n}), got {idx!r}")
        rows = xp.asarray(np.concatenate([idx, idx + n]))  # chosen rows, then their rejected rows
        attention = self.attention_mask[rows]
        t = int(to_numpy(attention.sum(axis=1)).max())  # right padding: real tokens come first
        ref = self.ref_logps[rows]
        b = idx.size
        return {
            "input_ids": self.input_ids[rows, :t],
            "attention_mask": attention[:, :t],
            "targets": self.targets[rows, :t],
            "loss_mask": self.loss_mask[rows, :t],
            "ref_chosen_logps": ref[:b],
            "ref_rejected_logps": ref[b:],
        }


class DPOLMTrainer:
    """Train ``policy`` with DPO against the frozen ``reference``.

    policy, reference: ``TinyGPT`` models with the same vocabulary (usually the
        reference is the SFT model and the policy starts as a copy of it).
        The reference is only ever run forward.
    tokenizer: a ``CharTokenizer`` (anything with ``encode``, ``bos_id``,
        ``eos_id``, ``pad_id`` and ``vocab_size``) whose vocabulary is the model's.
    config: a ``DPOConfig``.

    Use: ``data = trainer.prepare(pairs)`` (tokenise, reference log-probs once),
    then ``trainer.train(data)`` or ``trainer.train_step(data.batch(idx))``,
    and ``trainer.evaluate(held_out)``.
    """

    def __init__(self, policy, reference, tokenizer, config: DPOConfig | None = None):
        config = DPOConfig() if config is None else config
        if not isinstance(config, DPOConfig):
            raise TypeError(f"config: expected a DPOConfig, got {type(config).__name__}")
        for name, model in (("policy", policy), ("reference", reference)):
            if not all(hasattr(model, a) for a in ("config", "forward", "backward", "parameters")):
                raise TypeError(f"{name}: expected a TinyGPT, got {type(model).__name__}")
        if policy is reference:
            raise ValueError(
                "reference: must be a separate, frozen model, got the policy itself "
                "(training would move the reference with it); pass a copy"
            )
        v_policy, v_ref = policy.config.vocab_size, reference.config.vocab_size
        v_tok = getattr(tokenizer, "vocab_size", None)
        if not v_policy == v_ref == v_tok:
            raise ValueError(
                f"tokenizer: policy, reference and tokenizer must share one vocabulary, got "
                f"vocab_size {v_policy} (policy), {v_ref} (reference), {v_tok} (tokenizer)"
            )
        self.policy, self.reference, self.tokenizer, self.config = policy, reference, tokenizer, config
        self.loss_fn = DPOTrainer(config.beta, config.label_smoothing, config.loss_type)
        self.optimizer = AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.rng = np.random.default_rng(config.seed)
        self.history: list[dict] = []

    # ------------------------------------------------------------------ data

    def tokenize(self, pairs) -> dict:
        """``collate_preferences`` of ``pairs``: {"input_ids", "attention_mask",
        "targets", "loss_mask"}, each (2N, T), chosen rows first.

        pairs: a non-empty sequence of ``PreferencePair``, (prompt, chosen,
        rejected) tuples, or dicts with those keys. Each row is
        ``<bos> prompt response <eos>``, shifted into inputs and targets; a
        prompt too long for the model's block_size is cut from the left.
        """
        prompts, chosen, rejected = zip(*_as_triples(pairs))
        block_size = min(self.policy.config.block_size, self.reference.config.block_size)
        return collate_preferences(list(prompts), list(chosen), list(rejected), self.tokenizer, block_size)

    def prepare(self, pairs) -> PreferenceDataset:
        """Tokenise ``pairs`` and compute the reference's log-probs, once, for all of them."""
        rows = self.tokenize(pairs)
        data = PreferenceDataset(rows["input_ids"], rows["attention_mask"], rows["targets"],
                                 rows["loss_mask"], ref_logps=None)
        data.ref_logps = self._logps(self.reference, data)
        return data

    def _logps(self, model, data: PreferenceDataset):
        """Forward-only log-probs (2N,) in chunks of eval_batch_size pairs (chosen, rejected together)."""
        xp = get_array_module(data.input_ids)
        chunk = 2 * self.config.eval_batch_size
        out = []
        for lo in range(0, data.input_ids.shape[0], chunk):
            sl = slice(lo, lo + chunk)
            attention = data.attention_mask[sl]
            t = int(to_numpy(attention.sum(axis=1)).max())  # drop all-padding columns
            logps, _ = policy_logps_forward(
                model, data.input_ids[sl, :t], attention[:, :t], data.loss_mask[sl, :t],
                self.config.average_logps, targets=data.targets[sl, :t],
            )
            out.append(logps)
        return xp.concatenate(out)

    # ------------------------------------------------------------------ steps

    def compute_gradients(self, batch) -> dict:
        """Zero the policy's gradients, then ONE forward and ONE backward over 2B rows.

        batch: from ``PreferenceDataset.batch``. Leaves d loss / d parameter in
        each ``Parameter.grad`` of the policy and returns the metrics (no
        optimiser step, no clipping). ``train_step`` is this plus the step.
        """
        input_ids, attention_mask, targets, loss_mask, ref_c, ref_r = _check_batch(batch)
        b = ref_c.shape[0]
        self.optimizer.zero_grad()
        logps, cache = policy_logps_forward(
            self.policy, input_ids, attention_mask, loss_mask, self.config.average_logps, targets=targets
        )
        _, metrics, d_chosen, d_rejected = self.loss_fn.compute_loss(logps[:b], logps[b:], ref_c, ref_r)
        xp = get_array_module(logps)
        policy_logps_backward(xp.concatenate([d_chosen, d_rejected]), cache)
        return _trl_metrics(metrics, logps, b)

    def train_step(self, batch) -> dict:
        """One DPO step on ``batch`` (from ``PreferenceDataset.batch``): gradients, clip, AdamW.

        Returns the TRL-named metrics of the batch, measured before the update,
        plus ``grad_norm`` (the global gradient norm before clipping).
        """
        metrics = self.compute_gradients(batch)
        params = self.optimizer.params
        # With no clipping asked for, an infinite threshold only measures the norm.
        limit = math.inf if self.config.grad_clip is None else self.config.grad_clip
        metrics["grad_norm"] = clip_grad_norm(params, limit)
        self.optimizer.step()
        self.history.append(metrics)
        return metrics

    def train(self, dataset: PreferenceDataset, steps: int | None = None) -> list[dict]:
        """``steps`` (default ``config.steps``) train steps on shuffled batches of ``dataset``.

        Batches are drawn without replacement within an epoch (a fresh
        permutation each time the data runs out). Returns the metrics per step.
        """
        if not isinstance(dataset, PreferenceDataset):
            raise TypeError(f"dataset: expected a PreferenceDataset from prepare(), got {type(dataset).__name__}")
        steps = self.config.steps if steps is None else _positive_int("steps", steps)
        b = min(self.config.batch_size, dataset.n_pairs)
        order, pos, history = self.rng.permutation(dataset.n_pairs), 0, []
        for _ in range(steps):
            if pos + b > order.size:
                order, pos = self.rng.permutation(dataset.n_pairs), 0
            history.append(self.train_step(dataset.batch(order[pos : pos + b])))
            pos += b
        return history

    def evaluate(self, dataset) -> dict:
        """The TRL-named metrics of the policy over a whole dataset (no gradients, no update).

        dataset: a ``PreferenceDataset`` or pairs (then ``prepare``d first,
        which runs the reference once over them).
        """
        if not isinstance(dataset, PreferenceDataset):
            dataset = self.prepare(dataset)
        logps = self._logps(self.policy, dataset)
        n = dataset.n_pairs
        ref = dataset.ref_logps
        _, metrics, _, _ = self.loss_fn.compute_loss(logps[:n], logps[n:], ref[:n], ref[n:])
        return _trl_metrics(metrics, logps, n)

    def __repr__(self) -> str:
        return f"DPOLMTrainer(config={self.config!r})"


# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


def _trl_metrics(metrics: dict, logps, b: int) -> dict:
    """DPOTrainer's metrics under TRL's log names, plus the mean policy log-probs."""
    return {
        "loss": metrics["loss"],
        "rewards/chosen": metrics["chosen_reward"],
        "rewards/rejected": metrics["rejected_reward"],
        "rewards/accuracies": metrics["accuracy"],
        "rewards/margins": metrics["reward_margin"],
        "logps/chosen": float(logps[:b].mean()),
        "logps/rejected": float(logps[b:].mean()),
    }


def _is_real(x) -> bool:
    return isinstance(x, numbers.Real) and not isinstance(x, bool)


def _positive_float(name, value) -> float:
    if not _is_real(value) or not 0.0 < value < math.inf:
        raise ValueError(f"{name}: expected a finite number > 0, got {value!r}")
    return float(value)


def _positive_int(name, value) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value <= 0:
        raise ValueError(f"{name}: expected a positive int, got {value!r}")
    return int(value)


def _as_triples(pairs) -> list[tuple[str, str, str]]:
    """(prompt, chosen, rejected) strings from PreferencePairs, tuples or dicts."""
    if isinstance(pairs, (str, bytes)) or not hasattr(pairs, "__len__") or len(pairs) == 0:
        raise ValueError(f"pairs: expected a non-empty list of preference pairs, got {pairs!r:.80}")
    triples = []
    for i, p in enumerate(pairs):
        if isinstance(p, dict):
            missing = [k for k in ("prompt", "chosen", "rejected") if k not in p]
            if missing:
                raise ValueError(f"pairs[{i}]: missing keys {missing}")
            t = (p["prompt"], p["chosen"], p["rejected"])
        elif all(hasattr(p, k) for k in ("prompt", "chosen", "rejected")):
            t = (p.prompt, p.chosen, p.rejected)
        elif isinstance(p, (tuple, list)) and len(p) == 3:
            t = tuple(p)
        else:
            raise ValueError(
                f"pairs[{i}]: expected a PreferencePair, a (prompt, chosen, rejected) tuple "
                f"or a dict with those keys, got {p!r:.80}"
            )
        if not all(isinstance(s, str) for s in t):
            raise TypeError(f"pairs[{i}]: prompt, chosen and rejected must be str, got {t!r:.80}")
        triples.append(t)
    return triples


_BATCH_KEYS = ("input_ids", "attention_mask", "targets", "loss_mask", "ref_chosen_logps", "ref_rejected_logps")


def _check_batch(batch):
    if not isinstance(batch, dict):
        raise TypeError(f"batch: expected a dict from PreferenceDataset.batch, got {type(batch).__name__}")
    missing = [k for k in _BATCH_KEYS if k not in batch]
    if missing:
        raise ValueError(f"batch: missing keys {missing} (expected {list(_BATCH_KEYS)})")
    input_ids, attention_mask, targets, loss_mask, ref_c, ref_r = (batch[k] for k in _BATCH_KEYS)
    if getattr(ref_c, "ndim", 0) != 1 or tuple(ref_c.shape) != tuple(getattr(ref_r, "shape", ())):
        raise ValueError(
            f"batch: ref_chosen_logps and ref_rejected_logps must both be (B,), got shapes "
            f"{getattr(ref_c, 'shape', None)} and {getattr(ref_r, 'shape', None)}"
        )
    rows = getattr(input_ids, "shape", (None,))[0]
    if rows != 2 * ref_c.shape[0]:
        raise ValueError(
            f"batch: input_ids must have 2B = {2 * ref_c.shape[0]} rows (chosen, then rejected) "
            f"for B = {ref_c.shape[0]} reference pairs, got shape {getattr(input_ids, 'shape', None)}"
        )
    return input_ids, attention_mask, targets, loss_mask, ref_c, ref_r
