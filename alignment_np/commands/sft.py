"""``sft``: supervised fine-tuning of a TinyGPT on the task's corpus, the first stage of a run.

    python -m alignment_np sft --run runs/sentiment
    python -m alignment_np sft --run runs/sentiment --resume           # after Ctrl-C: continue exactly
    python -m alignment_np sft --run runs/sentiment --resume --steps 2000   # train longer

It prints the unigram entropy of the corpus (the loss of a model that knows
only the character frequencies: the number to beat), the loss every
``--log-every`` steps, the final train and held-out losses and a few samples
on held-out prompts, and writes ``<run>/sft.npz``. The held-out lines are
drawn with another seed, minus any line that also occurs in the training set.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..checks import check_nonneg_int
from .common import add_run_arguments, add_stage_config, open_stage, say

HELP = "supervised fine-tuning of a TinyGPT on the task's corpus (the first stage of a run)"


@dataclass
class SFTStageConfig:
    """The ``sft`` stage: the corpus, the model's shape and the optimisation."""

    lines: int = 8000
    """Training lines drawn from the task's grammar (training prompts only)."""

    eval_lines: int = 400
    """Held-out lines (another seed; lines also in the training set removed) for the held-out loss."""

    seed: int = 0
    """Seeds the corpus, the initial weights and the data order."""

    d_model: int = 64
    """D: width of the residual stream."""

    n_layer: int = 2
    """Transformer blocks."""

    n_head: int = 4
    """Attention heads per block (must divide d_model)."""

    block_size: int = 96
    """The longest sequence the model reads, in characters with <bos> and <eos>."""

    steps: int = 3000
    """Optimiser steps in all (a resumed run may raise it to train longer). At 3,000 steps of 32 lines
    the default model's held-out samples at temperature 1 were 87% grammatical (a trial run)."""

    batch_size: int = 32
    """Lines per step."""

    lr: float = 3e-3
    """Peak learning rate (AdamW), after a linear warmup; cosine decay to lr / 10."""

    warmup_steps: int = 50
    """Steps of linear warmup."""

    weight_decay: float = 0.01
    """AdamW's decoupled weight decay on the matrices."""

    grad_clip: float = 1.0
    """Clip the global gradient norm to this value (0: never clip)."""

    def __post_init__(self):
        from ..checks import check_float, check_positive_int

        self.lines = check_positive_int("lines", self.lines)
        self.eval_lines = check_nonneg_int("eval_lines", self.eval_lines)
        self.seed = check_nonneg_int("seed", self.seed)
        for name in ("d_model", "n_layer", "n_head", "block_size", "steps", "batch_size"):
            setattr(self, name, check_positive_int(name, getattr(self, name)))
        if self.d_model % self.n_head:
            raise ValueError(f"n_head: must divide d_model={self.d_model}, got {self.n_head}")
        self.lr = check_float("lr", self.lr, 0, low_open=True)
        self.warmup_steps = check_nonneg_int("warmup_steps", self.warmup_steps)
        if self.warmup_steps > self.steps:
            raise ValueError(f"warmup_steps: expected <= steps={self.steps}, got {self.warmup_steps}")
        self.weight_decay = check_float("weight_decay", self.weight_decay, 0)
        self.grad_clip = check_float("grad_clip", self.grad_clip, 0)


def add_arguments(parser) -> None:
    add_run_arguments(parser)
    parser.add_argument("--task", default=None,
                        help="the task whose corpus to learn (default: the run's, or 'sentiment' for a new run)")
    parser.add_argument("--log-every", type=int, default=100, metavar="N", help="print the loss every N steps")
    parser.add_argument("--samples", type=int, default=3, metavar="N", help="samples to print at the end")
    add_stage_config(parser, SFTStageConfig)


def sft_trainer_config(c: SFTStageConfig, log_every: int):
    from ..trainers.sft import SFTConfig

    return SFTConfig(lr=c.lr, min_lr=c.lr / 10, warmup_steps=c.warmup_steps, steps=c.steps,
                     batch_size=c.batch_size, grad_clip=c.grad_clip or None, weight_decay=c.weight_decay,
                     seed=c.seed, log_every=log_every, eval_every=0)


