"""The one exception type whose message is shown to the user as-is."""


class AvatarcamError(Exception):
    """A problem with the user's input or machine, explained in one line.

    The CLI prints ``str(error)`` to stderr and exits non-zero; no traceback.
    """
