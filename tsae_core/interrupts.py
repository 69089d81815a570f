"""Ctrl-C at a step boundary: a long loop finishes its current step, saves, then stops.

`StepInterrupt` replaces the SIGINT handler while a loop runs: the first SIGINT only sets
`requested` (the loop checks it after each step, saves its state and raises `Interrupted`); a
second one raises `KeyboardInterrupt` at once. Outside the main thread it does nothing (signals
are delivered to the main thread only).
"""

from __future__ import annotations

import signal
import threading
from types import FrameType
from typing import Any


class Interrupted(KeyboardInterrupt):
    """A loop stopped at a step boundary after SIGINT, its state saved; the message says where."""


class StepInterrupt:
    """Context manager deferring the first SIGINT to the next step boundary (`requested`)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: Any = None

    def _handle(self, signum: int, frame: FrameType | None) -> None:
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __enter__(self) -> StepInterrupt:
        if threading.current_thread() is threading.main_thread():
            self._previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
            self._previous = None
