"""The one exception type whose message is shown to the user as-is, and the one-line form
of other errors' messages."""


def one_line(text: object) -> str:
    """``text`` (an exception, say) as one line: every run of whitespace one space."""
    return " ".join(str(text).split())


class AvatarcamError(Exception):
    """A problem with the user's input or machine, explained in one line.

    The CLI prints ``str(error)`` to stderr and exits non-zero; no traceback.
    """
