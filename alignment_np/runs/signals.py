"""Stopping a run cleanly: Ctrl-C and SIGTERM finish the current step, then save.

Python's default Ctrl-C raises ``KeyboardInterrupt`` wherever the program
happens to be, possibly in the middle of writing a checkpoint; a second
Ctrl-C during the final save would abort the save. SIGTERM (what ``kill``,
a job scheduler or a closing terminal sends) ends the process at once and
saves nothing. Inside ``StopRequest`` both signals only *ask* for a stop:

    with StopRequest() as stop:
        for step in ...:
            train_step()
            if stop.requested:
                break
        save()                 # a second Ctrl-C here changes nothing: the save completes

The loop checks ``stop.requested`` at the end of each step, so the saved
state is always that of a whole step and ``--resume`` continues exactly.
Long loops that are not training (sampling, collecting, evaluating) check it
between batches. The handlers are restored on exit. ``exit_code`` is the
conventional status of a process ended by that signal (130 for SIGINT, 143 for
SIGTERM), which the command line returns.
"""

from __future__ import annotations

import signal
import sys
import threading

__all__ = ["StopRequest", "Interrupted", "stop_at_once"]

_SIGNALS = tuple(s for s in (getattr(signal, "SIGINT", None), getattr(signal, "SIGTERM", None)) if s is not None)


class StopRequest:
    """A context manager that turns SIGINT and SIGTERM into a flag (main thread only; elsewhere a no-op)."""

    def __init__(self, message: str = "stopping at the end of this step, then saving"):
        self.message = message
        self.signum: int | None = None
        self._previous: dict = {}

    @property
    def requested(self) -> bool:
        """True once SIGINT or SIGTERM has arrived."""
        return self.signum is not None

    @property
    def exit_code(self) -> int:
        """128 + the signal number (130 for Ctrl-C, 143 for SIGTERM); 0 if no signal came."""
        return 0 if self.signum is None else 128 + int(self.signum)

    @property
    def signal_name(self) -> str:
        return "" if self.signum is None else signal.Signals(self.signum).name

    def request(self, signum: int = signal.SIGINT) -> None:
        """Ask for a stop as a signal would (tests, and callers that stop for their own reasons)."""
        first = self.signum is None
        if first:
            self.signum = signum
        name = signal.Signals(signum).name
        note = self.message if first else "already stopping; the save in progress will complete"
        print(f"\n{name}: {note}", file=sys.stderr, flush=True)

    def _handle(self, signum, frame) -> None:
        self.request(signum)

    def __enter__(self) -> "StopRequest":
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._handle)
        return self

    def __exit__(self, *exc) -> None:
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        self._previous.clear()


class Interrupted(Exception):
    """Raised by ``stop_at_once`` when SIGINT or SIGTERM arrives; carries the exit status to return."""

    def __init__(self, signum: int):
        self.signum = int(signum)
        self.exit_code = 128 + self.signum
        super().__init__(f"{signal.Signals(self.signum).name}: stopped")


class stop_at_once:
    """For work whose output is written only at its end (collecting, evaluating): stop at once.

    Inside, SIGINT and SIGTERM raise ``Interrupted`` wherever the program is;
    nothing half-done is kept, because nothing was written yet (and what is
    written is written atomically). Ctrl-C's usual KeyboardInterrupt becomes
    ``Interrupted`` too, so one exception type says "the user stopped it".
    """

    def __enter__(self) -> "stop_at_once":
        self._previous = {}
        if threading.current_thread() is threading.main_thread():
            for s in _SIGNALS:
                self._previous[s] = signal.signal(s, self._raise)
        return self

    @staticmethod
    def _raise(signum, frame):
        raise Interrupted(signum)

    def __exit__(self, exc_type, exc, tb):
        for s, handler in self._previous.items():
            signal.signal(s, handler)
        if exc_type is KeyboardInterrupt:
            raise Interrupted(signal.SIGINT) from None
        return False
