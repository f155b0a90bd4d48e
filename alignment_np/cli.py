"""The command line: ``python -m alignment_np`` (or ``alignment-np``).

Two commands train and use the tiny GPT of the course on the review corpus
that the repo generates (``alignment_np.data.corpus``)::

    python -m alignment_np sft --steps 1000 --out runs/sft.npz
    python -m alignment_np sample --ckpt runs/sft.npz --prompt "the film was"

``sft`` prints the unigram entropy of the corpus (the loss of a model that
knows only the character frequencies: the number to beat), the loss every
``--log-every`` steps, the final train and held-out losses, and a few
samples; it writes one checkpoint (``SFTTrainer.save``). Ctrl-C stops at the
end of the current step and saves, and ``--resume`` continues from the
checkpoint exactly as if nothing had happened (with more ``--steps`` the
schedule is stretched from there on). On ``--resume`` the model, the
hyper-parameters and the corpus (``--lines``, ``--eval-lines``, ``--seed``,
stored in the checkpoint) come from the checkpoint; giving a different corpus
flag is an error. The held-out lines are drawn with another seed, minus any
line that also occurs in the training set.

``sample`` loads a checkpoint and continues one or more prompts.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import signal
import sys
import time

from .backend import BACKENDS, set_backend, to_numpy

__all__ = ["main", "build_parser"]

# The default model: small enough to train in a few minutes on 2 CPU cores,
# big enough to learn the corpus's words and grammar (~100k parameters).
CORPUS_DEFAULTS = dict(lines=4000, eval_lines=400, seed=0)
DEFAULTS = dict(
    steps=1000,
    batch_size=32,
    lr=3e-3,
    warmup_steps=50,
    d_model=64,
    n_layer=2,
    n_head=4,
    block_size=64,
    log_every=100,
    samples=3,
    temperature=0.8,
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="alignment-np",
        description="alignment_np: train and sample the course's tiny GPT (NumPy only).",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="{sft,sample}")

    sft = sub.add_parser("sft", help="supervised fine-tuning of a TinyGPT on the generated review corpus")
    sft.add_argument("--steps", type=int, default=DEFAULTS["steps"], help="total optimizer steps (default %(default)s)")
    sft.add_argument("--out", default="runs/sft.npz", help="checkpoint to write (default %(default)s)")
    sft.add_argument("--resume", action="store_true", help="continue from the checkpoint at --out")
    sft.add_argument("--seed", type=int, default=None,
                     help="seeds the corpus, the weights and the data order (default 0; on --resume the checkpoint's)")
    sft.add_argument("--backend", choices=BACKENDS, default="numpy", help="array backend (default %(default)s)")
    sft.add_argument("--lines", type=int, default=None,
                     help=f"training lines to generate (default {CORPUS_DEFAULTS['lines']})")
    sft.add_argument("--eval-lines", type=int, default=None,
                     help=f"held-out lines to draw (default {CORPUS_DEFAULTS['eval_lines']})")
    sft.add_argument("--batch-size", type=int, default=DEFAULTS["batch_size"])
    sft.add_argument("--lr", type=float, default=DEFAULTS["lr"], help="peak learning rate")
    sft.add_argument("--warmup-steps", type=int, default=DEFAULTS["warmup_steps"])
    sft.add_argument("--d-model", type=int, default=DEFAULTS["d_model"])
    sft.add_argument("--n-layer", type=int, default=DEFAULTS["n_layer"])
    sft.add_argument("--n-head", type=int, default=DEFAULTS["n_head"])
    sft.add_argument("--block-size", type=int, default=DEFAULTS["block_size"])
    sft.add_argument("--log-every", type=int, default=DEFAULTS["log_every"], help="print the loss every N steps")
    sft.add_argument("--save-every", type=int, default=0, help="also save every N steps (0: only at the end)")
    sft.add_argument("--samples", type=int, default=DEFAULTS["samples"], help="samples to print at the end")
    sft.add_argument("--quiet", action="store_true", help="no progress bar and no per-step loss lines")

    sample = sub.add_parser("sample", help="continue prompts with a trained checkpoint")
    sample.add_argument("--ckpt", required=True, help="checkpoint written by `sft`")
    sample.add_argument("--prompt", action="append", help="a prompt (repeat for several; default: three corpus prompts)")
    sample.add_argument("--num-samples", type=int, default=1, help="samples per prompt")
    sample.add_argument("--max-new-tokens", type=int, default=48)
    sample.add_argument("--temperature", type=float, default=DEFAULTS["temperature"], help="0 = greedy")
    sample.add_argument("--top-k", type=int, default=None)
    sample.add_argument("--seed", type=int, default=0)
    sample.add_argument("--backend", choices=BACKENDS, default="numpy")
    return parser


def main(argv=None) -> int:
    """Run the command line; returns the exit status (0 ok, 1 error, 130 interrupted)."""
    args = build_parser().parse_args(argv)
    try:
        set_backend(args.backend)
        if args.command == "sft":
            return _sft(args)
        return _sample(args)
    except (ValueError, TypeError, FileNotFoundError, RuntimeError) as err:
        print(f"alignment-np {args.command}: error: {err}", file=sys.stderr)
        return 1


# --------------------------------------------------------------------------- sft
def _sft(args) -> int:
    from .data.corpus import generate_corpus, generate_prompts, unigram_entropy
    from .data.tokenizer import CharTokenizer
    from .nn.gpt import GPTConfig, TinyGPT
    from .trainers.sft import SFTConfig, SFTTrainer

    corpus = {"lines": args.lines, "eval_lines": args.eval_lines, "seed": args.seed}  # None: not given
    if args.resume:
        if not os.path.isfile(args.out):
            raise FileNotFoundError(f"--resume: no checkpoint at {args.out!r} to resume from")
        trainer = SFTTrainer.resume(args.out)
        stored = trainer.metadata.get("corpus", {})
        for key, value in corpus.items():  # the same corpus, or the data order means nothing
            if value is not None and key in stored and value != stored[key]:
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{flag}: the checkpoint was trained with {flag} {stored[key]}, got {value}")
        corpus = {key: stored.get(key, CORPUS_DEFAULTS[key]) for key in corpus}
        if args.steps > trainer.config.steps:  # train longer: stretch the schedule from here on
            trainer.config = dataclasses.replace(trainer.config, steps=args.steps)
        print(f"resumed {args.out} at step {trainer.step} of {trainer.config.steps}")
    else:
        corpus = {key: CORPUS_DEFAULTS[key] if value is None else value for key, value in corpus.items()}
    lines = generate_corpus(corpus["lines"], seed=corpus["seed"])
    seen = set(lines)
    held_out = [line for line in generate_corpus(corpus["eval_lines"], seed=corpus["seed"] + 1) if line not in seen]
    if not args.resume:
        tokenizer = CharTokenizer.from_text(lines + held_out)
        config = GPTConfig(
            vocab_size=tokenizer.vocab_size,
            block_size=args.block_size,
            n_layer=args.n_layer,
            n_head=args.n_head,
            d_model=args.d_model,
        )
        model = TinyGPT(config, seed=corpus["seed"])
        sft_config = SFTConfig(
            lr=args.lr,
            min_lr=args.lr / 10,
            warmup_steps=min(args.warmup_steps, args.steps),
            steps=args.steps,
            batch_size=args.batch_size,
            seed=corpus["seed"],
            log_every=args.log_every,
            eval_every=0,
        )
        trainer = SFTTrainer(model, tokenizer, sft_config)
        trainer.metadata["corpus"] = corpus
    model, tokenizer = trainer.model, trainer.tokenizer
    baseline = unigram_entropy(lines)
    print(
        f"corpus: {len(lines)} training lines, {len(held_out)} held-out lines; "
        f"model: {model.num_parameters():,} parameters ({model.config.n_layer} layers, "
        f"d_model {model.config.d_model}), vocab {tokenizer.vocab_size}"
    )
    print(f"unigram entropy baseline: {baseline:.4f} nats/char (a model that ignores context)")

    stop = {"requested": False}

    def on_sigint(signum, frame):  # finish the current step, then save
        stop["requested"] = True

    def callback(step, metrics):
        if args.save_every and step % args.save_every == 0:
            trainer.save(args.out)
        return stop["requested"]

    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    previous = signal.signal(signal.SIGINT, on_sigint) if _main_thread() else None
    start = time.perf_counter()
    try:
        trainer.config = dataclasses.replace(trainer.config, log_every=0 if args.quiet else args.log_every)
        trainer.train(lines, steps=max(args.steps - trainer.step, 0), progress=not args.quiet, callback=callback)
    finally:
        if previous is not None:
            signal.signal(signal.SIGINT, previous)
    elapsed = time.perf_counter() - start
    trainer.save(args.out)
    if stop["requested"]:
        print(f"interrupted at step {trainer.step}; saved {args.out} (continue with --resume)")
        return 130

    n_train = min(len(lines), max(len(held_out), 1))  # as many training lines as held-out ones
    train_loss = trainer.evaluate(lines[:n_train])
    held_loss = trainer.evaluate(held_out) if held_out else float("nan")
    print(
        f"done: step {trainer.step} in {elapsed:.1f}s; loss on {n_train} training lines {train_loss:.4f}, "
        f"on {len(held_out)} held-out lines {held_loss:.4f} nats/token vs unigram entropy {baseline:.4f} nats/char"
    )
    print(f"saved {args.out}")
    if args.samples > 0:
        prompts = generate_prompts(args.samples, seed=corpus["seed"] + 2)
        for text in _continue(model, tokenizer, prompts, DEFAULTS["temperature"], None, corpus["seed"], 48):
            print(f"  sample: {text}")
    return 0


def _main_thread() -> bool:
    import threading

    return threading.current_thread() is threading.main_thread()


# --------------------------------------------------------------------------- sample
def _continue(model, tokenizer, prompts, temperature, top_k, seed, max_new_tokens):
    """The prompts, each followed by its sampled continuation (up to eos)."""
    from .rl.generate import generate

    ids, mask = tokenizer.encode_batch(prompts, add_bos=True, padding_side="left")
    room = model.config.block_size - ids.shape[1]
    if room < 1:
        raise ValueError(
            f"--prompt: the longest prompt is {ids.shape[1]} tokens with bos, no room left in "
            f"block_size={model.config.block_size}"
        )
    out = generate(
        model,
        ids,
        min(max_new_tokens, room),
        temperature=temperature,
        top_k=top_k,
        seed=seed,
        attention_mask=mask,
        eos_id=tokenizer.eos_id,
        pad_id=tokenizer.pad_id,
    )
    new = to_numpy(out["new_tokens"])
    return [prompt + tokenizer.decode(row) for prompt, row in zip(prompts, new)]


def _sample(args) -> int:
    from .data.corpus import generate_prompts
    from .trainers.sft import load_model

    if args.num_samples < 1:
        raise ValueError(f"--num-samples: expected a positive int, got {args.num_samples}")
    if args.max_new_tokens < 1:
        raise ValueError(f"--max-new-tokens: expected a positive int, got {args.max_new_tokens}")
    model, tokenizer = load_model(args.ckpt)
    prompts = args.prompt or generate_prompts(3, seed=0)
    batch = [p for p in prompts for _ in range(args.num_samples)]
    for text in _continue(model, tokenizer, batch, args.temperature, args.top_k, args.seed, args.max_new_tokens):
        print(text)
    return 0
