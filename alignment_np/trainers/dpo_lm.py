"""DPO and its family on a language model: the full loop on TinyGPT.

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
      -> the loss of ``loss_type`` -> loss, d logps (2B,)
      -> policy_logps_backward -> Parameter.grad -> clip -> NaN guard -> AdamW

The loss types
--------------
=========  ===========================================  ==============  ============
loss_type  loss of one pair                             log-probs       reference
=========  ===========================================  ==============  ============
sigmoid    DPO, Rafailov et al. 2023, Eq. 7             summed          yes
ipo        IPO, Azar et al. 2023, Eq. 17                averaged (TRL)  yes
hinge      SLiC-HF as TRL adapts it, Zhao et al. 2023   summed          yes
robust     rDPO, Chowdhury et al. 2024                  summed          yes
simpo      SimPO, Meng et al. 2024, Eq. 6 (margin mu,   averaged        no
           their gamma: ``simpo_gamma``)
orpo       ORPO, Hong et al. 2024, Eq. 6: NLL of the    averaged        no
           chosen response + alpha * odds-ratio loss
           (alpha, their lambda: ``beta``, as in TRL)
=========  ===========================================  ==============  ============

Summed or averaged. ``DPOConfig.average_logps`` left at None follows each
loss type's convention, the one a user coming from TRL expects: DPO, hinge
and robust use the log-prob of the whole response (the sum over its tokens);
IPO uses the per-token average (TRL's ``DPOTrainer`` divides by the response
length for ``loss_type="ipo"``; Azar et al. wrote it with whole-sequence
log-probs, which ``average_logps=False`` gives); SimPO and ORPO are DEFINED
on averages, so ``average_logps=False`` is refused for them. The resolved
choice is ``DPOConfig.averaged``.

Reference-free. SimPO and ORPO never run a reference model: ``reference`` may
be None for them (a reference given is kept but never run), and ``prepare``
computes no reference log-probs. A reference that shares a parameter, or any
array memory, with the policy is refused for every loss type: training would
move the reference along with the policy, and the loss would sit at log 2
with accuracy 0 forever (issue 7).

Metrics use TRL's names: ``loss``, ``rewards/chosen`` (DPO family: mean of
beta * (pi_c - ref_c), the implicit reward of Eq. 5; SimPO and ORPO: beta *
the averaged log-prob, as TRL's CPO and ORPO trainers log it),
``rewards/rejected``, ``rewards/margins``, ``rewards/accuracies`` (fraction of
pairs whose chosen reward is strictly higher), ``logps/chosen``,
``logps/rejected`` (the log-probs the loss saw, summed or averaged), for ORPO
also ``nll_loss``, ``log_odds_ratio`` and ``log_odds_chosen`` (as TRL's
``ORPOTrainer``), and ``grad_norm`` (before clipping) from ``train_step``.

Resumable exactly: ``save`` stores the policy, AdamW's state, the step, the
data order and the config (and a fingerprint of the reference's weights);
``DPOLMTrainer.resume`` restores them, so k steps, save, resume, N - k steps
equals N steps bit for bit. A NaN or infinite loss or gradient norm raises
``NonFiniteLossError`` before the optimiser step.

Shapes: B pairs per batch (2B rows), N pairs in a dataset, T tokens per row.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
import os
from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checkpoint import load_checkpoint, save_checkpoint
from ..checks import (
    NonFiniteLossError,
    check_bool,
    check_choice,
    check_finite_metrics,
    check_float,
    check_nonneg_int,
    check_positive_int,
)
from ..data.collate import collate_preferences
from ..losses.dpo import LOSS_TYPES, check_dpo_hyperparameters, simpo_loss
from ..losses.orpo import orpo_loss
from ..nn.gpt import GPTConfig, TinyGPT
from ..optim import AdamW, clip_grad_norm
from ..progress import Progress
from .dpo import DPOTrainer
from .epoch_order import EpochOrder, begin_epochs
from .lm_logprobs import policy_logps_backward, policy_logps_forward

__all__ = ["DPOConfig", "PreferenceDataset", "DPOLMTrainer", "LM_LOSS_TYPES", "REFERENCE_FREE"]

REFERENCE_FREE = ("simpo", "orpo")
"""Loss types that never run a reference model."""

LM_LOSS_TYPES = tuple(sorted(LOSS_TYPES)) + REFERENCE_FREE
"""Every ``DPOConfig.loss_type``: the DPO family of ``losses/dpo.py`` plus SimPO and ORPO."""

# The convention of each loss type when average_logps is None (module docstring).
_AVERAGED_BY_DEFAULT = {"sigmoid": False, "hinge": False, "robust": False, "ipo": True, "simpo": True, "orpo": True}


@dataclass
class DPOConfig:
    """Hyper-parameters of the DPO family on a language model (names follow TRL's configs)."""

    beta: float = 0.1
    """> 0. DPO family: strength of the implicit KL constraint to the reference;
    the implicit reward is beta * (log pi - log ref) (TRL default 0.1). SimPO:
    the reward scale (the paper uses 2 to 2.5). ORPO: alpha (the paper's lambda),
    the weight of the odds-ratio term (TRL's ORPOConfig calls it beta too; default 0.1)."""

    loss_type: str = "sigmoid"
    """'sigmoid' (DPO), 'ipo', 'hinge' (SLiC), 'robust' (rDPO), 'simpo' or 'orpo':
    see the module docstring and ``losses/dpo.py``, ``losses/orpo.py``."""

    label_smoothing: float = 0.0
    """eta in [0, 0.5): the assumed label-flip rate (conservative DPO, robust
    DPO, SimPO); refused for loss types that ignore it."""

    simpo_gamma: float = 0.5
    """SimPO's target reward margin mu >= 0 (the paper's gamma, Meng et al. 2024,
    Eq. 6; TRL's name and default). Used only by loss_type 'simpo'."""

    lr: float = 1e-3
    """AdamW learning rate. Large models use ~5e-7; a tiny GPT trained from a
    few hundred pairs needs ~1e-3 to move in a few dozen steps."""

    weight_decay: float = 0.0
    """AdamW's decoupled weight decay (matrices only). 0: DPO's KL anchor is
    the reference, not the origin."""

    steps: int = 100
    """Optimiser steps: where ``train`` stops by default."""

    batch_size: int = 16
    """B: preference pairs per step; each step runs 2B rows (chosen and rejected)."""

    grad_clip: float | None = 1.0
    """Clip the global gradient norm to this value (None: no clipping)."""

    average_logps: bool | None = None
    """Length-normalise the log-probs (divide by the number of response tokens).
    None: the loss type's convention (summed for sigmoid, hinge, robust;
    averaged for ipo, as TRL does, and for simpo and orpo, which are defined on
    averages). ``averaged`` gives the resolved choice."""

    eval_batch_size: int = 64
    """Pairs per forward pass in ``prepare`` (reference log-probs) and ``evaluate``."""

    seed: int = 0
    """Seed of the batch order in ``train``: the same seed, the same run."""

    def __post_init__(self):
        self.loss_type = check_choice("loss_type", self.loss_type, LM_LOSS_TYPES)
        self.beta = check_float("beta", self.beta, 0.0, low_open=True)
        self.label_smoothing = check_float("label_smoothing", self.label_smoothing, 0.0, 0.5, high_open=True)
        self.simpo_gamma = check_float("simpo_gamma", self.simpo_gamma, 0.0)
        self.lr = check_float("lr", self.lr, 0.0)
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0.0)
        for name in ("steps", "batch_size", "eval_batch_size"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        if self.grad_clip is not None:
            self.grad_clip = check_float("grad_clip", self.grad_clip, 0.0, low_open=True)
        if self.average_logps is not None:
            self.average_logps = check_bool("average_logps", self.average_logps)
            if not self.average_logps and self.loss_type in REFERENCE_FREE:
                raise ValueError(
                    f"average_logps: loss_type={self.loss_type!r} is defined on length-averaged log-probs; "
                    "got False (leave it None)"
                )
        self.seed = check_nonneg_int("seed", self.seed)
        # The rules that tie fields together (e.g. ipo and hinge ignore label_smoothing,
        # so a nonzero one is a mistake) live with the losses: check them here too, so
        # a bad config fails when it is written, not when a trainer is built from it.
        if self.loss_type in LOSS_TYPES:
            check_dpo_hyperparameters(self.beta, self.label_smoothing, self.loss_type)
        elif self.loss_type == "orpo" and self.label_smoothing:
            raise ValueError(
                f"label_smoothing applies only to loss_type in ['sigmoid', 'robust', 'simpo']; got "
                f"label_smoothing={self.label_smoothing!r} with loss_type='orpo'"
            )

    @property
    def averaged(self) -> bool:
        """Whether the loss sees length-averaged log-probs (``average_logps`` resolved)."""
        return _AVERAGED_BY_DEFAULT[self.loss_type] if self.average_logps is None else self.average_logps

    @property
    def reference_free(self) -> bool:
        """True for loss types that never run a reference model (simpo, orpo)."""
        return self.loss_type in REFERENCE_FREE


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
    ref_logps: (2N,) log-probs of the responses under the reference, computed
        once (summed or averaged like the policy's); None for reference-free losses.
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

        Returns {"input_ids", "attention_mask", "targets", "loss_mask"} (2B, T_b) and,
        unless the dataset is reference-free, {"ref_chosen_logps",
        "ref_rejected_logps"} (B,). T_b is the longest row
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
        out = {
            "input_ids": self.input_ids[rows, :t],
            "attention_mask": attention[:, :t],
            "targets": self.targets[rows, :t],
            "loss_mask": self.loss_mask[rows, :t],
        }
        if self.ref_logps is not None:
            ref = self.ref_logps[rows]
            out["ref_chosen_logps"], out["ref_rejected_logps"] = ref[: idx.size], ref[idx.size :]
        return out



class DPOLMTrainer:
    """Train ``policy`` with a loss of the DPO family against the frozen ``reference``.

    policy: a ``TinyGPT`` (trained in place; usually a copy of the SFT model).
    reference: a ``TinyGPT`` with the same vocabulary (usually the SFT model),
        only ever run forward; None for the reference-free loss types (simpo,
        orpo), which never run it anyway. It must not share a Parameter or
        any array memory with the policy.
    tokenizer: a ``CharTokenizer`` (anything with ``encode``, ``bos_id``,
        ``eos_id``, ``pad_id``, ``vocab_size`` and ``to_dict``) whose vocabulary is the model's.
    config: a ``DPOConfig``.

    Use: ``data = trainer.prepare(pairs)`` (tokenise, reference log-probs once),
    then ``trainer.train(data)`` or ``trainer.train_step(data.batch(idx))``,
    and ``trainer.evaluate(held_out)``. Attributes: ``step``, ``optimizer``,
    ``order`` (the ``EpochOrder``, made by the first ``train``), ``metadata``
    (a JSON-ready dict that ``save`` keeps).
    """

    def __init__(self, policy, reference, tokenizer, config: DPOConfig | None = None):
        config = DPOConfig() if config is None else config
        if not isinstance(config, DPOConfig):
            raise TypeError(f"config: expected a DPOConfig, got {type(config).__name__}")
        models = [("policy", policy)] + ([] if reference is None else [("reference", reference)])
        for name, model in models:
            if not all(hasattr(model, a) for a in ("config", "forward", "backward", "parameters")):
                raise TypeError(f"{name}: expected a TinyGPT, got {type(model).__name__}")
        if reference is None and not config.reference_free:
            raise ValueError(
                f"reference: loss_type={config.loss_type!r} compares the policy with a frozen reference "
                f"model, got None (only {list(REFERENCE_FREE)} need none)"
            )
        if reference is not None:
            _check_separate(policy, reference)
        v_tok = getattr(tokenizer, "vocab_size", None)
        sizes = [model.config.vocab_size for _, model in models]
        if any(v != v_tok for v in sizes):
            described = ", ".join(f"{v} ({name})" for v, (name, _) in zip(sizes, models))
            raise ValueError(
                f"tokenizer: policy, reference and tokenizer must share one vocabulary, got "
                f"vocab_size {described}, {v_tok} (tokenizer)"
            )
        self.policy, self.reference, self.tokenizer, self.config = policy, reference, tokenizer, config
        self.loss_fn = None if config.reference_free else DPOTrainer(config.beta, config.label_smoothing, config.loss_type)
        self.optimizer = AdamW(policy.parameters(), lr=config.lr, weight_decay=config.weight_decay)
        self.step = 0
        self.order: EpochOrder | None = None
        self.metadata: dict = {}

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
        block_size = self.policy.config.block_size
        if self.reference is not None:
            block_size = min(block_size, self.reference.config.block_size)
        return collate_preferences(list(prompts), list(chosen), list(rejected), self.tokenizer, block_size)

    def prepare(self, pairs) -> PreferenceDataset:
        """Tokenise ``pairs`` and compute the reference's log-probs, once, for all of them.

        Reference-free loss types run no reference: ``ref_logps`` is None.
        """
        rows = self.tokenize(pairs)
        data = PreferenceDataset(rows["input_ids"], rows["attention_mask"], rows["targets"],
                                 rows["loss_mask"], ref_logps=None)
        if not self.config.reference_free:
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
                self.config.averaged, targets=data.targets[sl, :t],
            )
            out.append(logps)
        return xp.concatenate(out)

    # ------------------------------------------------------------------ the loss

    def loss(self, logps, ref_chosen=None, ref_rejected=None):
        """The batch loss of the policy's log-probs, its gradient, and TRL-named metrics.

        logps: (2B,) the policy's log-probs (summed or averaged as ``config.averaged``),
            chosen rows first. ref_chosen, ref_rejected: (B,) the reference's,
            or None for reference-free losses.
        Returns (metrics dict of floats, d_logps (2B,) in the log-probs' dtype).
        """
        c = self.config
        xp = get_array_module(logps)
        b = logps.shape[0] // 2
        pi_c, pi_r = logps[:b], logps[b:]
        extra = {}
        if c.loss_type == "simpo":
            losses, d_c, d_r, rew_c, rew_r = simpo_loss(pi_c, pi_r, c.beta, c.simpo_gamma, c.label_smoothing)
        elif c.loss_type == "orpo":
            losses, d_c, d_r, parts = orpo_loss(pi_c, pi_r, c.beta)
            rew_c, rew_r = c.beta * pi_c, c.beta * pi_r  # as TRL's ORPOTrainer logs them
            extra = {key: float(value.mean()) for key, value in parts.items()}
        else:
            _, m, d_c, d_r = self.loss_fn.compute_loss(pi_c, pi_r, ref_chosen, ref_rejected)
            losses = None
            rew_c, rew_r = c.beta * (pi_c - ref_chosen), c.beta * (pi_r - ref_rejected)  # Eq. 5
        metrics = {
            "loss": float(losses.mean()) if losses is not None else m["loss"],
            "rewards/chosen": float(rew_c.mean()),
            "rewards/rejected": float(rew_r.mean()),
            "rewards/accuracies": float((rew_c > rew_r).mean()),
            "rewards/margins": float((rew_c - rew_r).mean()),
            "logps/chosen": float(pi_c.mean()),
            "logps/rejected": float(pi_r.mean()),
            **extra,
        }
        return metrics, xp.concatenate([d_c, d_r])

    # ------------------------------------------------------------------ steps

    def compute_gradients(self, batch) -> dict:
        """Zero the policy's gradients, then ONE forward and ONE backward over 2B rows.

        batch: from ``PreferenceDataset.batch``. Leaves d loss / d parameter in
        each ``Parameter.grad`` of the policy and returns the metrics (no
        optimiser step, no clipping). ``train_step`` is this plus the step.
        Raises NonFiniteLossError if a policy log-prob is not finite.
        """
        input_ids, attention_mask, targets, loss_mask, ref_c, ref_r = _check_batch(batch, self.config.reference_free)
        self.optimizer.zero_grad()
        logps, cache = policy_logps_forward(
            self.policy, input_ids, attention_mask, loss_mask, self.config.averaged, targets=targets
        )
        xp = get_array_module(logps)
        if not bool(xp.isfinite(logps).all()):
            host = to_numpy(logps)
            raise NonFiniteLossError(self.step + 1, "logps", float(host[~np.isfinite(host)][0]))
        metrics, d_logps = self.loss(logps, ref_c, ref_r)
        policy_logps_backward(d_logps, cache)
        return metrics

    def train_step(self, batch) -> dict:
        """One step on ``batch`` (from ``PreferenceDataset.batch``): gradients, clip, NaN guard, AdamW.

        Returns the TRL-named metrics of the batch, measured before the update,
        plus ``grad_norm`` (the global gradient norm before clipping). Raises
        NonFiniteLossError, before the update, if the loss or the norm is not finite.
        """
        metrics = self.compute_gradients(batch)
        # With no clipping asked for, an infinite threshold only measures the norm.
        limit = math.inf if self.config.grad_clip is None else self.config.grad_clip
        metrics["grad_norm"] = float(clip_grad_norm(self.optimizer.params, limit))
        check_finite_metrics(self.step + 1, metrics)  # a NaN never reaches the weights
        self.optimizer.step()
        self.step += 1
        return metrics

    def train(self, data, steps: int | None = None, progress: bool = True,
              callback: Callable[[int, dict], object] | None = None) -> dict:
        """Train on shuffled batches of ``data`` for ``steps`` steps (default: up to ``config.steps``).

        data: a ``PreferenceDataset`` from ``prepare`` (or pairs, prepared here).
        Batches follow an ``EpochOrder``: each pair once per epoch, a fresh
        permutation each epoch. callback: ``callback(step, metrics)`` after
        every step; returning True stops. Returns the history:
        {"step": [...], and one list per metric}.
        """
        if not isinstance(data, PreferenceDataset):
            data = self.prepare(data)
        self.order, steps = begin_epochs(self.order, data.n_pairs, self.config.batch_size, self.config.seed,
                                         self.config.steps, self.step, steps, callback)
        history: dict[str, list] = {"step": []}
        bar = Progress(total=steps, desc=self.config.loss_type if self.config.reference_free else "dpo",
                       enabled=progress)
        try:
            for _ in range(steps):
                metrics = self.train_step(data.batch(self.order.next()))
                history["step"].append(self.step)
                for key, value in metrics.items():
                    history.setdefault(key, []).append(value)
                bar.update(1, loss=metrics["loss"], acc=metrics["rewards/accuracies"])
                if callback is not None and callback(self.step, metrics) is True:
                    break
        finally:
            bar.close()
        return history

    def evaluate(self, dataset) -> dict:
        """The TRL-named metrics of the policy over a whole dataset (no gradients, no update).

        dataset: a ``PreferenceDataset`` or pairs (then ``prepare``d first,
        which runs the reference once over them, if the loss needs one).
        """
        if not isinstance(dataset, PreferenceDataset):
            dataset = self.prepare(dataset)
        logps = self._logps(self.policy, dataset)
        n = dataset.n_pairs
        ref = dataset.ref_logps
        metrics, _ = self.loss(logps, None if ref is None else ref[:n], None if ref is None else ref[n:])
        return metrics

    # ------------------------------------------------------------------ checkpoints

    def save(self, path: str | os.PathLike) -> None:
        """Write everything needed to continue exactly to ``path`` (one .npz, atomically).

        The policy, AdamW's state, the step, the data order, the config and a
        fingerprint of the reference's weights (the reference itself is the
        SFT checkpoint: give it again to ``resume``).
        """
        extra = {
            "dpo_config": dataclasses.asdict(self.config),
            "order": None if self.order is None else self.order.state(),
            "reference_fingerprint": None if self.reference is None else model_fingerprint(self.reference),
            "metadata": self.metadata,
        }
        save_checkpoint(path, self.policy, self.optimizer, tokenizer=self.tokenizer, step=self.step, extra=extra)

    @classmethod
    def resume(cls, path: str | os.PathLike, reference=None, policy=None, tokenizer=None,
               config: DPOConfig | None = None):
        """A trainer that continues exactly where ``save(path)`` stopped.

        reference: the same frozen reference as before (its fingerprint is
            checked); None for reference-free losses.
        policy: a TinyGPT to load into (default: built from the checkpoint's config).
        tokenizer: default the checkpoint's. config: default the checkpoint's
            DPOConfig (pass another, e.g. with more ``steps``, to train longer).
        """
        info = load_checkpoint(path)
        extra = info["extra"]
        where = os.fspath(path)
        if not isinstance(extra, dict) or "dpo_config" not in extra:
            raise ValueError(f"{where}: not a DPO checkpoint (no 'dpo_config' in its extra entry)")
        if policy is None:
            if info["config"] is None:
                raise ValueError(f"{where}: the checkpoint stores no model config; pass policy=")
            policy = TinyGPT(GPTConfig(**info["config"]))
        tokenizer = info["tokenizer"] if tokenizer is None else tokenizer
        if tokenizer is None:
            raise ValueError(f"{where}: the checkpoint stores no tokenizer; pass tokenizer=")
        config = DPOConfig(**extra["dpo_config"]) if config is None else config
        stored = extra.get("reference_fingerprint")
        if reference is not None and stored is not None and model_fingerprint(reference) != stored:
            raise ValueError(
                f"reference: its weights differ from those the run at {where} was trained against "
                "(fingerprints differ); resume with the same reference model"
            )
        trainer = cls(policy, reference, tokenizer, config)
        load_checkpoint(path, model=policy, optimizer=trainer.optimizer)
        trainer.step = info["step"]
        trainer.order = None if extra["order"] is None else EpochOrder.from_state(extra["order"])
        trainer.metadata = dict(extra.get("metadata") or {})
        return trainer

    def __repr__(self) -> str:
        return f"DPOLMTrainer(step={self.step}, config={self.config!r})"


def model_fingerprint(model) -> str:
    """SHA-256 of a model's parameter names, shapes, dtypes and bytes: equal weights, equal string."""
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        arr = np.ascontiguousarray(to_numpy(p.data))
        h.update(f"{name}:{arr.shape}:{arr.dtype};".encode())
        h.update(arr.tobytes())
    return h.hexdigest()


def _check_separate(policy, reference) -> None:
    """ValueError unless ``reference`` shares no Parameter and no array memory with ``policy``."""
    if policy is reference:
        raise ValueError(
            "reference: must be a separate, frozen model, got the policy itself "
            "(training would move the reference with it); pass a copy"
        )
    mine = list(policy.named_parameters())
    for ref_name, q in reference.named_parameters():
        for name, p in mine:
            if p is q:
                raise ValueError(
                    f"reference: its parameter {ref_name!r} is the policy's parameter {name!r} (the same "
                    "Parameter object): training would move the reference with the policy; pass a copy"
                )
            xp = get_array_module(p.data)
            if get_array_module(q.data) is xp and xp.shares_memory(p.data, q.data):
                raise ValueError(
                    f"reference: its parameter {ref_name!r} shares memory with the policy's {name!r}: "
                    "training would move the reference with the policy; pass a copy "
                    "(e.g. load_state_dict into a new TinyGPT)"
                )

# --------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------


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


_ROW_KEYS = ("input_ids", "attention_mask", "targets", "loss_mask")
_REF_KEYS = ("ref_chosen_logps", "ref_rejected_logps")


def _check_batch(batch, reference_free: bool):
    if not isinstance(batch, dict):
        raise TypeError(f"batch: expected a dict from PreferenceDataset.batch, got {type(batch).__name__}")
    keys = _ROW_KEYS if reference_free else _ROW_KEYS + _REF_KEYS
    missing = [k for k in keys if k not in batch]
    if missing:
        raise ValueError(f"batch: missing keys {missing} (expected {list(keys)})")
    input_ids, attention_mask, targets, loss_mask = (batch[k] for k in _ROW_KEYS)
    rows = getattr(input_ids, "shape", (None,))[0]
    if reference_free:
        if not isinstance(rows, int) or rows < 2 or rows % 2:
            raise ValueError(f"batch: input_ids must have 2B rows (chosen, then rejected), got shape "
                             f"{getattr(input_ids, 'shape', None)}")
        return input_ids, attention_mask, targets, loss_mask, None, None
    ref_c, ref_r = batch["ref_chosen_logps"], batch["ref_rejected_logps"]
    if getattr(ref_c, "ndim", 0) != 1 or tuple(ref_c.shape) != tuple(getattr(ref_r, "shape", ())):
        raise ValueError(
            f"batch: ref_chosen_logps and ref_rejected_logps must both be (B,), got shapes "
            f"{getattr(ref_c, 'shape', None)} and {getattr(ref_r, 'shape', None)}"
        )
    if rows != 2 * ref_c.shape[0]:
        raise ValueError(
            f"batch: input_ids must have 2B = {2 * ref_c.shape[0]} rows (chosen, then rejected) "
            f"for B = {ref_c.shape[0]} reference pairs, got shape {getattr(input_ids, 'shape', None)}"
        )
    return input_ids, attention_mask, targets, loss_mask, ref_c, ref_r
