"""The one exception type a user is meant to read."""


class UserError(Exception):
    """A problem the user can fix (bad input, missing file, no network).

    Its message is one line that says what happened and what to do. The scripts print it as
    ``error: <message>`` and exit with status 1 instead of showing a traceback.
    """


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is so that it cleans up as for Ctrl-C (see ``config.run_guarded``)."""


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when it has none): the reason in a one-line error."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
