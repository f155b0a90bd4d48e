"""Training a reward model on preference pairs with the Bradley-Terry loss.

One step, as in InstructGPT's reward-model training (Ouyang et al. 2022, Sec. 3.5):

    x = concat(x_chosen[batch], x_rejected[batch])      (2B, D)  one forward for both
    r, cache = model.score(x)                            (2B, 1)
    loss, g_c, g_r = reward_model_loss(r[:B], r[B:])     Bradley-Terry, Eq. 1
    optimizer.zero_grad()
    model.backward(concat(g_c, g_r), cache)              parameter grads accumulate
    optimizer.step()

Chosen and rejected travel together as one batch: one GEMM per layer instead
of two, and one cache, so there is no way to backpropagate the rejected half
through the chosen half's activations.

The metrics follow TRL's reward trainer: ``loss``, ``accuracy`` (fraction of
pairs with r_c > r_r) and ``margin`` (mean r_c - r_r).

Non-finite numbers: features with a NaN or an infinity are refused at the
start (ValueError naming ``x_chosen`` / ``x_rejected`` and the index). A model
that diverges during training (a non-finite reward or loss) stops the loop
with ``NonFiniteLossError`` naming the step, BEFORE that step's update, so the
model keeps the parameters of the last good step.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np

from ..backend import get_array_module, to_numpy
from ..checks import (
    NonFiniteLossError,
    check_bool,
    check_finite_array,
    check_finite_metrics,
    check_nonneg_int,
    check_positive_int,
)
from ..losses.bradley_terry import reward_accuracy, reward_model_loss

__all__ = ["train_reward_model", "evaluate_reward_model"]


def _check_pairs(x_chosen, x_rejected, names=("x_chosen", "x_rejected")) -> int:
    for name, x in zip(names, (x_chosen, x_rejected)):
        if not hasattr(x, "shape") or not hasattr(x, "ndim"):
            raise TypeError(f"{name}: expected an array of shape (N, D), got {type(x).__name__}")
        if getattr(x, "dtype", None) is None or x.dtype.kind != "f":
            raise TypeError(f"{name}: expected a floating-point array, got dtype {getattr(x, 'dtype', None)}")
        if x.ndim != 2:
            raise ValueError(f"{name}: expected shape (N, D), got {tuple(x.shape)}")
    if tuple(x_chosen.shape) != tuple(x_rejected.shape):
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape (N, D), one row each per pair; "
            f"got {tuple(x_chosen.shape)} and {tuple(x_rejected.shape)}"
        )
    if get_array_module(x_chosen) is not get_array_module(x_rejected):
        raise TypeError(f"{names[0]} and {names[1]} must live on the same device (both NumPy or both CuPy)")
    if x_chosen.shape[0] == 0:
        raise ValueError(f"{names[0]}: expected at least one pair, got N = 0")
    for name, x in zip(names, (x_chosen, x_rejected)):
        check_finite_array(name, x)
    return x_chosen.shape[0]


def _check_finite_rewards(step: int, r) -> None:
    """NonFiniteLossError for step ``step`` if the model's rewards hold a NaN or an infinity."""
    if not bool(get_array_module(r).isfinite(r).all()):
        bad = to_numpy(r)[~np.isfinite(to_numpy(r))]
        raise NonFiniteLossError(step, "reward", float(bad[0]))


def _check_model(model) -> None:
    for attr in ("score", "backward", "parameters"):
        if not callable(getattr(model, attr, None)):
            raise TypeError(
                f"model: expected a reward model with score(x) -> (r, cache), backward(grad, cache) "
                f"and parameters() (e.g. RewardModel); {type(model).__name__} has no {attr}()"
            )


def _score_pairs(model, x_chosen, x_rejected, batch_size):
    """Rewards (N, 1) for both halves, scored in concatenated chunks, keeping nothing for backward."""
    xp = get_array_module(x_chosen)
    N = x_chosen.shape[0]
    step = N if batch_size is None else batch_size
    r_c, r_r = [], []
    for start in range(0, N, step):
        stop = min(start + step, N)
        r, _ = model.score(xp.concatenate([x_chosen[start:stop], x_rejected[start:stop]]))
        r_c.append(r[: stop - start])
        r_r.append(r[stop - start :])
    return xp.concatenate(r_c), xp.concatenate(r_r)


def evaluate_reward_model(model, x_chosen, x_rejected, batch_size: int | None = None, margin=None) -> dict:
    """Loss, accuracy and mean margin of ``model`` on pairs, without touching gradients.

    model: a RewardModel (anything with ``score(x) -> (r, cache)``).
    x_chosen, x_rejected: (N, D) features of the chosen / rejected responses.
    batch_size: score at most this many pairs per forward (None: all at once).
    margin: optional Llama 2 margin for the loss (scalar or (N,)).

    Returns {'loss': float, 'accuracy': float, 'margin': float} where margin
    is mean(r_c - r_r) (a different thing from the loss's ``margin`` argument).
    """
    _check_model(model)
    _check_pairs(x_chosen, x_rejected)
    if batch_size is not None:
        batch_size = check_positive_int("batch_size", batch_size)
    r_c, r_r = _score_pairs(model, x_chosen, x_rejected, batch_size)
    # A model whose rewards are not finite has no loss or accuracy to report: say which half.
    check_finite_array("model(x_chosen)", r_c)
    check_finite_array("model(x_rejected)", r_r)
    loss, _, _ = reward_model_loss(r_c, r_r, margin=margin)
    return {
        "loss": loss,
        "accuracy": reward_accuracy(r_c, r_r),
        "margin": float((r_c - r_r).mean()),
    }