def run(args) -> int:
    from ..data.corpus import unigram_entropy
    from ..data.tokenizer import CharTokenizer
    from ..nn.gpt import GPTConfig, TinyGPT
    from ..tasks import get_task
    from ..trainers.sft import SFTTrainer
    from .sampling import continue_prompts

    log_every = check_nonneg_int("--log-every", args.log_every)
    n_samples = check_nonneg_int("--samples", args.samples)
    stage = open_stage(args, "sft", SFTStageConfig)
    run_task = stage.run.task
    if args.task is not None and run_task is not None and args.task != run_task:
        raise ValueError(f"--task: the run at {stage.run.path} is for task {run_task!r}, got {args.task!r}")
    task = get_task(args.task or run_task or "sentiment")
    c = stage.config
    lines = task.corpus(c.lines, seed=c.seed)
    seen = set(lines)
    held_out = [line for line in task.corpus(c.eval_lines, seed=c.seed + 1) if line not in seen]
    log = 0 if stage.quiet else log_every
    if stage.resume:
        trainer = SFTTrainer.resume(stage.checkpoint)
        if trainer.step >= c.steps:
            say(f"stage sft of {stage.run.path} is complete (step {trainer.step} of {c.steps}); nothing to do "
                f"(--steps N trains longer)")
            return 0
        trainer.config = dataclasses.replace(trainer.config, steps=c.steps, log_every=log)
        say(f"resumed {stage.checkpoint} at step {trainer.step} of {c.steps}", stage.quiet)
    else:
        tokenizer = CharTokenizer.from_text(lines + held_out)
        model_config = GPTConfig(vocab_size=tokenizer.vocab_size, block_size=c.block_size, n_layer=c.n_layer,
                                 n_head=c.n_head, d_model=c.d_model)
        too_long = max(len(line) for line in lines) + 2  # <bos> line <eos>
        if too_long > c.block_size:
            raise ValueError(f"--block-size: the corpus has lines of {too_long} tokens with <bos> and <eos>, "
                             f"got --block-size {c.block_size}")
        trainer = SFTTrainer(TinyGPT(model_config, seed=c.seed), tokenizer, sft_trainer_config(c, log))
        trainer.metadata["task"] = task.name
    stage.run.set_task(task.name)
    model, tokenizer = trainer.model, trainer.tokenizer
    baseline = unigram_entropy(lines)
    say(f"task {task.name}: {len(lines)} training lines, {len(held_out)} held-out lines; model: "
        f"{model.num_parameters():,} parameters ({c.n_layer} layers, d_model {c.d_model}), "
        f"vocab {tokenizer.vocab_size}", stage.quiet)
    say(f"unigram entropy baseline: {baseline:.4f} nats/char (a model that ignores context)", stage.quiet)

    outcome = stage.train(trainer, lines, kind="policy")
    if outcome.status != "complete":
        return outcome.exit_code
    n_train = min(len(lines), max(len(held_out), 1))  # as many training lines as held-out ones
    train_loss = trainer.evaluate(lines[:n_train])
    held_loss = trainer.evaluate(held_out) if held_out else float("nan")
    stage.run.save_results("sft", {"train_loss": train_loss, "eval_loss": held_loss, "unigram_entropy": baseline,
                                   "parameters": model.num_parameters(), "steps": trainer.step,
                                   "seconds": stage.run.stage("sft")["seconds"]})
    say(f"done: {outcome.message}", stage.quiet)
    say(f"loss on {n_train} training lines {train_loss:.4f}, on {len(held_out)} held-out lines "
        f"{held_loss:.4f} nats/token (unigram entropy {baseline:.4f})", stage.quiet)
    if n_samples and not stage.quiet:
        prompts = task.prompts(n_samples, split="eval", seed=c.seed + 2)
        for prompt, completion in zip(prompts, continue_prompts(model, tokenizer, prompts, seed=c.seed)):
            say(f"  sample: {prompt}{completion}")
    return 0
