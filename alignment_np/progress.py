"""A progress bar that needs nothing: tqdm when it is installed, plain lines when not.

NumPy is the only required dependency of alignment_np; tqdm comes with the
``dev`` extra. Training loops call the same three methods either way::

    bar = Progress(total=steps, desc="sft", enabled=progress)
    for step in range(steps):
        ...
        bar.update(1, loss=loss)          # advance; show the latest metrics
        if step % 50 == 0:
            bar.write(f"step {step} loss {loss:.3f}")   # a line that does not break the bar
    bar.close()

* tqdm installed: a live bar (on stderr) with the metrics as its postfix;
  ``write`` lines go to stdout through ``tqdm.write``, which lifts the bar
  out of the way and redraws it below the line.
* no tqdm: a plain line ``sft: 40/200 (20%) 3.1s loss=1.234`` (on stderr)
  about every tenth of the run and at the end, so a log file stays short;
  ``write`` lines go to stdout.
* ``enabled=False``: nothing at all is printed, not even ``write`` lines.
* the bar's stream is the default stderr and it is not a terminal (output
  redirected to a file, a CI log): no bar and no plain progress lines, only
  the ``write`` lines; a log file then holds the run's log, not a thousand
  redraws of a bar.
"""

from __future__ import annotations

import importlib.util
import sys
import time
from typing import TextIO

__all__ = ["Progress", "has_tqdm"]


def has_tqdm() -> bool:
    """True when ``tqdm`` is installed (found without importing it)."""
    return importlib.util.find_spec("tqdm") is not None


def _format_metrics(metrics: dict) -> str:
    parts = []
    for key, value in metrics.items():
        if isinstance(value, float):
            parts.append(f"{key}={value:.4g}")
        else:
            parts.append(f"{key}={value}")
    return " ".join(parts)


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):  # no isatty, or a closed stream
        return False


class Progress:
    """Progress over ``total`` units of work (steps).

    total: the number of units (an int >= 0).
    desc: a short label printed before the count.
    enabled: False silences everything (bar and ``write`` lines).
    use_tqdm: True / False forces the choice; None (default) uses tqdm if installed.
    stream: where the bar / plain progress lines go (default ``sys.stderr``, like tqdm).
    log_stream: where ``write`` lines go (default ``sys.stdout``: they are the run's log).
    lines: how many plain-text lines to print over the run without tqdm (about).
    """

    def __init__(
        self,
        total: int,
        desc: str = "",
        enabled: bool = True,
        use_tqdm: bool | None = None,
        stream: TextIO | None = None,
        lines: int = 10,
        log_stream: TextIO | None = None,
    ):
        if isinstance(total, bool) or not isinstance(total, int) or total < 0:
            raise ValueError(f"total: expected an int >= 0, got {total!r}")
        if isinstance(lines, bool) or not isinstance(lines, int) or lines < 1:
            raise ValueError(f"lines: expected a positive int, got {lines!r}")
        self.total = total
        self.desc = desc
        self.enabled = bool(enabled)
        self.stream = stream
        self.log_stream = log_stream
        self.n = 0
        self.metrics: dict = {}
        self._every = max(1, total // lines)  # plain-text mode: one line per this many units
        self._start = time.perf_counter()
        self._bar = None
        # A bar needs a terminal: redirected to a file it would only add noise.
        self._show_bar = self.enabled and (stream is not None or _is_terminal(sys.stderr))
        if self._show_bar and (has_tqdm() if use_tqdm is None else use_tqdm):
            from tqdm import tqdm

            self._bar = tqdm(total=total, desc=desc or None, file=self._out(), dynamic_ncols=True)

    def _out(self) -> TextIO:
        return sys.stderr if self.stream is None else self.stream

    @property
    def uses_tqdm(self) -> bool:
        """True when a tqdm bar is shown."""
        return self._bar is not None

    def update(self, n: int = 1, **metrics) -> None:
        """Advance by ``n`` units and remember ``metrics`` (shown as ``key=value``)."""
        self.n += n
        self.metrics.update(metrics)
        if not self.enabled:
            return
        if self._bar is not None:
            if metrics:
                self._bar.set_postfix_str(_format_metrics(self.metrics), refresh=False)
            self._bar.update(n)
        elif self._show_bar and (self.n % self._every == 0 or self.n == self.total):
            self._print_line()

    def write(self, text: str) -> None:
        """Print one line of text (through tqdm when a bar is shown)."""
        if not self.enabled:
            return
        # Looked up now, not at import: pytest's capsys and contextlib.redirect_stdout swap sys.stdout.
        out = sys.stdout if self.log_stream is None else self.log_stream
        if self._bar is not None:
            self._bar.write(text, file=out)
        else:
            print(text, file=out, flush=True)

    def _print_line(self) -> None:
        percent = f" ({100 * self.n // self.total}%)" if self.total else ""
        elapsed = time.perf_counter() - self._start
        label = f"{self.desc}: " if self.desc else ""
        metrics = f" {_format_metrics(self.metrics)}" if self.metrics else ""
        print(f"{label}{self.n}/{self.total}{percent} {elapsed:.1f}s{metrics}", file=self._out(), flush=True)

    def close(self) -> None:
        """Finish the bar (idempotent)."""
        if self._bar is not None:
            self._bar.close()
            self._bar = None

    def __enter__(self) -> "Progress":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
