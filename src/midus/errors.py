"""User-facing errors: one line naming the problem; the CLI prints it and exits non-zero."""

import sys


class MidusError(Exception):
    exit_code = 1
    label = "error"  # the CLI prints `<label>: <message>`


class UsageError(MidusError):
    """Bad input from the user (a recipe, a config, a flag): exit code 2."""

    exit_code = 2


def warn(message: str) -> None:
    """A one-line `warning: …` on stderr: something was wrong and was handled (the run goes on)."""
    print(f"warning: {message}", file=sys.stderr, flush=True)
