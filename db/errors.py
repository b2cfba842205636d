"""The base of every user-facing error: the CLI prints its message as one line and exits 1."""


class TheraPrefError(Exception):
    """A problem the user can fix (bad input, bad config); never a bug."""
