"""``grpo``: GRPO on the tiny GPT, a group of completions per prompt and no value model.

    python -m alignment_np grpo --run runs/sentiment
    python -m alignment_np grpo --run runs/sentiment --loss-type dr_grpo --name dr_grpo

Advantages normalised within each prompt's group, the clipped surrogate per
token, the k3 KL to the reference as a loss term (``trainers/grpo.py``); the
loss aggregation (``grpo``, ``dapo``, ``dr_grpo``) is an option. What the
stage shares with ``ppo`` and ``rloo`` is in ``commands/online.py``.
"""

from __future__ import annotations

from ..trainers.grpo import GRPOConfig
from . import online

HELP = "GRPO: group-normalised advantages, no value model, the KL as a loss term"

GRPOStageConfig = online.stage_config(GRPOConfig)


def add_arguments(parser) -> None:
    online.add_arguments(parser, "grpo", GRPOStageConfig)


def run(args) -> int:
    from ..trainers.grpo import GRPOTrainer

    return online.run(args, "grpo", GRPOStageConfig, GRPOConfig, GRPOTrainer)
