"""The commands of ``python -m alignment_np``, one module each.

Each module has ``HELP`` (one line), ``add_arguments(parser)`` and
``run(args) -> int`` (the exit status); ``cli.py`` builds the parser from
them. Modules import their heavy dependencies inside ``run``, so ``--help``
stays fast and never needs an optional extra.
"""

# name -> module, in the order ``--help`` lists them (the pipeline's order).
COMMANDS = {
    "sft": "sft",
    "collect": "collect",
    "rm": "rm",
    "dpo": "dpo",
    "eval": "eval",
    "pipeline": "pipeline",
    "ppo": "ppo",
    "grpo": "grpo",
    "rloo": "rloo",
    "bon": "bon",
    "experiment": "experiment",
    "sample": "sampling",
}
