"""``ppo``: PPO for RLHF on the tiny GPT, against the run's reward model (or the rater).

    python -m alignment_np ppo --run runs/sentiment
    python -m alignment_np ppo --run runs/sentiment --adaptive-kl --kl-target 6 --name ppo_adaptive

Per-token reward -kl_coef * KL estimate plus the score at the last token, GAE
over the response, several epochs of clipped-surrogate minibatches, a
separate value model started from the reward model (``trainers/ppo.py``).
What the stage shares with ``grpo`` and ``rloo`` is in ``commands/online.py``.
"""

from __future__ import annotations

from ..trainers.ppo import PPOConfig
from . import online

HELP = "PPO for RLHF: the policy against the reward model, a value model, per-token KL penalty, GAE"

PPOStageConfig = online.stage_config(PPOConfig)


def add_arguments(parser) -> None:
    online.add_arguments(parser, "ppo", PPOStageConfig)


def run(args) -> int:
    from ..trainers.ppo import PPOTrainer

    return online.run(args, "ppo", PPOStageConfig, PPOConfig, PPOTrainer)
