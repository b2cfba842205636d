"""User-facing errors of the exports area (printed by the CLI as one line)."""

from db.errors import TheraPrefError


class ExportError(TheraPrefError):
    """An export or fine-tuning request that cannot be carried out as asked."""
