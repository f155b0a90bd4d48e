"""``python -m alignment_np ...``: the command line (see ``alignment_np.cli``)."""

from .cli import main

if __name__ == "__main__":
    raise SystemExit(main())
