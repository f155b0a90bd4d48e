"""``eval``: every policy of the run on held-out prompts, judged by the task's rater, with error bars.

    python -m alignment_np eval --run runs/sentiment
    python -m alignment_np eval --run runs/sentiment --policies dpo,ppo

For each policy (the SFT model and every complete policy stage: dpo, ppo,
grpo, rloo, ... or those named by ``--policies``), ``tasks/evaluate.py``
samples completions at temperature 1 on the task's *held-out* prompts and
measures the rater's mean score, the fraction of grammatical completions,
the KL from the SFT model per sequence and the win rate against the SFT
model's completion for the same prompt, each with its standard error. The
SFT model's samples are the same for every policy (same seed), so every gain
is a paired difference on the same prompts. With a reward model in the run,
its score is compared with the rater's on the SFT model's held-out samples
(Spearman's rank correlation). Every sample goes to
``<run>/samples_<policy>.jsonl`` so that anyone can score them with another
rater. ``eval`` measures, it trains nothing: running it again replaces the
numbers of the policies it evaluates.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass

from ..checks import check_nonneg_int, check_positive_int
from .common import add_run_arguments, add_stage_config, open_stage, say

HELP = "evaluate the run's policies on held-out prompts: rater score, grammar, KL and win rate, with error bars"


@dataclass
class EvalStageConfig:
    """The ``eval`` stage: how many held-out samples, and how they are drawn."""

    samples: int = 512
    """Held-out completions per policy (balanced over the task's held-out prompts)."""

    batch_size: int = 128
    """Completions sampled per call of the model."""

    max_new_tokens: int = 0
    """Longest completion in tokens (0: the task's recommendation)."""

    seed: int = 1234
    """Seeds the prompts and the samples (the same for every policy, so gains are paired)."""

    examples: int = 6
    """Samples per policy shown in the report."""

    def __post_init__(self):
        self.samples = check_positive_int("samples", self.samples)
        self.batch_size = check_positive_int("batch_size", self.batch_size)
        self.max_new_tokens = check_nonneg_int("max_new_tokens", self.max_new_tokens)
        self.seed = check_nonneg_int("seed", self.seed)
        self.examples = check_nonneg_int("examples", self.examples)


def add_arguments(parser) -> None:
    add_run_arguments(parser, resumable=False)
    parser.add_argument("--policies", default=None, metavar="A,B",
                        help="the policy stages to evaluate (default: sft and every complete policy stage)")
    add_stage_config(parser, EvalStageConfig)


def policy_stages(folder) -> list[str]:
    """sft, then every complete stage that holds a policy, in run order."""
    return ["sft"] + [name for name, r in folder.stages().items()
                      if name != "sft" and r.get("kind") == "policy" and r.complete]


def run(args) -> int:
    from ..io import atomic_write
    from ..runs import RunFolder
    from ..runs.report import write_report
    from ..stats import spearman
    from ..tasks import get_task
    from ..tasks.evaluate import evaluate_policy
    from .checkpoints import load_policy

    args.force = True  # a measurement, not a user's training: running it again is always allowed
    folder = RunFolder(args.run)
    available = policy_stages(folder)
    wanted = available if args.policies is None else [p.strip() for p in args.policies.split(",") if p.strip()]
    for name in wanted:
        if name not in available:
            raise ValueError(f"--policies: {name!r} is not a complete policy stage of {folder.path} "
                             f"(those are {available})")
    rm_ready = folder.stage("rm") is not None and folder.stage("rm").complete and not folder.stale_inputs("rm")
    inputs = list(dict.fromkeys(["sft", *wanted] + (["rm"] if rm_ready else [])))
    stage = open_stage(args, "eval", EvalStageConfig, inputs=inputs, steps_field=None, checkpointed=False)
    c = stage.config
    task = get_task(folder.task)
    reference, tokenizer = load_policy(folder.checkpoint("sft"))
    prompts = task.prompts(c.samples, split="eval", seed=c.seed)
    max_new = c.max_new_tokens or task.max_new_tokens
    previous = folder.results().get("eval", {})
    same_setup = previous.get("config") == {k: v for k, v in vars(c).items() if k != "examples"}
    policies = dict(previous.get("policies", {})) if same_setup else {}
    examples = dict(previous.get("examples", {})) if same_setup else {}
    rm_vs_rater = previous.get("rm_vs_rater") if same_setup else None
    stages = folder.stages()
    start = time.perf_counter()
    with stage.work_written_at_the_end() as state:
        for name in wanted:
            model = reference if name == "sft" else load_policy(folder.checkpoint(name))[0]
            say(f"eval: {name} on {c.samples} held-out prompts", stage.quiet)
            r = evaluate_policy(model, None if name == "sft" else reference, tokenizer, prompts, task.rate,
                                lambda text: task.is_grammatical(text, ""), seed=c.seed,
                                max_new_tokens=max_new, batch_size=c.batch_size, progress=not stage.quiet)
            samples = r.pop("samples")
            policies[name] = {**r, "gain": r["score_diff"], "gain_se": r["score_diff_se"],
                              "stage_id": stages[name]["id"]}
            if name == "sft":  # against itself: no KL, and a win rate that is only a baseline
                policies[name].update(gain=None, gain_se=None)
            examples[name] = [{k: s[k] for k in ("prompt", "completion", "score", "grammatical")}
                              for s in samples[: c.examples]]
            text = "".join(json.dumps(s, ensure_ascii=False) + "\n" for s in samples)
            atomic_write(folder.file(f"samples_{name}.jsonl"), lambda f, t=text: f.write(t.encode("utf-8")))
            if name == "sft" and "rm" in inputs:
                from ..trainers.reward_lm import RewardLMTrainer

                rm = RewardLMTrainer.resume(folder.checkpoint("rm"))
                # Completions that ended, written in the model's characters only: a special token
                # sampled mid-completion is written out ("<pad>") and has no faithful encoding.
                alphabet = set(tokenizer.chars)
                scored = [s for s in samples if s["finished"] and set(s["completion"]) <= alphabet]
                rm_scores = rm.score([s["prompt"] for s in scored], [s["completion"] for s in scored])
                rater = [s["score"] for s in scored]
                rm_vs_rater = {"rm": rm_scores.tolist(), "rater": rater, "n": len(rater),
                               "spearman": spearman(rm_scores, rater)}
            state["step"] += 1
        order = [n for n in available if n in policies]
        results = {"config": {k: v for k, v in vars(c).items() if k != "examples"}, "reference": "sft",
                   "samples": c.samples, "policies": {n: policies[n] for n in order},
                   "examples": {n: examples[n] for n in order if n in examples}, "rm_vs_rater": rm_vs_rater}
        folder.save_results("eval", results)
    folder.finish("eval", "complete", len(wanted), time.perf_counter() - start)
    path = write_report(folder)
    for name in wanted:
        p = policies[name]
        gain = "" if p["gain"] is None else f", gain {p['gain']:+.3f} ± {p['gain_se']:.3f}"
        say(f"  {name:8s} score {p['score']:+.3f} ± {p['score_se']:.3f}{gain}, grammatical "
            f"{p['grammatical']:.3f}, KL {p['kl']:.2f} ± {p['kl_se']:.2f}", stage.quiet)
    if rm_vs_rater:
        say(f"  reward model vs rater on {rm_vs_rater['n']} held-out SFT samples: Spearman "
            f"{rm_vs_rater['spearman']:.3f}", stage.quiet)
    say(f"report: {path}", stage.quiet)
    return 0
