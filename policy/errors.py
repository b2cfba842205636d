"""Errors of the policy area (one clear line each in the CLI)."""

from db.errors import TheraPrefError


class PolicyError(TheraPrefError):
    """Bad policy-training input: a wrong or malformed export file, a base that is not a causal LM,
    bad settings, an occupied output folder."""
