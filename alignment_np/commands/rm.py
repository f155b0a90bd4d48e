"""``rm``: a reward model on the transformer, trained on the collected pairs.

    python -m alignment_np rm --run runs/sentiment

The SFT model's trunk with a scalar head (``trainers/reward_lm.py``),
initialised from ``<run>/sft.npz``, trained with the Bradley-Terry loss on
``<run>/preferences.jsonl``, chosen and rejected in one forward of 2B rows.
Writes ``<run>/rm.npz`` and reports the held-out pairwise accuracy against the
rater's labels (``preferences_heldout.jsonl``, never trained on) with its
standard error. ``eval`` later adds the rank correlation of the reward
model's score with the rater's on held-out samples.
"""

from __future__ import annotations

from ..trainers.reward_lm import RewardLMConfig
from .common import add_run_arguments, add_stage_config, open_stage, say

HELP = "train a reward model (the SFT trunk with a scalar head) on the collected pairs"


def add_arguments(parser) -> None:
    add_run_arguments(parser)
    add_stage_config(parser, RewardLMConfig)


def run(args) -> int:
    from ..data.preferences import load_preferences
    from ..runs.report import pm, write_report
    from ..trainers.reward_lm import RewardLMTrainer
    from .checkpoints import load_policy
    from .collect import HELDOUT_PAIRS, PAIRS

    stage = open_stage(args, "rm", RewardLMConfig, inputs=("sft", "collect"))
    c, folder = stage.config, stage.run
    pairs = load_preferences(folder.file(PAIRS))
    heldout = load_preferences(folder.file(HELDOUT_PAIRS))
    if stage.resume:
        trainer = RewardLMTrainer.resume(stage.checkpoint, config=c)
    else:
        model, tokenizer = load_policy(folder.checkpoint("sft"))
        trainer = RewardLMTrainer(model, tokenizer, c)
    data = trainer.prepare(pairs)
    say(f"rm: {len(pairs)} training pairs, {len(heldout)} held-out pairs; "
        f"{trainer.model.num_parameters():,} parameters initialised from sft.npz", stage.quiet)
    outcome = stage.train(trainer, data, kind="reward_model")
    if outcome.status != "complete":
        return outcome.exit_code
    results = {"train": trainer.evaluate(data), "eval_pairs": len(heldout), "seconds": folder.stage("rm")["seconds"]}
    if heldout:
        held = trainer.evaluate(heldout)
        results.update({"eval_accuracy": held["accuracy"], "eval_accuracy_se": held["accuracy_se"],
                        "eval_loss": held["loss"], "eval_margin": held["margin"]})
    folder.save_results("rm", results)
    write_report(folder, plots=False)
    say(f"done: {outcome.message}", stage.quiet)
    if heldout:
        say(f"held-out pairwise accuracy {pm(results['eval_accuracy'], results['eval_accuracy_se'])} "
            f"(chance 0.5), loss {results['eval_loss']:.4f}", stage.quiet)
    return 0
