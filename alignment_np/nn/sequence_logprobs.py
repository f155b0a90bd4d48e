"""The log-prob gatherer as a module: logits (B, T, V) -> log pi(y | x) per sequence (B,).

The kernels live one layer down, in ``functional/logprobs.py`` (the forward
gather, the backward scatter, the causal shift, the public checks of
``compute_log_probs``); this module wires them into the ``forward`` /
``backward`` interface of ``Module`` so that a training step can score the
chosen and the rejected responses and backpropagate each with its own cache.
Shapes use B batch, T time, V vocabulary.
"""

from __future__ import annotations

from ..backend import get_array_module
from ..checks import check_bool
from ..functional.logprobs import (
    check_log_prob_inputs,
    sequence_logprobs_backward,
    sequence_logprobs_forward,
    shift_for_causal_lm_backward,
)
from .module import Module

__all__ = ["SequenceLogProbs"]


class SequenceLogProbs(Module):
    """The log-prob gatherer as a module: ``forward`` then ``backward``.

    It holds no parameters and no state, so a model can call it on the chosen
    batch and on the rejected batch and backpropagate each with its own cache.

    average: length-normalise (divide by the number of counted tokens).
    shift: the logits come from a causal LM; score tokens[:, 1:] with logits[:, :-1]
        and return a (B, T, V) gradient whose last position is 0.
    """

    def __init__(self, average=False, *, shift=False):
        self.average = check_bool("average", average)
        self.shift = check_bool("shift", shift)

    def forward(self, logits, tokens, mask=None):
        """logits (B, T, V), tokens (B, T), mask (B, T) or None -> (seq_logps (B,), cache)."""
        logits, tokens, mask = check_log_prob_inputs(logits, tokens, mask, self.average, self.shift)
        seq_logps, cache = sequence_logprobs_forward(logits, tokens, mask, self.average)
        return seq_logps, {"seq_cache": cache, "shift": self.shift}

    def backward(self, grad_seq_logps, cache):
        """grad_seq_logps (B,) -> grad_logits (B, T, V) for the logits given to forward."""
        xp = get_array_module(grad_seq_logps)
        seq_cache = cache["seq_cache"]
        B = seq_cache["weights"].shape[0]
        grad_seq_logps = xp.asarray(grad_seq_logps)
        if tuple(grad_seq_logps.shape) != (B,):
            raise ValueError(
                f"grad_seq_logps must have shape (B,) = ({B},), got {tuple(grad_seq_logps.shape)}"
            )
        dlogits = sequence_logprobs_backward(grad_seq_logps, seq_cache)
        if cache["shift"]:
            dlogits = shift_for_causal_lm_backward(dlogits)
        return dlogits

    def __repr__(self) -> str:
        return f"SequenceLogProbs(average={self.average}, shift={self.shift})"
