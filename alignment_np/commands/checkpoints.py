"""Loading a run's checkpoints for the commands (one place that knows the formats)."""

from __future__ import annotations

__all__ = ["load_policy"]


def load_policy(path):
    """(TinyGPT, CharTokenizer) from any stage's checkpoint that holds a language model.

    Every trainer's ``save`` stores the model's config and the tokenizer with
    the weights, so one loader serves sft.npz, dpo.npz, ppo.npz, ... A file
    that is missing, corrupt or not a model checkpoint raises an error naming it.
    """
    from ..trainers.sft import load_model

    return load_model(path)
