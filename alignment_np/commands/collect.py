"""``collect``: preference pairs from the SFT model's own samples, labelled by the task's rater.

    python -m alignment_np collect --run runs/sentiment

For each training prompt the SFT model (``<run>/sft.npz``) writes several
completions at temperature 1; the rater (VADER for the sentiment task) scores
prompt + completion; its best is *chosen*, its worst *rejected*
(``tasks/collect.py``). Writes ``<run>/preferences.jsonl`` (to train on) and
``<run>/preferences_heldout.jsonl`` (fresh samples of the same training
prompts, another seed: the reward model's and DPO's held-out pairs), in the
``{"prompt", "chosen", "rejected"}`` format with the scores as extra fields,
so that any trainer (or TRL) can read them.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

from ..checks import check_float, check_int, check_nonneg_int, check_positive_int
from .common import add_run_arguments, add_stage_config, open_stage, say

HELP = "sample pairs of completions from the SFT model and let the task's rater label them"

PAIRS = "preferences.jsonl"
HELDOUT_PAIRS = "preferences_heldout.jsonl"


@dataclass
class CollectStageConfig:
    """The ``collect`` stage: how many samples, and which pairs to keep."""

    prompts: int = 2048
    """Training prompts to sample for the training pairs (drawn from the task's training split)."""

    heldout_prompts: int = 256
    """Training-split prompts sampled afresh (another seed) for the held-out pairs."""

    samples_per_prompt: int = 4
    """Completions per prompt (K >= 2); the rater's best and worst of them make the pair."""

    min_gap: float = 0.05
    """Drop a pair whose two scores differ by less than this: a near tie is a coin flip, not a preference."""

    flip_rate: float = 0.0
    """Fraction of the training pairs whose labels are swapped on purpose (noisy-preference experiments)."""

    temperature: float = 1.0
    """Sampling temperature (1: the SFT model's own distribution)."""

    max_new_tokens: int = 0
    """Longest completion in tokens (0: the task's recommendation)."""

    batch_size: int = 256
    """Completions sampled per call of the model."""

    seed: int = 0
    """Seeds the prompts, the samples and the flips."""

    def __post_init__(self):
        self.prompts = check_positive_int("prompts", self.prompts)
        self.heldout_prompts = check_nonneg_int("heldout_prompts", self.heldout_prompts)
        self.samples_per_prompt = check_int("samples_per_prompt", self.samples_per_prompt, low=2)
        self.min_gap = check_float("min_gap", self.min_gap, 0)
        self.flip_rate = check_float("flip_rate", self.flip_rate, 0, 1)
        self.temperature = check_float("temperature", self.temperature, 0, low_open=True)
        self.max_new_tokens = check_nonneg_int("max_new_tokens", self.max_new_tokens)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        self.seed = check_nonneg_int("seed", self.seed)


def add_arguments(parser) -> None:
    add_run_arguments(parser, resumable=False)
    add_stage_config(parser, CollectStageConfig)


def run(args) -> int:
    from ..data.preferences import save_preferences
    from ..runs.report import write_report
    from ..tasks import get_task
    from ..tasks.collect import collect_preferences
    from .checkpoints import load_policy

    stage = open_stage(args, "collect", CollectStageConfig, inputs=("sft",), steps_field=None, checkpointed=False)
    c, folder = stage.config, stage.run
    task = get_task(folder.task)
    model, tokenizer = load_policy(folder.checkpoint("sft"))
    max_new = c.max_new_tokens or task.max_new_tokens
    common = dict(samples_per_prompt=c.samples_per_prompt, min_gap=c.min_gap, temperature=c.temperature,
                  max_new_tokens=max_new, batch_size=c.batch_size, progress=not stage.quiet)
    start = time.perf_counter()
    with stage.work_written_at_the_end():
        prompts = task.prompts(c.prompts, split="train", seed=c.seed)
        pairs, summary = collect_preferences(model, tokenizer, prompts, task.rate, flip_rate=c.flip_rate,
                                             seed=c.seed, **common)
        if not pairs:
            raise ValueError(f"no pair was kept out of {summary['prompts']} prompts ({summary}); "
                             "train SFT longer or lower --min-gap")
        heldout, heldout_summary = [], {"pairs": 0}
        if c.heldout_prompts:
            heldout_prompts = task.prompts(c.heldout_prompts, split="train", seed=c.seed + 1)
            heldout, heldout_summary = collect_preferences(model, tokenizer, heldout_prompts, task.rate,
                                                           seed=c.seed + 1, **common)
        save_preferences(pairs, folder.file(PAIRS))
        save_preferences(heldout, folder.file(HELDOUT_PAIRS))
    seconds = time.perf_counter() - start
    chosen = [p.meta["score_chosen"] for p in pairs]
    rejected = [p.meta["score_rejected"] for p in pairs]
    results = {**summary, "heldout_pairs": heldout_summary["pairs"], "samples_per_prompt": c.samples_per_prompt,
               "min_gap": c.min_gap, "flip_rate": c.flip_rate,
               "dropped_close": summary["dropped_gap"],
               "score_chosen_mean": sum(chosen) / len(chosen), "score_rejected_mean": sum(rejected) / len(rejected),
               "seconds": seconds}
    folder.save_results("collect", results)
    folder.finish("collect", "complete", summary["pairs"], seconds)
    write_report(folder, plots=False)
    say(f"collect: {summary['pairs']} pairs from {summary['prompts']} prompts x {c.samples_per_prompt} samples "
        f"({summary['dropped_gap']} too close, {summary['dropped_unfinished']} without two finished samples, "
        f"{summary['flipped']} flipped), {heldout_summary['pairs']} held-out pairs, in {seconds:.1f}s; "
        f"mean score chosen {results['score_chosen_mean']:.3f}, rejected {results['score_rejected_mean']:.3f}",
        stage.quiet)
    say(f"wrote {folder.file(PAIRS)} and {folder.file(HELDOUT_PAIRS)}", stage.quiet)
    return 0
