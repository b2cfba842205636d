"""Errors of the reward area (one clear line each in the CLI)."""

from db.errors import TheraPrefError


class RewardError(TheraPrefError):
    """Bad reward-model input: no pairs, missing base model, bad config or data file."""
