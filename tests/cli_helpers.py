"""Invocation and assertions shared by the CLI tests."""

from typer.testing import CliRunner

from midus.cli import app


def run_cli(*args):
    """`midus ARGS...` in-process (arguments may be paths); stdout and stderr kept apart."""
    return CliRunner().invoke(app, [str(a) for a in args])


def assert_one_line_error(result, *fragments: str, code: int | None = None, other_lines: bool = False):
    """The command failed without a traceback, with one `error: …` line naming every fragment.

    That line is all of stderr, or with `other_lines` (tools such as lm-eval print their own notes)
    the last of it."""
    assert result.exit_code != 0, result.output
    if code is not None:
        assert result.exit_code == code, result.output
    assert result.exception is None or isinstance(result.exception, SystemExit), repr(result.exception)
    lines = result.stderr.strip().splitlines()
    errors = [line for line in lines if line.startswith("error")]
    assert len(errors) == 1 and lines[-1] == errors[0] and errors[0].startswith("error: "), result.stderr
    if not other_lines:
        assert len(lines) == 1, result.stderr
    for fragment in fragments:
        assert fragment in errors[0], errors[0]
