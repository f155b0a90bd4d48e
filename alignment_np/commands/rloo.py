"""``rloo``: RLOO on the tiny GPT, REINFORCE with a leave-one-out baseline.

    python -m alignment_np rloo --run runs/sentiment

k completions per prompt; each one's baseline is the mean reward of the other
k - 1; REINFORCE on the sequence log-prob with the KL in the reward
(``trainers/rloo.py``). What the stage shares with ``ppo`` and ``grpo`` is in
``commands/online.py``.
"""

from __future__ import annotations

from ..trainers.rloo import RLOOConfig
from . import online

HELP = "RLOO: REINFORCE with the leave-one-out baseline of k completions per prompt"

RLOOStageConfig = online.stage_config(RLOOConfig)


def add_arguments(parser) -> None:
    online.add_arguments(parser, "rloo", RLOOStageConfig)


def run(args) -> int:
    from ..trainers.rloo import RLOOTrainer

    return online.run(args, "rloo", RLOOStageConfig, RLOOConfig, RLOOTrainer)
