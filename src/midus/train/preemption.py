"""Preemption: SLURM and Kubernetes send SIGTERM (SLURM can send SIGUSR1) some seconds before the kill.

`catch_preemption()` turns those signals into a flag for the duration of a `with` block; the work
checks the flag at a safe point (`midus train`: the end of an optimizer step, agreed by every
process), writes a complete checkpoint there and raises `Preempted`, which the CLI reports as one line
with its own exit code. Running the same command again resumes.
"""

import shlex
import signal
import sys
import threading
from contextlib import contextmanager

from ..errors import MidusError

PREEMPTION_SIGNALS = (signal.SIGTERM, signal.SIGUSR1)
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL (sysexits.h): a temporary failure, the same command can be retried


class Preempted(MidusError):
    """Stopped by a preemption signal after writing a checkpoint; the same command resumes."""

    exit_code = PREEMPTED_EXIT_CODE
    label = "preempted"


class PreemptionFlag:
    """The preemption signal received (its number), or None."""

    def __init__(self):
        self.received: int | None = None

    def __call__(self, signum, frame) -> None:  # the signal handler: only note it, act at a safe point
        self.received = signum

    @property
    def name(self) -> str:
        return signal.Signals(self.received).name if self.received else "none"


@contextmanager
def catch_preemption():
    """Yield a PreemptionFlag set by SIGTERM / SIGUSR1 while the block runs; the previous handlers
    come back afterwards. Outside the main thread (where Python cannot install handlers) the flag
    stays unset and the signals keep their usual effect."""
    flag = PreemptionFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = {sig: signal.signal(sig, flag) for sig in PREEMPTION_SIGNALS}
    try:
        yield flag
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def same_command() -> str:
    """The command this process runs, as the user would type it again (`midus …`)."""
    return shlex.join(["midus", *sys.argv[1:]])
