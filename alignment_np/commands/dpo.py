"""``dpo``: the DPO family on the language model, offline, on the collected pairs.

    python -m alignment_np dpo --run runs/sentiment
    python -m alignment_np dpo --run runs/sentiment --loss-type ipo --name dpo_ipo
    python -m alignment_np dpo --run runs/sentiment --loss-type simpo --beta 2 --name simpo

The policy starts as a copy of the SFT model, which is also the frozen
reference (``trainers/dpo_lm.py``; reference-free losses, SimPO and ORPO,
never run it). Trains on ``<run>/preferences.jsonl`` and writes
``<run>/<name>.npz`` (default ``dpo.npz``), with the TRL-named metrics of the
held-out pairs (``preferences_heldout.jsonl``) in the report.
"""

from __future__ import annotations

import re

from ..trainers.dpo_lm import DPOConfig
from .common import add_run_arguments, add_stage_config, open_stage, say

HELP = "train the policy with DPO (or IPO, hinge, robust, SimPO, ORPO) on the collected pairs"

RESERVED = ("sft", "collect", "rm", "eval", "ppo", "grpo", "rloo", "bon", "config", "metrics", "results", "report")


def check_stage_name(name: str, default: str) -> str:
    """A name for a policy stage's checkpoint: lower-case letters, digits, _ and -, not another stage's."""
    if not isinstance(name, str) or not re.fullmatch(r"[a-z][a-z0-9_-]{0,40}", name):
        raise ValueError(f"--name: expected lower-case letters, digits, '_' or '-' (a file name), got {name!r}")
    if name != default and name in RESERVED:
        raise ValueError(f"--name: {name!r} is another stage's name; choose another")
    return name


def add_arguments(parser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--name", default="dpo",
                        help="the stage's name in the run: its checkpoint is <name>.npz (default %(default)s)")
    add_stage_config(parser, DPOConfig, section="dpo")


def run(args) -> int:
    from ..data.preferences import load_preferences
    from ..runs.report import write_report
    from ..trainers.dpo_lm import DPOLMTrainer
    from .checkpoints import load_policy
    from .collect import HELDOUT_PAIRS, PAIRS

    name = check_stage_name(args.name, "dpo")
    stage = open_stage(args, name, DPOConfig, inputs=("sft", "collect"), config_section="dpo")
    c, folder = stage.config, stage.run
    pairs = load_preferences(folder.file(PAIRS))
    heldout = load_preferences(folder.file(HELDOUT_PAIRS))
    reference = None if c.reference_free else load_policy(folder.checkpoint("sft"))[0]
    if stage.resume:
        trainer = DPOLMTrainer.resume(stage.checkpoint, reference=reference, config=c)
    else:
        policy, tokenizer = load_policy(folder.checkpoint("sft"))  # a separate copy: the policy moves
        trainer = DPOLMTrainer(policy, reference, tokenizer, c)
    say(f"{name}: loss {c.loss_type}, beta {c.beta}, {len(pairs)} training pairs, {len(heldout)} held-out; "
        "reference log-probs computed once" + (" (reference-free: none)" if c.reference_free else ""), stage.quiet)
    data = trainer.prepare(pairs)
    outcome = stage.train(trainer, data, kind="policy")
    if outcome.status != "complete":
        return outcome.exit_code
    results = {"kind": "offline", "loss_type": c.loss_type, "beta": c.beta, "train_pairs": len(pairs),
               "eval_pairs": len(heldout), "seconds": folder.stage(name)["seconds"]}
    if heldout:
        results.update(trainer.evaluate(trainer.prepare(heldout)))
    folder.save_results(name, results)
    write_report(folder, plots=False)
    say(f"done: {outcome.message}", stage.quiet)
    if heldout:
        say(f"held-out pairs: loss {results['loss']:.4f}, rewards/accuracies {results['rewards/accuracies']:.3f}, "
            f"rewards/margins {results['rewards/margins']:.3f}", stage.quiet)
    return 0
