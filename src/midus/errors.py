"""User-facing errors: one line naming the problem; the CLI prints it and exits non-zero."""


class MidusError(Exception):
    exit_code = 1


class UsageError(MidusError):
    """Bad input from the user (a recipe, a config, a flag): exit code 2."""

    exit_code = 2
