"""The base of every user-facing error: the CLI prints its message as one line and exits 1."""


class TheraPrefError(Exception):
    """A problem the user can fix (bad input, bad config); never a bug."""


class SourcesError(TheraPrefError, ValueError):
    """A ``--sources`` value that is not clinicians, imported, both, judges, all or an annotator's name."""
