"""Start a child with the signal dispositions a test chooses, not the ones the suite inherited: run from a shell's
background job, pytest (and every child it starts) has SIGINT ignored."""

from __future__ import annotations

import signal
from typing import Callable


def dispositions(sigint: signal.Handlers = signal.SIG_DFL) -> Callable[[], None]:
    """A preexec_fn: SIGTERM default, SIGINT as given (SIG_IGN: as a background job's child inherits it)."""

    def reset() -> None:
        signal.signal(signal.SIGINT, sigint)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)

    return reset
