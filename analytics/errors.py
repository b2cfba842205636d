"""The user-facing error of the analytics area."""

from db.errors import TheraPrefError


class AnalyticsError(TheraPrefError, ValueError):
    """A problem the user can fix (unknown comparison, bad gold answer, unreadable model dir)."""
