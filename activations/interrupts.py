"""Ctrl-C that Python swallowed, delivered again.

A KeyboardInterrupt raised while Python runs a finaliser (`__del__`) or a garbage-collector
callback, both common inside TensorFlow and JAX, cannot propagate: Python prints "Exception
ignored in ..." with a traceback and carries on, so a long search or run went on to the end
after Ctrl-C. `CtrlC`, while installed, takes such a swallowed interrupt, stays quiet about it,
sends SIGINT again a moment later (when the main thread is back in ordinary code) and remembers
it, so `raise_if_seen` stops the work at its next checkpoint whatever happens to the redelivery.

It changes no signal handler: only `sys.unraisablehook`, and only while installed (the tuner's
`search`, the command line's whole run). A program that also wants Ctrl-C remembered when the
KeyboardInterrupt did propagate (and was caught on the way) calls `delivered` from its own
SIGINT handler.
"""

from __future__ import annotations

import os
import signal
import sys
import threading
from typing import Any

REDELIVER_AFTER_S = 0.05  # long enough for the finaliser or gc callback that swallowed it to end
MAX_REDELIVERIES = 20  # then `raise_if_seen` alone stops the work at its next checkpoint


class CtrlC:
    """Whether Ctrl-C was pressed, kept across interrupts Python swallowed (see the module)."""

    def __init__(self) -> None:
        self.seen = False
        self._pending = False
        self._redelivered = 0
        self._previous_hook: Any = None

    def install(self) -> None:
        """Starts afresh and takes over `sys.unraisablehook` (other unraisables still go to the
        hook found here)."""
        self.seen, self._pending, self._redelivered = False, False, 0
        if self._previous_hook is None:
            self._previous_hook = sys.unraisablehook
            sys.unraisablehook = self._unraisable_hook

    def uninstall(self) -> None:
        """Gives `sys.unraisablehook` back and drops a redelivery still waiting."""
        self._pending = False
        if self._previous_hook is not None:
            if sys.unraisablehook == self._unraisable_hook:
                sys.unraisablehook = self._previous_hook
            self._previous_hook = None

    def __enter__(self) -> CtrlC:
        self.install()
        return self

    def __exit__(self, *exc_info: Any) -> None:
        self.uninstall()
        self.seen = False

    def delivered(self) -> None:
        """For a SIGINT handler about to raise KeyboardInterrupt: remember it, and cancel a
        redelivery still waiting (this is it, or a newer one)."""
        self.seen, self._pending = True, False

    def raise_if_seen(self, what: str) -> None:
        """Raises KeyboardInterrupt("<what> was stopped") when Ctrl-C was pressed, even if the
        KeyboardInterrupt it raised was swallowed on the way."""
        if self.seen:
            self._pending = False
            raise KeyboardInterrupt(f"{what} was stopped")

    def _unraisable_hook(self, unraisable: Any) -> None:
        if not isinstance(unraisable.exc_value, KeyboardInterrupt):
            self._previous_hook(unraisable)
            return
        self.seen = True
        if self._redelivered < MAX_REDELIVERIES:
            # Not from here: a handler raising inside this hook would be swallowed again.
            self._pending, self._redelivered = True, self._redelivered + 1
            timer = threading.Timer(REDELIVER_AFTER_S, self._redeliver)
            timer.daemon = True
            timer.start()

    def _redeliver(self) -> None:
        if self._pending:  # not once `raise_if_seen` or the handler has raised it meanwhile
            self._pending = False
            os.kill(os.getpid(), signal.SIGINT)