def train_reward_model(
    model,
    x_chosen,
    x_rejected,
    epochs: int,
    batch_size: int,
    optimizer,
    seed: int = 0,
    *,
    loss_margin=None,
    eval_data: tuple | None = None,
    verbose: bool = False,
) -> dict:
    """Minibatch training of ``model`` with the Bradley-Terry loss.

    model: a RewardModel (``score``, ``backward(grad, cache)``, ``parameters()``).
    x_chosen, x_rejected: (N, D) features; row i of each form pair i.
    epochs: passes over the data. batch_size: pairs per step (B; the
        forward sees 2B rows). The last batch of an epoch may be smaller.
    optimizer: any object with ``zero_grad()`` and ``step()`` over
        ``model.parameters()`` (e.g. ``alignment_np.optim.AdamW``).
    seed: seeds the shuffling of pairs each epoch.
    loss_margin: optional Llama 2 margin (Touvron et al. 2023, Eq. 2): a
        scalar, or an (N,) array with one margin per pair.
    eval_data: optional (x_chosen_eval, x_rejected_eval), evaluated after
        every epoch.
    verbose: print one line of metrics per epoch.

    Returns the history: a dict of per-epoch lists. 'loss', 'accuracy',
    'margin' are averaged over the epoch's pairs, measured on each batch
    before its update (as training logs usually are); with ``eval_data`` also
    'eval_loss', 'eval_accuracy', 'eval_margin' after the epoch.

    Raises ``NonFiniteLossError`` (step, name, value) if a batch's rewards or
    loss are not finite, before that batch's optimiser step.
    """
    _check_model(model)
    N = _check_pairs(x_chosen, x_rejected)
    epochs = check_positive_int("epochs", epochs)
    batch_size = check_positive_int("batch_size", batch_size)
    seed = check_nonneg_int("seed", seed)
    verbose = check_bool("verbose", verbose)
    for attr in ("zero_grad", "step"):
        if not callable(getattr(optimizer, attr, None)):
            raise TypeError(
                f"optimizer: expected an object with zero_grad() and step() (e.g. alignment_np.optim.AdamW), "
                f"{type(optimizer).__name__} has no {attr}()"
            )
    if loss_margin is not None and not (isinstance(loss_margin, Real) and not isinstance(loss_margin, bool)):
        if getattr(loss_margin, "shape", None) != (N,):
            raise ValueError(
                f"loss_margin: expected a number or an array of shape ({N},), one margin per pair, "
                f"got {getattr(loss_margin, 'shape', type(loss_margin).__name__)}"
            )
        if getattr(loss_margin, "dtype", None) is None or loss_margin.dtype.kind not in "fiu":
            raise TypeError(f"loss_margin: expected a float array, got dtype {loss_margin.dtype}")
        check_finite_array("loss_margin", loss_margin)
    elif loss_margin is not None and not math.isfinite(float(loss_margin)):
        raise ValueError(f"loss_margin: expected a finite number, got {loss_margin!r}")
    if eval_data is not None:
        if not (isinstance(eval_data, (tuple, list)) and len(eval_data) == 2):
            raise TypeError("eval_data: expected a pair (x_chosen_eval, x_rejected_eval)")
        _check_pairs(*eval_data, names=("eval_data[0]", "eval_data[1]"))

    xp = get_array_module(x_chosen)
    rng = np.random.default_rng(seed)
    history: dict[str, list] = {"epoch": [], "loss": [], "accuracy": [], "margin": []}
    if eval_data is not None:
        history.update({"eval_loss": [], "eval_accuracy": [], "eval_margin": []})

    step = 0  # optimiser steps taken, for NonFiniteLossError
    for epoch in range(1, epochs + 1):
        # Shuffle on the host (cheap), then move the indices to the data's device.
        order = xp.asarray(rng.permutation(N))
        total_loss = total_correct = total_margin = 0.0
        for start in range(0, N, batch_size):
            idx = order[start : start + batch_size]
            B = int(idx.shape[0])
            x = xp.concatenate([x_chosen[idx], x_rejected[idx]])  # (2B, D)
            r, cache = model.score(x)  # (2B, 1)
            step += 1
            _check_finite_rewards(step, r)  # a diverged model stops here, before its update
            r_c, r_r = r[:B], r[B:]
            m = loss_margin if loss_margin is None or isinstance(loss_margin, Real) else loss_margin[idx]
            loss, g_c, g_r = reward_model_loss(r_c, r_r, margin=m)
            check_finite_metrics(step, {"loss": loss})  # e.g. rewards 3e38 apart: loss inf

            optimizer.zero_grad()
            model.backward(xp.concatenate([g_c, g_r]), cache)
            optimizer.step()

            total_loss += loss * B
            total_correct += reward_accuracy(r_c, r_r) * B
            total_margin += float((r_c - r_r).sum())

        history["epoch"].append(epoch)
        history["loss"].append(total_loss / N)
        history["accuracy"].append(total_correct / N)
        history["margin"].append(total_margin / N)
        line = f"epoch {epoch:3d}  loss {total_loss / N:.4f}  accuracy {total_correct / N:.3f}  margin {total_margin / N:+.3f}"
        if eval_data is not None:
            metrics = evaluate_reward_model(model, *eval_data)
            for key, value in metrics.items():
                history[f"eval_{key}"].append(value)
            line += f"  | eval loss {metrics['loss']:.4f}  accuracy {metrics['accuracy']:.3f}"
        if verbose:
            print(line)
    return history
